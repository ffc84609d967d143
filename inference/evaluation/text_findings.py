"""Moved to :mod:`inference.findings_text`, which the run-time consistency check shares; kept for old imports."""

from inference.findings_text import FindingTuple, extract

__all__ = ["FindingTuple", "extract"]
