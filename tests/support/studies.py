"""Synthetic priors with fresh UIDs, for tests that send studies around."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from plugin.config import DEMO_PRIOR


def fresh_prior(path: Path, **attributes: str) -> pydicom.Dataset:
    """The shipped synthetic prior as a new study (new Study/Series/SOP UIDs), written to ``path``."""
    ds = pydicom.dcmread(DEMO_PRIOR)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds
