"""Regenerate scripts/real_data/manifest.csv: which real radiographs the demo data uses, with metadata and split.

    python scripts/real_data/make_manifest.py --chexnet REPO --covid REPO --hannover REPO --xrv REPO

Selection: the NIH ChestX-ray14 PNGs in reproduce-chexnet's starter_images/ and COVID-19's No_findings/ and
Pneumonia/ (never its Covid-19/ folder: third-party figures under mixed terms), byte-identical files once, adults
(age >= 18) only, joined with the NIH metadata that torchxrayvision ships. Role "background" = "No Finding" films,
the bases for simulated findings; "finding" = other NIH films, real findings for realism checks; "reference" = the
Hannover films (COVID-19 inpatients, mostly AP bedside), realism/out-of-distribution checks, never bases.
Splits are by patient (a patient's films never straddle splits, across repositories too), from a hash of the
patient id and the seed: stable when films are added.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import logging
import sys
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from build_backgrounds import MANIFEST, SOURCES, BuildError, RepoFiles, Source, sha256, write_manifest

log = logging.getLogger("make_manifest")

XRV = Source("xrv", "mlmed/torchxrayvision", "f4087a0b0d0cdc6a5877fb5456965b6d29adb1e5",
             "https://github.com/mlmed/torchxrayvision")
NIH_METADATA = "torchxrayvision/data/Data_Entry_2017_v2020.csv.gz"
NIH_FOLDERS = (("chexnet", "starter_images"), ("covid", "X-Ray Image DataSet/No_findings"),
               ("covid", "X-Ray Image DataSet/Pneumonia"))
HANNOVER_METADATA = "data.csv"
NIH_LICENCE = "NIH ChestX-ray14 terms"
HANNOVER_LICENCE = "CC BY 3.0"
SPLITS = ((0.8, "train"), (0.9, "val"), (1.0, "test"))
ADULT = 18


def split_of(patient: str, seed: int) -> str:
    """train/val/test ~80/10/10 by patient; a hash, so one patient's split never depends on the others."""
    value = int(hashlib.sha256(f"{seed}:{patient}".encode()).hexdigest()[:8], 16) / 2**32
    return next(name for bound, name in SPLITS if value < bound)


def nih_metadata(xrv: RepoFiles) -> dict[str, list[str]]:
    """Image Index -> row. The header has 9 names but rows 11 fields (two names hold commas): positional access."""
    text = gzip.decompress(xrv.read(NIH_METADATA)).decode()
    rows = list(csv.reader(io.StringIO(text)))
    return {row[0]: row for row in rows[1:]}


def nih_rows(readers: dict[str, RepoFiles], metadata: dict[str, list[str]], seed: int) -> list[dict[str, str]]:
    rows, seen, skipped = [], set(), Counter[str]()
    for option, folder in NIH_FOLDERS:
        reader = readers[option]
        for path in reader.list(folder):
            if not path.endswith(".png"):
                continue
            data = reader.read(path)
            digest, name = sha256(data), path.rsplit("/", 1)[1]
            if digest in seen or name in seen:
                skipped["duplicate"] += 1
                continue
            seen |= {digest, name}
            meta = metadata[name]
            labels, patient, age, sex, view = meta[1], meta[3], int(meta[4]), meta[5], meta[6]
            if age < ADULT:
                skipped["under 18"] += 1
                continue
            if view not in ("PA", "AP"):
                skipped["not frontal"] += 1
                continue
            rows.append({"id": f"nih-{name.removesuffix('.png')}", "source": reader.source.repo, "path": path,
                         "sha256": digest, "licence": NIH_LICENCE, "patient": f"nih:{int(patient)}", "view": view,
                         "age": str(age), "sex": sex, "labels": labels,
                         "split": split_of(f"nih:{int(patient)}", seed),
                         "role": "background" if labels == "No Finding" else "finding"})
    log.info("NIH: %d films kept, skipped %s", len(rows), dict(skipped))
    return rows


def hannover_rows(reader: RepoFiles, seed: int) -> list[dict[str, str]]:
    rows = []
    for meta in csv.DictReader(io.StringIO(reader.read(HANNOVER_METADATA).decode())):
        path = f"png/{meta['image_id']}.png"
        patient = f"mhh:{meta['patient_id']}"
        rows.append({"id": f"mhh-{meta['image_id']}", "source": reader.source.repo, "path": path,
                     "sha256": sha256(reader.read(path)), "licence": HANNOVER_LICENCE, "patient": patient,
                     "view": meta["projection"].upper(), "age": meta["age"], "sex": meta["sex"].upper(),
                     "labels": "COVID-19", "split": split_of(patient, seed), "role": "reference"})
    log.info("Hannover: %d films", len(rows))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for source in (*SOURCES, XRV):
        parser.add_argument(f"--{source.option}", type=Path, required=True,
                            help=f"a clone or bare mirror of {source.url}")
    parser.add_argument("--out", type=Path, default=MANIFEST)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        with ExitStack() as stack:
            readers = {s.option: stack.enter_context(RepoFiles(getattr(args, s.option), s)) for s in (*SOURCES, XRV)}
            rows = nih_rows(readers, nih_metadata(readers["xrv"]), args.seed)
            rows += hannover_rows(readers["hannover"], args.seed)
    except BuildError as error:
        print(f"make_manifest: {error}", file=sys.stderr)
        return 2
    rows.sort(key=lambda row: row["id"])
    write_manifest(args.out, rows)
    counts = Counter((row["split"], row["role"]) for row in rows)
    log.info("wrote %d rows to %s: %s", len(rows), args.out, dict(sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
