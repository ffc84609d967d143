"""Checkpoint files: format checks, and the sha256 manifest that is a checkpoint's identity.

The identity recorded in every output is the sha256 of the manifest (one
``sha256  name`` line per file, sorted), so any changed byte in any weight,
config or tokenizer file gives a new identity.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from pathlib import Path

from inference.errors import CheckpointError

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.sha256"
SPEC_NAME = "progemu.json"
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


ONNX_DIR = "onnx"
"""Where an ONNX export sits next to a checkpoint's files (``progemu export-onnx``'s default)."""
EXCLUDED_DIRS = (ONNX_DIR,)
"""Derived artefacts kept beside a checkpoint, with manifests of their own."""


def compute_manifest(directory: Path) -> dict[str, str]:
    """sha256 of every file of the checkpoint, by relative path (derived ``onnx/`` exports excluded)."""
    manifest = {}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if path.is_file() and relative.as_posix() != MANIFEST_NAME and relative.parts[0] not in EXCLUDED_DIRS:
            manifest[relative.as_posix()] = sha256_file(path)
    return manifest


def manifest_text(manifest: dict[str, str]) -> str:
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(manifest.items()))


def write_manifest(directory: Path) -> str:
    """Write ``manifest.sha256`` and return the checkpoint's identity."""
    text = manifest_text(compute_manifest(directory))
    (directory / MANIFEST_NAME).write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()


def checkpoint_identity(directory: Path) -> str:
    """Hash the files and, when a manifest is present, refuse a checkpoint that no longer matches it."""
    text = manifest_text(compute_manifest(directory))
    stored = directory / MANIFEST_NAME
    if stored.exists() and stored.read_text() != text:
        raise CheckpointError(f"checkpoint {directory} does not match its {MANIFEST_NAME}: files changed or missing")
    return hashlib.sha256(text.encode()).hexdigest()


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint lacks {path.name} ({path.parent})") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path.name} in {path.parent} is not valid JSON: {exc}") from None


def check_safetensors(path: Path) -> None:
    """Refuse a truncated or corrupt safetensors file before torch maps it.

    The format is an 8-byte header length, a JSON header with each tensor's
    byte range, then the data: the file must be at least as long as the
    header says.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path.name} is truncated (no header)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > size - 8:
            raise CheckpointError(f"{path.name} is truncated (header runs past the end of the file)")
        try:
            header = json.loads(handle.read(header_len))
        except ValueError:
            raise CheckpointError(f"{path.name} has a corrupt header") from None
    end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        raise CheckpointError(f"{path.name} is truncated: {size} bytes, the header needs {8 + header_len + end}")


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of an HF checkpoint (single file or sharded), or a clear error."""
    single = directory / "model.safetensors"
    if single.exists():
        return [single]
    index = directory / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(read_json(index).get("weight_map", {}).values()))
        missing = [name for name in shards if not (directory / name).exists()]
        if missing:
            raise CheckpointError(f"checkpoint {directory} lacks weight shard(s): {', '.join(missing)}")
        return [directory / name for name in shards]
    raise CheckpointError(f"checkpoint {directory} has no model.safetensors (pickled .bin weights are not loaded)")
