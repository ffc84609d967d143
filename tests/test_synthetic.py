"""The synthetic radiographs the demo and the tests use are valid DICOM (dciodvfy) and say they are phantoms."""

from pathlib import Path

import pydicom
import pytest

from dicom_io.synthetic import PHANTOM_COMMENT, build_synthetic_image
from plugin.config import DEMO_PRIOR
from tests.dicom_fixtures import chest_pixels, write
from tests.dicom_validators import assert_dciodvfy_clean


@pytest.mark.parametrize("kwargs", [
    {}, {"presentation_intent": "FOR PROCESSING"}, {"modality": "CR"}, {"photometric_interpretation": "MONOCHROME1"},
    {"modality": "CR", "rescale": (2.0, -100.0), "window": (1500.0, 3000.0)},
])
def test_dciodvfy_clean(kwargs: dict, tmp_path: Path) -> None:
    path = write(build_synthetic_image(chest_pixels(), **kwargs), tmp_path / "s.dcm")
    assert_dciodvfy_clean(path)


def test_eight_bit_secondary_capture(tmp_path: Path) -> None:
    path = write(build_synthetic_image(chest_pixels(bits=8), modality="OT", bits_stored=8), tmp_path / "sc.dcm")
    assert_dciodvfy_clean(path)
    assert pydicom.dcmread(path).BitsAllocated == 8


def test_dx_refuses_a_rescale() -> None:
    with pytest.raises(ValueError, match="identity"):
        build_synthetic_image(chest_pixels(), rescale=(2.0, 0.0))


def test_shipped_demo_prior_is_a_valid_dx_phantom() -> None:
    assert_dciodvfy_clean(DEMO_PRIOR)
    ds = pydicom.dcmread(DEMO_PRIOR)
    assert ds.Modality == "DX" and ds.ImageComments == PHANTOM_COMMENT and ds.PatientName == "PHANTOM^DEMO"
