"""Debian's Docker engine for the container tests: its daemon, a local base image, the image builds, containers.

Debian's docker.io is dockerd 20.10 with its own client, /usr/bin/docker, which builds with BuildKit
(DOCKER_BUILDKIT=1); a newer client found first on some PATHs (/usr/local/bin/docker) asks for a buildx plugin
instead, so the client is named by its full path. No registry is reachable from the machines the tests run on:
the images build from a bookworm base made here with mmdebstrap (the Python of python:3.11-slim-bookworm), torch
comes from the Makefile's wheel folder, and pip reaches PyPI with the host's CA bundle as a build secret.
Everything runs on the host's network (dockerd is started without a bridge).

The daemon's data root keeps the images and BuildKit's layer cache between runs, so only a changed layer is
rebuilt; the tests remove their containers and volumes, never images or cache.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

from tests.support.net import stop_process, wait_for

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
DOCKER = "/usr/bin/docker"
DOCKERD = "/usr/sbin/dockerd"
MMDEBSTRAP = "/usr/bin/mmdebstrap"
INSTALLED_BY = "scripts/install-system-deps.sh (Debian packages docker.io and mmdebstrap; `make setup` as root)"

LOCAL_BASE = "progemu-base:bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
WHEEL_DIR = Path(os.environ.get("WHEEL_DIR", "/opt/wheels"))
"""The Makefile's folder of the torch CPU wheel (its WHEEL_DIR)."""
CONTEXT_WHEELS = "build/wheels"
"""Where that wheel is linked inside the build context (git-ignored; .dockerignore lets its wheels through)."""
TORCH_WHEEL = "torch-2.13.0+cpu-*.whl"
"""The one wheel the images take from the folder: the Makefile's TORCH_SPEC, CPU build."""
PYPI = "https://pypi.org/simple"

INIT_BINARY = "/docker-init"
"""Where the engine bind-mounts tini for ``--init`` (compose's ``init: true``): a mount point it makes itself."""
BUILD_TIMEOUT_SECONDS = 1800
"""A cold build downloads and installs every dependency; a warm one takes seconds."""


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run Debian's docker client; fail the test with its stderr when ``check`` and it fails."""
    result = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "DOCKER_BUILDKIT": "1"})
    if check and result.returncode != 0:
        pytest.fail(f"docker {' '.join(args[:2])} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result


class DockerDaemon:
    """The daemon in use: one already running, or dockerd started here (as root) and stopped by :meth:`stop`."""

    def __init__(self, workdir: Path) -> None:
        for tool in (DOCKER, DOCKERD, MMDEBSTRAP):
            if not Path(tool).exists():
                pytest.fail(f"{tool} missing: installed by {INSTALLED_BY}")
        self.workdir = workdir
        self.process: subprocess.Popen | None = None
        self.log_path = workdir / "dockerd.log"

    @staticmethod
    def answering() -> bool:
        return docker("version", "--format", "{{.Server.Version}}", timeout=30, check=False).returncode == 0

    def start(self) -> DockerDaemon:
        if self.answering():
            return self
        if os.geteuid() != 0:
            pytest.skip(f"no Docker daemon runs, and starting dockerd needs root (this is uid {os.geteuid()})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as daemon_log:
            # no bridge and no iptables rules: containers use the host's network, and the host's is left alone
            process = self.process = subprocess.Popen([DOCKERD, "--bridge=none", "--iptables=false"],
                                                      stdout=daemon_log, stderr=subprocess.STDOUT,
                                                      start_new_session=True)
        wait_for(lambda: process.poll() is None and self.answering(), 120,
                 f"dockerd to answer (log: {self.log_path})", interval=0.5)
        return self

    def stop(self) -> None:
        stop_process(self.process, timeout=60)
        self.process = None


def ensure_local_base() -> None:
    """The bookworm base with Python 3.11 (``LOCAL_BASE``), made with mmdebstrap when the daemon lacks it."""
    if docker("image", "inspect", LOCAL_BASE, check=False).returncode == 0:
        return
    started = time.monotonic()
    with tempfile.TemporaryFile() as errors:
        with subprocess.Popen([MMDEBSTRAP, "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", "bookworm",
                               "-"], stdout=subprocess.PIPE, stderr=errors) as bootstrap:
            imported = subprocess.run([DOCKER, "import", "-", LOCAL_BASE], stdin=bootstrap.stdout,
                                      capture_output=True, text=True, timeout=900)
        errors.seek(0)
        bootstrap_errors = errors.read().decode(errors="replace")
    if bootstrap.returncode != 0 or imported.returncode != 0:
        pytest.fail(f"making {LOCAL_BASE} failed: mmdebstrap {bootstrap.returncode}: {bootstrap_errors[-2000:]}; "
                    f"docker import {imported.returncode}: {imported.stderr[-1000:]}")
    log.info("made %s in %.0f s", LOCAL_BASE, time.monotonic() - started)


def _torch_wheel_in_context() -> str | None:
    """Link the torch wheel of ``WHEEL_DIR`` into the build context; its folder there, or None without one."""
    wheels = sorted(WHEEL_DIR.glob(TORCH_WHEEL))
    if not wheels:
        return None
    target = ROOT / CONTEXT_WHEELS
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.glob("*.whl"):
        if stale.name != wheels[-1].name:
            stale.unlink()
    linked = target / wheels[-1].name
    if not linked.exists():
        try:
            os.link(wheels[-1], linked)
        except OSError:  # another file system: a copy, made once
            shutil.copy2(wheels[-1], linked)
    return CONTEXT_WHEELS


def build_args() -> list[str]:
    """``docker build`` options of this machine: the local base, the local torch wheel, the CA bundle secret."""
    args = ["--build-arg", f"PYTHON_IMAGE={LOCAL_BASE}"]
    wheels = _torch_wheel_in_context()
    if wheels is not None:  # torch from the folder; its dependencies, like everything else, from PyPI
        args += ["--build-arg", f"TORCH_WHEEL_DIR={wheels}", "--build-arg", f"TORCH_INDEX_URL={PYPI}"]
    if CA_BUNDLE.is_file():
        args += ["--secret", f"id=ca-bundle,src={CA_BUNDLE}"]
    return args


def build_image(target: str, tag: str, log_path: Path) -> float:
    """Build one target of docker/Dockerfile as ``tag``; return the seconds it took (its log in ``log_path``)."""
    started = time.monotonic()
    with log_path.open("ab") as build_log:
        result = subprocess.run([DOCKER, "build", "--progress=plain", "--network", "host", "--file",
                                 "docker/Dockerfile", "--target", target, "--tag", tag, *build_args(), "."],
                                cwd=ROOT, stdout=build_log, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_SECONDS,
                                env={**os.environ, "DOCKER_BUILDKIT": "1"})
    seconds = time.monotonic() - started
    if result.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        pytest.fail(f"building the {target} image failed ({result.returncode}); log {log_path}:\n{tail}")
    log.info("built %s (%s) in %.1f s", tag, target, seconds)
    return seconds


@contextmanager
def volume(prefix: str) -> Iterator[str]:
    """A new named volume, removed afterwards."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    docker("volume", "create", name)
    try:
        yield name
    finally:
        docker("volume", "rm", "--force", name, check=False)


HARDENED = ("--user", "10001:10001", "--read-only", "--tmpfs", "/tmp:rw,nosuid,nodev,size=512m",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges")
"""How the tests run our images, as a hospital would: the image's user, a read-only root with a tmpfs on /tmp,
no capabilities, no new privileges."""


@dataclass
class Container:
    """A detached container on the host's network; :meth:`remove` takes it away."""

    name: str
    image: str
    env: Mapping[str, str]
    mounts: Mapping[str, str]
    """volume name -> path in the container"""
    command: Sequence[str] = ()
    health_interval: str = "3s"

    def start(self) -> Container:
        args = ["run", "--detach", "--name", self.name, "--network", "host", "--init", *HARDENED,
                "--health-interval", self.health_interval]
        for source, target in self.mounts.items():
            args += ["--volume", f"{source}:{target}"]
        for key, value in self.env.items():
            args += ["--env", f"{key}={value}"]
        docker(*args, self.image, *self.command)
        return self

    def inspect(self) -> dict:
        return json.loads(docker("inspect", self.name).stdout)[0]

    def health(self) -> str:
        """The healthcheck's verdict (starting, healthy, unhealthy), or ``exited`` once the container stopped."""
        state = self.inspect()["State"]
        return state["Health"]["Status"] if state["Running"] else "exited"

    def wait_healthy(self, timeout: float) -> None:
        health = wait_for(lambda: (status := self.health()) in {"healthy", "exited"} and status, timeout,
                          f"{self.name} to turn healthy", interval=1)
        assert health == "healthy", f"{self.name} exited:\n{self.logs()[-3000:]}"

    def logs(self) -> str:
        result = docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def process_uids(self) -> list[int]:
        """The user id of each process in the container (``docker top``, which needs the PID column)."""
        lines = docker("top", self.name, "-o", "pid,uid").stdout.splitlines()[1:]
        return [int(line.split()[1]) for line in lines if line.strip()]

    def diff(self) -> list[str]:
        """What the container changed in the image's file system (``docker diff``; mounts are not part of it), but
        the mount point the engine makes for ``--init``'s binary and the folders above it."""
        changes = docker("diff", self.name).stdout.splitlines()
        init = [PurePosixPath(line[2:]) for line in changes if line.startswith("A ") and line.endswith(INIT_BINARY)]
        engine_made = {f"A {path}" for path in init} | {f"C {folder}" for path in init for folder in path.parents}
        return [line for line in changes if line not in engine_made]

    def remove(self) -> None:
        docker("rm", "--force", "--volumes", self.name, check=False)


def volume_path(name: str) -> Path:
    """Where a local volume's files lie on this host (read by the tests as root)."""
    return Path(json.loads(docker("volume", "inspect", name).stdout)[0]["Mountpoint"])
