"""Small git repositories made in a test, standing in for the public repositories the data scripts read."""

from __future__ import annotations

import subprocess
from pathlib import Path

_GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org", "-c", "init.defaultBranch=main"]


def committed_repo(work: Path, files: dict[str, bytes]) -> Path:
    """``work`` as a repository with ``files`` committed in one commit."""
    for path, data in files.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_bytes(data)
    subprocess.run([*_GIT, "init", "-q", str(work)], check=True)
    subprocess.run([*_GIT, "-C", str(work), "add", "."], check=True)
    subprocess.run([*_GIT, "-C", str(work), "commit", "-q", "-m", "files"], check=True)
    return work


def bare_clone(repo: Path, mirror: Path) -> Path:
    """A bare clone of ``repo`` at ``mirror``: what the fetched mirrors are."""
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(mirror)], check=True)
    return mirror
