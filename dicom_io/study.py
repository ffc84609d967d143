"""Which image of a received study is the prior, and which instances are our own outputs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from dicom_io.errors import UnsupportedImageError
from dicom_io.reader import RADIOGRAPHY, SECONDARY_CAPTURE
from dicom_io.records import MANUFACTURER

log = logging.getLogger(__name__)

_VIEW_PREFERENCE = {"PA": 0, "AP": 1}


def is_own_output(ds: pydicom.Dataset) -> bool:
    """Everything we write carries our manufacturer and is DERIVED (SC) or an SR by our device."""
    return str(ds.get("Manufacturer", "")) == MANUFACTURER


def choose_prior(paths: Iterable[Path], *, series_uids: Sequence[str] = (),
                 skip: Callable[[pydicom.Dataset], bool] = is_own_output) -> Path:
    """The prior among a study's files: a CR, DX or SC image, frontal (PA, then AP) first.

    Only headers are read. ``series_uids`` narrows the choice to the series a request named.
    """
    candidates = []
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError):
            log.warning("skipped an unreadable spooled file")
            continue
        if skip(ds) or str(ds.get("SOPClassUID", "")) not in RADIOGRAPHY + SECONDARY_CAPTURE:
            continue
        if series_uids and ds.get("SeriesInstanceUID") not in series_uids:
            continue
        view = str(ds.get("ViewPosition", "")).upper()
        candidates.append((_VIEW_PREFERENCE.get(view, 2), int(ds.get("InstanceNumber", 0) or 0), str(path), path))
    if not candidates:
        raise UnsupportedImageError("the study holds no CR, DX or Secondary Capture image to use as the prior"
                                    + (" in the series requested" if series_uids else ""))
    return min(candidates)[3]
