"""Plain records that the SC, SR and FHIR builders take.

They carry what must be traceable in every output (the algorithm, its checkpoint
hash, the sampler settings and seed, the hypothesis) without dicom_io having to
know anything about the model that produced them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

SYNTHETIC_NOTICE = "SYNTHETIC - NOT FOR DIAGNOSIS"
MANUFACTURER = "progemu-pacs"
"""Manufacturer of everything we write; the listener recognises our own outputs by it."""


@dataclass(frozen=True)
class AlgorithmRecord:
    """Identity of the algorithm that produced a result (IHE AIR / TID 4019)."""

    name: str
    """Model name, e.g. "ProgEmu"."""
    version: str
    """Model version, e.g. "progemu-demo-0.1"."""
    checkpoint_sha256: str
    """sha256 of the checkpoint manifest: the identity of the exact weights."""
    software_version: str
    """Version of progemu-pacs that ran the model."""
    device_uid: str
    """DICOM UID of the algorithm as a device (Contributing Equipment, FHIR Device)."""
    manufacturer: str = MANUFACTURER
    parameters: Mapping[str, str] = field(default_factory=dict)
    """Sampler settings and seed, as name -> value text (e.g. {"seed": "42", "top_k": "2048"})."""


@dataclass(frozen=True)
class CounterfactualText:
    """The request and the model's answer, as free text."""

    hypothesis: str
    interpretation: str
