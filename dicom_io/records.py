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


@dataclass(frozen=True)
class InputCheck:
    """The input gate's verdict on the prior: the model's out-of-distribution score against its calibrated limit.

    Recorded with every result, so an auditor sees whether the model could stand behind its input, and whether
    someone let an image through for research that the gate would have refused.
    """

    score: float
    limit: float | None
    """None: the checkpoint was never calibrated, so nothing could be refused."""
    overridden: bool = False
    """The prior was beyond the limit and let through by an explicit research override."""

    @property
    def within_limit(self) -> bool:
        return self.limit is None or self.score <= self.limit

    @property
    def summary(self) -> str:
        if self.limit is None:
            return f"score {self.score:.2f}; the checkpoint is not calibrated, so no limit applies"
        if self.within_limit:
            return f"score {self.score:.2f} within the limit {self.limit:.2f}"
        verdict = "let through by a research override" if self.overridden else "refused"
        return f"score {self.score:.2f} beyond the limit {self.limit:.2f}: outside the training data, {verdict}"


@dataclass(frozen=True)
class ConsistencyCheck:
    """Whether the interpretation and the image change agree with the hypothesis (finding, side, direction)."""

    consistent: bool | None
    """None: the hypothesis names nothing the check knows, so it could not be judged."""
    reason: str

    @property
    def summary(self) -> str:
        if self.consistent is None:
            return f"not checked: {self.reason}"
        return "consistent with the hypothesis" if self.consistent else f"{INCONSISTENT}: {self.reason}"


INCONSISTENT = "INCONSISTENT WITH THE HYPOTHESIS"
"""How a result that fails the consistency check is marked wherever it is shown."""


@dataclass(frozen=True)
class ResultChecks:
    """The checks every delivered result carries (SR, report page, FHIR, the API)."""

    input: InputCheck
    consistency: ConsistencyCheck

    @property
    def flagged(self) -> bool:
        """A result the model cannot stand behind: delivered, but marked as such."""
        return self.consistency.consistent is False or self.input.overridden
