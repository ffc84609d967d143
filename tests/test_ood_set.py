"""scripts/real_data/build_ood_set.py: verified extraction of the out-of-distribution images from a git mirror."""

from __future__ import annotations

import csv
import hashlib
import importlib
import io
import json
import subprocess
from pathlib import Path
from types import ModuleType

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from tests.support.git_repos import bare_clone, committed_repo

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "real_data"
REPO = "someone/xray-samples"


@pytest.fixture
def builder(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(SCRIPTS))  # the scripts import each other as the script folder's modules
    return importlib.import_module("build_ood_set")


def png(array: np.ndarray, mode: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array, mode).save(out, format="PNG")
    return out.getvalue()


def bare_mirror(root: Path, files: dict[str, bytes]) -> tuple[Path, str]:
    """A bare clone of a repository holding ``files`` (what the fetched mirrors are), and its HEAD commit."""
    mirror = bare_clone(committed_repo(root / "work", files), root / "mirrors" / REPO.replace("/", "+") / "repo")
    head = subprocess.run(["git", "-C", str(mirror), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    return mirror, head.stdout.strip()


def manifest(path: Path, commit: str, files: dict[str, tuple[bytes, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["id", "source", "commit", "path", "sha256", "licence", "category",
                                         "description"], lineterminator="\n")
        writer.writeheader()
        for name, (data, category) in files.items():
            writer.writerow({"id": Path(name).stem, "source": REPO, "commit": commit, "path": name,
                             "sha256": hashlib.sha256(data).hexdigest(), "licence": "CC0", "category": category,
                             "description": f"test image {name}"})
    return path


@pytest.fixture
def samples() -> dict[str, tuple[bytes, str]]:
    rng = np.random.default_rng(0)
    lateral = rng.integers(0, 256, (60, 40, 4), dtype=np.uint8)  # RGBA, taller than wide
    hand = rng.integers(0, 256, (30, 90), dtype=np.uint8)
    return {"views/lateral-1.png": (png(lateral, "RGBA"), "lateral"),
            "other/hand-1.png": (png(hand, "L"), "non_chest_radiograph")}


def test_builds_verified_greyscale_images_and_index(builder: ModuleType, tmp_path: Path,
                                                   samples: dict[str, tuple[bytes, str]]) -> None:
    _, commit = bare_mirror(tmp_path, {name: data for name, (data, _) in samples.items()})
    rows = manifest(tmp_path / "m.csv", commit, samples)
    out = tmp_path / "out"
    assert builder.main(["--mirrors", str(tmp_path / "mirrors"), "--manifest", str(rows), "--out", str(out),
                         "--size", "30"]) == 0
    lateral = Image.open(out / "lateral" / "lateral-1.png")
    hand = Image.open(out / "non_chest_radiograph" / "hand-1.png")
    assert (lateral.mode, lateral.size) == ("L", (20, 30))  # aspect kept, longer side at --size
    assert (hand.mode, hand.size) == ("L", (30, 10))
    index = json.loads((out / "ood.json").read_text())
    assert index["sources"] == {REPO: commit}
    assert [(i["id"], i["category"], i["file"], i["licence"]) for i in index["items"]] == [
        ("lateral-1", "lateral", "lateral/lateral-1.png", "CC0"),
        ("hand-1", "non_chest_radiograph", "non_chest_radiograph/hand-1.png", "CC0")]


def test_refuses_a_damaged_file_and_leaves_no_index(builder: ModuleType, tmp_path: Path,
                                                     samples: dict[str, tuple[bytes, str]],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    files = {name: data for name, (data, _) in samples.items()}
    files["other/hand-1.png"] = files["other/hand-1.png"][:-20] + bytes(20)  # damaged after the manifest was made
    mirror, commit = bare_mirror(tmp_path, files)
    rows = manifest(tmp_path / "m.csv", commit, samples)
    out = tmp_path / "out"
    out.mkdir()
    (out / "ood.json").write_text("{}")  # from an earlier build: must not survive a refused one
    assert builder.main(["--repo", f"{REPO}={mirror}", "--mirrors", str(tmp_path / "nowhere"),
                         "--manifest", str(rows), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "sha256 mismatch" in err and "other/hand-1.png" in err
    assert not (out / "ood.json").exists()


def test_refuses_a_missing_mirror(builder: ModuleType, tmp_path: Path, samples: dict[str, tuple[bytes, str]],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    rows = manifest(tmp_path / "m.csv", "0" * 40, samples)
    assert builder.main(["--mirrors", str(tmp_path / "nowhere"), "--manifest", str(rows),
                         "--out", str(tmp_path / "out")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_ct_dicom_is_windowed_like_the_reader(builder: ModuleType) -> None:
    """A CT slice, which the node's read_prior refuses by SOP class, still comes out through its VOI window."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.Rows, ds.Columns = "CT", 8, 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = 40, 400
    stored = np.tile(np.linspace(0, 2048, 16, dtype=np.int16), (8, 1))  # -1024 .. 1024 HU
    ds.PixelData = stored.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    image = builder.greyscale(out.getvalue(), "ct.dcm", 512)
    values = np.asarray(image)
    assert (image.mode, image.size) == ("L", (16, 8))
    assert values[0, 0] == 0 and values[0, -1] == 255  # air below the window, bone above it
    assert 0 < values[0, 8] < 255  # soft tissue inside the window
