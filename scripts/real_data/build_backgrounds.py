"""Build the folder of real chest radiographs that `progemu make-dataset --backgrounds` renders findings on.

    python scripts/real_data/build_backgrounds.py --chexnet REPO --covid REPO --hannover REPO --out DIR [--size 512]

Each REPO is a normal clone or a bare mirror (git directory) of the repository that the manifest
(scripts/real_data/manifest.csv) names; the images are too large to commit, so only the manifest is. Every file is
checked against the manifest's sha256 before it is used: a different commit or a damaged copy would silently change
the training data. Images become 8-bit greyscale squares (RGBA files are R=G=B), written as OUT/<split>/<id>.png,
and OUT/backgrounds.json lists them. backgrounds.json is written last, so a refused build leaves no usable folder.
See NOTICE for the sources' terms and the credits they ask for.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from PIL import Image

log = logging.getLogger("build_backgrounds")

MANIFEST = Path(__file__).with_name("manifest.csv")
COLUMNS = ("id", "source", "path", "sha256", "licence", "patient", "view", "age", "sex", "labels", "split", "role")
INDEX_FILE = "backgrounds.json"
INDEX_FORMAT = "progemu-backgrounds/1"


@dataclass(frozen=True)
class Source:
    """One repository the manifest draws from, and the command-line option that points at a copy of it."""

    option: str
    repo: str
    commit: str
    url: str


SOURCES = (
    Source("chexnet", "jrzech/reproduce-chexnet", "a011a9ab108cb03a533aeab52dc934b02a823ac8",
           "https://github.com/jrzech/reproduce-chexnet"),
    Source("covid", "muhammedtalo/COVID-19", "ee3e2cffc0824711bed675275506b26f19be7198",
           "https://github.com/muhammedtalo/COVID-19"),
    Source("hannover", "ml-workgroup/covid-19-image-repository", "ad7ab099b425f16e06bba22322336b7d6a732965",
           "https://github.com/ml-workgroup/covid-19-image-repository"),
)


class BuildError(Exception):
    """A reason to stop: the message says what is wrong and what to pass instead."""


def git_output(root: Path, *args: str) -> str | None:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


class RepoFiles:
    """A source repository's files, from a checked-out tree or, where a file is not on disk, from its git HEAD.

    A bare mirror has no work tree and some of these repositories cannot be checked out whole (absent blobs), so
    both shapes are accepted; a plain folder inside some other git repository is read from disk only.
    """

    def __init__(self, root: Path, source: Source) -> None:
        if not root.is_dir():
            raise BuildError(f"--{source.option} {root}: no such directory (a clone or bare mirror of {source.url})")
        self.root, self.source = root, source
        bare = git_output(root, "rev-parse", "--is-bare-repository") == "true"
        top = git_output(root, "rev-parse", "--show-toplevel")
        self.git = bare or (top is not None and Path(top).resolve() == root.resolve())
        self._batch: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RepoFiles:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self._batch is not None:
            assert self._batch.stdin is not None
            self._batch.stdin.close()
            self._batch.wait()

    def read(self, path: str) -> bytes:
        file = self.root / path
        if file.is_file():
            return file.read_bytes()
        if not self.git:
            raise BuildError(f"--{self.source.option} {self.root} has no {path!r} and is not a git repository")
        if self._batch is None:
            self._batch = subprocess.Popen(["git", "-C", str(self.root), "cat-file", "--batch"],
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        stdin, stdout = self._batch.stdin, self._batch.stdout
        assert stdin is not None and stdout is not None
        stdin.write(f"HEAD:{path}\n".encode())
        stdin.flush()
        header = stdout.readline().decode().split()
        if len(header) != 3 or header[1] != "blob":
            raise BuildError(f"--{self.source.option} {self.root}: {path!r} is not in HEAD (or its blob is absent); "
                             f"the manifest was made from {self.source.repo} at {self.source.commit[:7]}")
        data = _read_exactly(stdout, int(header[2]))
        stdout.read(1)  # the newline after each object
        return data

    def list(self, folder: str) -> list[str]:
        """Paths of the files under ``folder``, sorted."""
        if self.git:
            names = git_output(self.root, "ls-tree", "-r", "--name-only", "HEAD", "--", folder)
            if names is None:
                raise BuildError(f"--{self.source.option} {self.root}: git ls-tree failed")
            return sorted(names.splitlines())
        return sorted(str(p.relative_to(self.root)) for p in (self.root / folder).rglob("*") if p.is_file())


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise BuildError("git cat-file ended early")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_manifest(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise BuildError(f"{path}: columns {reader.fieldnames}, expected {list(COLUMNS)}")
        return list(reader)


def write_manifest(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def greyscale_square(data: bytes, size: int) -> Image.Image:
    """8-bit greyscale at size x size with area averaging, one rule for every source (NIH PNGs are squares already:
    their originals were resized without keeping the aspect ratio)."""
    decoded = Image.open(io.BytesIO(data))
    if decoded.mode not in ("L", "LA", "RGB", "RGBA"):
        raise BuildError(f"unexpected PNG mode {decoded.mode}")
    image = decoded.convert("L")
    return image if image.size == (size, size) else image.resize((size, size), Image.Resampling.BOX)


def open_sources(rows: list[dict[str, str]], roots: dict[str, Path | None]) -> dict[str, RepoFiles]:
    """A reader per repository the rows need; refuses if a needed repository was not given or is not there."""
    needed = {row["source"] for row in rows}
    known = {source.repo: source for source in SOURCES}
    readers = {}
    for repo in sorted(needed):
        if repo not in known:
            raise BuildError(f"the manifest names an unknown source {repo!r}")
        source = known[repo]
        root = roots.get(source.option)
        if root is None:
            raise BuildError(f"{sum(r['source'] == repo for r in rows)} manifest rows come from {repo}: pass "
                             f"--{source.option} DIR (a clone or bare mirror of {source.url})")
        readers[repo] = RepoFiles(root, source)
    return readers


def build(manifest: Path, roots: dict[str, Path | None], out: Path, size: int, roles: set[str]) -> list[dict]:
    rows = [row for row in read_manifest(manifest) if row["role"] in roles]
    (out / INDEX_FILE).unlink(missing_ok=True)
    items = []
    with ExitStack() as stack:
        readers = {repo: stack.enter_context(reader) for repo, reader in open_sources(rows, roots).items()}
        for done, (data, row) in enumerate(_verified(rows, readers), start=1):
            target = out / row["split"] / f"{row['id']}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            greyscale_square(data, size).save(target)
            items.append({"id": row["id"], "patient": row["patient"], "split": row["split"], "view": row["view"],
                          "source": row["source"], "role": row["role"], "labels": row["labels"],
                          "age": int(row["age"]) if row["age"] else None, "sex": row["sex"],
                          "file": f"{row['split']}/{row['id']}.png"})
            if done % 100 == 0 or done == len(rows):
                log.info("%5d/%d images written", done, len(rows))
    index = {"format": INDEX_FORMAT, "size": size, "manifest_sha256": sha256(manifest.read_bytes()),
             "sources": {s.repo: s.commit for s in SOURCES if s.repo in readers}, "items": items}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=1) + "\n")
    return items


def _verified(rows: list[dict[str, str]], readers: dict[str, RepoFiles]) -> Iterator[tuple[bytes, dict[str, str]]]:
    for row in rows:
        data = readers[row["source"]].read(row["path"])
        actual = sha256(data)
        if actual != row["sha256"]:
            raise BuildError(f"sha256 mismatch for {row['source']}:{row['path']} (manifest id {row['id']}): "
                             f"manifest {row['sha256']}, file {actual}. Use a copy at the manifest's commit; "
                             f"nothing was indexed")
        yield data, row


def summary(items: list[dict]) -> str:
    counts = Counter((item["split"], item["source"], item["role"]) for item in items)
    return "\n".join(f"  {split:5s} {source:40s} {role:10s} {n:5d}"
                     for (split, source, role), n in sorted(counts.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for source in SOURCES:
        parser.add_argument(f"--{source.option}", type=Path, help=f"a clone or bare mirror of {source.url}")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    parser.add_argument("--roles", default="background,finding,reference",
                        help="manifest roles to build, comma-separated (background: bases for simulated findings; "
                             "finding: real labelled films; reference: Hannover films for realism/OOD checks)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    roots = {source.option: getattr(args, source.option) for source in SOURCES}
    try:
        items = build(args.manifest, roots, args.out, args.size, set(args.roles.split(",")))
    except BuildError as error:
        print(f"build_backgrounds: refusing: {error}", file=sys.stderr)
        return 2
    log.info("wrote %d images and %s to %s\n%s", len(items), INDEX_FILE, args.out, summary(items))
    return 0


if __name__ == "__main__":
    sys.exit(main())
