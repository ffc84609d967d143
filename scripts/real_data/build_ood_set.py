"""Build the out-of-distribution image set that scripts/real_data/measure_gate.py scores the input gate on.

    python scripts/real_data/build_ood_set.py --mirrors /work/.mirror --out DIR [--size 512] [--repo OWNER/NAME=PATH]

The images are what the gate must refuse on content alone: lateral chest radiographs, radiographs of other body
parts, and images that are not radiographs at all (CT, MR, ultrasound, nuclear medicine, photographs, text).
scripts/real_data/ood_manifest.csv names each file by repository, commit, path and sha256, with its licence; the
images themselves are not committed. Each repository is read from a clone or a bare mirror: by default
MIRRORS/<owner>+<name>/repo (the layout the mirrors are fetched in), or the PATH given with --repo OWNER/NAME=PATH.
Every file is checked against the manifest's sha256 before it is used, and the build stops at the first mismatch,
missing file or missing repository (exit 2).

Each image becomes 8-bit greyscale with its aspect kept (the gate letterboxes it, as it does any prior), its longer
side reduced to --size by area averaging, written as OUT/<category>/<id>.png; OUT/ood.json lists them and is written
last, so a refused build leaves no usable folder. PNGs carry no DICOM header: only the content check can refuse them.
DICOM files are brought to display intensities by the node's own reader (dicom_io.reader): read_prior for CR, DX
and grey secondary captures; the same Modality LUT, VOI and MONOCHROME1 handling for CT, MR, NM and the like, which
read_prior refuses by SOP class (the middle frame of a multi-frame object); colour ones (palette, RGB, YBR) as the
luminance of their RGB rendering.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pydicom
from build_backgrounds import BuildError, RepoFiles, Source, git_output, sha256
from PIL import Image
from pydicom.pixels import apply_color_lut

from dicom_io.errors import UnsupportedImageError
from dicom_io.reader import display_values, read_prior

log = logging.getLogger("build_ood_set")

MANIFEST = Path(__file__).with_name("ood_manifest.csv")
COLUMNS = ("id", "source", "commit", "path", "sha256", "licence", "category", "description")
CATEGORIES = ("lateral", "non_chest_radiograph", "non_radiograph")
INDEX_FILE = "ood.json"
INDEX_FORMAT = "progemu-ood-set/1"
DEFAULT_MIRRORS = Path("/work/.mirror")
MAX_SOURCE_PIXELS = 50_000_000
"""Largest source image decoded (the node's default max_image_pixels)."""


def read_manifest(path: Path) -> list[dict[str, str]]:
    """The manifest's rows; refuses other columns, unknown categories and repeated ids."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise BuildError(f"{path}: columns {reader.fieldnames}, expected {list(COLUMNS)}")
        rows = list(reader)
    for row in rows:
        if row["category"] not in CATEGORIES:
            raise BuildError(f"{path}: {row['id']} has category {row['category']!r}, not one of {list(CATEGORIES)}")
    repeated = [name for name, n in Counter(row["id"] for row in rows).items() if n > 1]
    if repeated:
        raise BuildError(f"{path}: repeated ids {repeated[:5]}")
    return rows


def write_manifest(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def mirror_path(mirrors: Path, repo: str) -> Path:
    """Where a fetched mirror of ``repo`` lies: MIRRORS/<owner>+<name>/repo."""
    return mirrors / repo.replace("/", "+") / "repo"


def repo_option(value: str) -> tuple[str, Path]:
    """``OWNER/NAME=PATH`` -> (OWNER/NAME, PATH)."""
    repo, sep, path = value.partition("=")
    if not sep or repo.count("/") != 1 or not path:
        raise argparse.ArgumentTypeError(f"expected OWNER/NAME=PATH, got {value!r}")
    return repo, Path(path)


def open_sources(rows: list[dict[str, str]], mirrors: Path, overrides: dict[str, Path]) -> dict[str, RepoFiles]:
    """A reader per repository the rows need; refuses a repository that is not there or rows of two commits."""
    readers = {}
    for repo in sorted({row["source"] for row in rows}):
        commits = {row["commit"] for row in rows if row["source"] == repo}
        if len(commits) != 1:
            raise BuildError(f"the manifest names {repo} at {len(commits)} commits: one per repository")
        commit = commits.pop()
        source = Source("repo", repo, commit, f"https://github.com/{repo}")
        root = overrides.get(repo, mirror_path(mirrors, repo))
        reader = RepoFiles(root, source)
        head = git_output(root, "rev-parse", "HEAD") if reader.git else None
        if head is not None and head != commit:
            log.warning("%s: %s is at %s, the manifest at %s; the files' sha256 decide", repo, root, head[:7],
                        commit[:7])
        readers[repo] = reader
    return readers


def _is_dicom(data: bytes, path: str) -> bool:
    return data[128:132] == b"DICM" or path.lower().endswith(".dcm")


def dicom_pixels(data: bytes) -> np.ndarray:
    """Display intensities in [0, 1] of a DICOM image, by the node's reader where it takes the object."""
    try:
        return read_prior(data, max_pixels=MAX_SOURCE_PIXELS).pixels
    except UnsupportedImageError:
        pass  # CT, MR, US, NM, colour or multi-frame: read_prior refuses these by design; shown as a viewer would
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    if int(ds.get("Rows") or 0) * int(ds.get("Columns") or 0) > MAX_SOURCE_PIXELS:
        raise BuildError(f"a {ds.Rows}x{ds.Columns} image is larger than {MAX_SOURCE_PIXELS} pixels")
    stored = ds.pixel_array
    samples = int(ds.get("SamplesPerPixel") or 1)
    if int(ds.get("NumberOfFrames") or 1) > 1:
        stored = stored[len(stored) // 2]
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if samples == 1 and photometric in ("MONOCHROME1", "MONOCHROME2"):
        return display_values(ds, stored)
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(stored, ds)
        depth = int(ds.RedPaletteColorLookupTableDescriptor[2])
    elif samples == 3:  # RGB, or YBR that pydicom already converted to RGB
        rgb, depth = stored, int(ds.BitsStored)
    else:
        raise BuildError(f"unsupported DICOM image: {samples} samples, {photometric}")
    scaled = np.clip(np.asarray(rgb, dtype=np.float64) / (2**depth - 1) * 255.0, 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(scaled, "RGB").convert("L"), dtype=np.float32) / 255.0


def greyscale(data: bytes, path: str, size: int) -> Image.Image:
    """8-bit greyscale, aspect kept, the longer side at most ``size`` (area averaging)."""
    if _is_dicom(data, path):
        image = Image.fromarray(np.round(dicom_pixels(data) * 255.0).astype(np.uint8), "L")
    else:
        decoded = Image.open(io.BytesIO(data))
        decoded.load()
        if decoded.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit greyscale PNGs: full range to 8 bits
            values = np.asarray(decoded, dtype=np.float64)
            low, high = float(values.min()), float(values.max())
            values = (values - low) / (high - low if high > low else 1.0) * 255.0
            image = Image.fromarray(np.round(values).astype(np.uint8), "L")
        else:
            image = decoded.convert("RGBA").convert("L") if decoded.mode == "P" else decoded.convert("L")
    scale = size / max(image.size)
    if scale < 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BOX)
    return image


def build(manifest: Path, mirrors: Path, overrides: dict[str, Path], out: Path, size: int,
          categories: set[str]) -> list[dict]:
    rows = [row for row in read_manifest(manifest) if row["category"] in categories]
    (out / INDEX_FILE).unlink(missing_ok=True)
    items = []
    with ExitStack() as stack:
        readers = {repo: stack.enter_context(reader)
                   for repo, reader in open_sources(rows, mirrors, overrides).items()}
        for done, row in enumerate(rows, start=1):
            data = readers[row["source"]].read(row["path"])
            actual = sha256(data)
            if actual != row["sha256"]:
                raise BuildError(f"sha256 mismatch for {row['source']}:{row['path']} (manifest id {row['id']}): "
                                 f"manifest {row['sha256']}, file {actual}. Use a copy at the manifest's commit; "
                                 f"nothing was indexed")
            try:
                image = greyscale(data, row["path"], size)
            except BuildError:
                raise
            except Exception as exc:  # a file that does not decode: the manifest is wrong, not the run
                raise BuildError(f"{row['source']}:{row['path']} (manifest id {row['id']}) does not decode: "
                                 f"{type(exc).__name__}: {exc}") from None
            target = out / row["category"] / f"{row['id']}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            image.save(target)
            items.append({"id": row["id"], "category": row["category"], "source": row["source"],
                          "commit": row["commit"], "path": row["path"], "licence": row["licence"],
                          "description": row["description"], "width": image.width, "height": image.height,
                          "file": f"{row['category']}/{row['id']}.png"})
            if done % 50 == 0 or done == len(rows):
                log.info("%5d/%d images written", done, len(rows))
    index = {"format": INDEX_FORMAT, "size": size, "manifest_sha256": sha256(manifest.read_bytes()),
             "sources": {repo: reader.source.commit for repo, reader in readers.items()}, "items": items}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=1) + "\n")
    return items


def summary(items: list[dict]) -> str:
    counts = Counter((item["category"], item["source"]) for item in items)
    return "\n".join(f"  {category:21s} {source:55s} {n:4d}" for (category, source), n in sorted(counts.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--mirrors", type=Path, default=DEFAULT_MIRRORS,
                        help="folder of fetched mirrors, one per repository as <owner>+<name>/repo "
                             f"(default {DEFAULT_MIRRORS})")
    parser.add_argument("--repo", type=repo_option, action="append", default=[], metavar="OWNER/NAME=PATH",
                        help="a clone or bare mirror of one repository, instead of the one under --mirrors "
                             "(repeatable)")
    parser.add_argument("--size", type=int, default=512, help="longest image side in pixels (aspect kept)")
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    parser.add_argument("--categories", default=",".join(CATEGORIES), help="categories to build, comma-separated")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        items = build(args.manifest, args.mirrors, dict(args.repo), args.out, args.size,
                      set(args.categories.split(",")))
    except BuildError as error:
        print(f"build_ood_set: refusing: {error}", file=sys.stderr)
        return 2
    log.info("wrote %d images and %s to %s\n%s", len(items), INDEX_FILE, args.out, summary(items))
    return 0


if __name__ == "__main__":
    sys.exit(main())
