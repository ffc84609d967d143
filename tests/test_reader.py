"""Reading priors: CR, DX, grayscale SC, LUTs, MONOCHROME1, compressed syntaxes, and every refusal."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless

from dicom_io.errors import ImageTooLargeError, NoPixelDataError, NotDicomError, UnsupportedImageError
from dicom_io.reader import read_prior
from dicom_io.synthetic import build_synthetic_image
from tests.dicom_fixtures import chest_pixels, dcmtk_compress, write

LIMIT = 10_000_000


@pytest.fixture
def dx_file(tmp_path: Path) -> Path:
    return write(build_synthetic_image(chest_pixels()), tmp_path / "dx.dcm")


@pytest.mark.parametrize("kwargs", [
    {"modality": "DX"}, {"modality": "DX", "presentation_intent": "FOR PROCESSING"}, {"modality": "CR"},
    {"modality": "OT", "bits_stored": 8},
])
def test_supported_modalities_read_to_unit_range(kwargs: dict) -> None:
    bits = kwargs.get("bits_stored", 12)
    prior = read_prior(build_synthetic_image(chest_pixels(bits=bits), **kwargs), max_pixels=LIMIT)
    assert prior.pixels.shape == (200, 160) and prior.pixels.dtype == np.float32
    assert prior.pixels.min() >= 0.0 and prior.pixels.max() <= 1.0 and prior.pixels.max() - prior.pixels.min() > 0.5
    assert prior.pixels[100, 80] > prior.pixels[100, 48]  # mediastinum brighter than the lung
    assert prior.geometry.rows == 200 and prior.geometry.pixel_spacing == (0.2, 0.2)


def test_monochrome1_is_inverted_to_the_same_display() -> None:
    plain = read_prior(build_synthetic_image(chest_pixels()), max_pixels=LIMIT)
    inverted = read_prior(build_synthetic_image(chest_pixels(), photometric_interpretation="MONOCHROME1"),
                          max_pixels=LIMIT)
    np.testing.assert_allclose(plain.pixels, inverted.pixels, atol=2e-3)


def test_rescale_and_window_are_applied() -> None:
    pixels = chest_pixels().astype(np.float64) * 2 - 500  # output units after the Modality LUT
    windowed = build_synthetic_image(pixels, modality="CR", rescale=(2.0, -500.0), window=(3000.0, 2000.0))
    prior = read_prior(windowed, max_pixels=LIMIT)
    values = pixels
    expected = np.clip((values - (3000 - 0.5) - 0.5) / (2000 - 1) + 0.5, 0, 1)  # the DICOM linear window
    np.testing.assert_allclose(prior.pixels, expected, atol=2e-3)
    assert (prior.pixels == 0).any() and (prior.pixels == 1).any()  # the window clips both ends


@pytest.mark.parametrize("tool, options", [
    ("dcmcjpeg", ("+e1",)),  # JPEG lossless, first-order prediction (process 14 SV1)
    ("dcmcjpeg", ("+el",)),  # JPEG lossless, process 14
    ("dcmcjpls", ()),  # JPEG-LS lossless
    ("dcmcrle", ()),  # RLE
])
def test_compressed_transfer_syntaxes_decode(dx_file: Path, tmp_path: Path, tool: str, options: tuple) -> None:
    compressed = dcmtk_compress(dx_file, tmp_path / "c.dcm", tool, *options)
    assert pydicom.dcmread(compressed).file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_allclose(read_prior(compressed, max_pixels=LIMIT).pixels,
                               read_prior(dx_file, max_pixels=LIMIT).pixels, atol=1e-6)


def test_jpeg_baseline_decodes(tmp_path: Path) -> None:
    eight_bit = write(build_synthetic_image(chest_pixels(bits=8), modality="OT", bits_stored=8), tmp_path / "8.dcm")
    compressed = dcmtk_compress(eight_bit, tmp_path / "b.dcm", "dcmcjpeg", "+eb")
    assert pydicom.dcmread(compressed).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    lossy = read_prior(compressed, max_pixels=LIMIT).pixels
    assert np.abs(lossy - read_prior(eight_bit, max_pixels=LIMIT).pixels).mean() < 0.02


def test_jpeg_2000_decodes(dx_file: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(dx_file)
    ds.compress(JPEG2000Lossless)
    np.testing.assert_allclose(read_prior(write(ds, tmp_path / "j2k.dcm"), max_pixels=LIMIT).pixels,
                               read_prior(dx_file, max_pixels=LIMIT).pixels, atol=1e-6)


def test_not_dicom(tmp_path: Path) -> None:
    (tmp_path / "x.dcm").write_bytes(b"this is a text file, not DICOM" * 10)
    with pytest.raises(NotDicomError, match="not a readable DICOM file"):
        read_prior(tmp_path / "x.dcm", max_pixels=LIMIT)


def test_truncated(dx_file: Path, tmp_path: Path) -> None:
    data = dx_file.read_bytes()
    (tmp_path / "t.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(NotDicomError, match="truncated"):
        read_prior(tmp_path / "t.dcm", max_pixels=LIMIT)


def test_no_pixel_data() -> None:
    ds = build_synthetic_image(chest_pixels())
    del ds.PixelData
    with pytest.raises(NoPixelDataError, match="no pixel data"):
        read_prior(ds, max_pixels=LIMIT)


def test_multi_frame() -> None:
    ds = build_synthetic_image(chest_pixels())
    ds.NumberOfFrames = 2
    with pytest.raises(UnsupportedImageError, match="multi-frame"):
        read_prior(ds, max_pixels=LIMIT)


def test_colour() -> None:
    ds = build_synthetic_image(chest_pixels(bits=8), modality="OT", bits_stored=8)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    with pytest.raises(UnsupportedImageError, match="colour"):
        read_prior(ds, max_pixels=LIMIT)


def test_wrong_modality() -> None:
    ds = build_synthetic_image(chest_pixels())
    ds.SOPClassUID, ds.Modality = "1.2.840.10008.5.1.4.1.1.2", "CT"
    with pytest.raises(UnsupportedImageError, match="modality CT"):
        read_prior(ds, max_pixels=LIMIT)


def test_too_large_is_refused_before_decoding() -> None:
    ds = build_synthetic_image(chest_pixels())
    ds.PixelData = b"\x00"  # would fail to decode: the size check must come first
    with pytest.raises(ImageTooLargeError, match="200x160 = 32000 pixels; the limit is 10000"):
        read_prior(ds, max_pixels=10_000)


def test_messages_carry_no_phi() -> None:
    ds = build_synthetic_image(chest_pixels(), patient_name="DOE^JANE", patient_id="MRN12345")
    ds.SOPClassUID, ds.Modality = "1.2.840.10008.5.1.4.1.1.4", "MR"
    with pytest.raises(UnsupportedImageError) as info:
        read_prior(ds, max_pixels=LIMIT)
    assert "DOE" not in str(info.value) and "MRN12345" not in str(info.value)
