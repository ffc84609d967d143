"""Reading priors: CR, DX, grayscale SC, LUTs, MONOCHROME1, compressed syntaxes, and every refusal."""

import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames, get_frame
from pydicom.sequence import Sequence
from pydicom.uid import JPEG2000Lossless, RLELossless

from benchmarks.reliability import mutation, read_outcome, seed_priors
from dicom_io.errors import (
    ImageTooLargeError,
    NoPixelDataError,
    NotDicomError,
    PatientRecordError,
    PixelDataError,
    UnsupportedImageError,
)
from dicom_io.reader import check_patient_record, read_prior
from dicom_io.synthetic import build_synthetic_image
from plugin.config import DEMO_PRIOR
from tests.support.dicom_fixtures import chest_pixels, dcmtk_compress, write

LIMIT = 10_000_000


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR window, mapped to [0, 1]."""
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


@pytest.fixture
def dx_file(tmp_path: Path) -> Path:
    return write(build_synthetic_image(chest_pixels()), tmp_path / "dx.dcm")


@pytest.mark.parametrize("kwargs", [
    {"modality": "DX"}, {"modality": "DX", "presentation_intent": "FOR PROCESSING"}, {"modality": "CR"},
    {"modality": "OT"}, {"modality": "OT", "bits_stored": 8},
])
def test_supported_modalities_read_to_unit_range(kwargs: dict) -> None:
    bits = kwargs.get("bits_stored", 12)
    prior = read_prior(build_synthetic_image(chest_pixels(bits=bits), **kwargs), max_pixels=LIMIT)
    assert prior.pixels.shape == (200, 160) and prior.pixels.dtype == np.float32
    assert prior.pixels.min() >= 0.0 and prior.pixels.max() <= 1.0 and prior.pixels.max() - prior.pixels.min() > 0.5
    assert prior.pixels[100, 80] > prior.pixels[100, 48]  # mediastinum brighter than the lung


def test_paths_bytes_and_datasets_read_alike(dx_file: Path) -> None:
    by_path = read_prior(dx_file, max_pixels=LIMIT)
    for source in (str(dx_file), dx_file.read_bytes(), pydicom.dcmread(dx_file)):
        np.testing.assert_array_equal(read_prior(source, max_pixels=LIMIT).pixels, by_path.pixels)
    assert by_path.dataset.Modality == "DX"


def test_geometry_is_taken_from_the_header() -> None:
    ds = build_synthetic_image(chest_pixels(), modality="CR", pixel_spacing_mm=0.15)
    ds.PixelSpacing = [0.15, 0.16]
    geometry = read_prior(ds, max_pixels=LIMIT).geometry
    assert (geometry.rows, geometry.columns, geometry.pixel_spacing) == (200, 160, (0.15, 0.16))
    assert geometry.patient_orientation == ("L", "F") and geometry.laterality == "U"
    del ds.PixelSpacing, ds.PatientOrientation, ds.ImageLaterality
    ds.Laterality = "R"
    geometry = read_prior(ds, max_pixels=LIMIT).geometry
    assert geometry.pixel_spacing == (0.15, 0.15)  # ImagerPixelSpacing when PixelSpacing is absent
    assert geometry.patient_orientation is None and geometry.laterality == "R"
    del ds.ImagerPixelSpacing
    assert read_prior(ds, max_pixels=LIMIT).geometry.pixel_spacing is None


def test_geometry_prefers_the_image_level_laterality_and_a_well_formed_spacing() -> None:
    ds = build_synthetic_image(chest_pixels(), modality="DX", pixel_spacing_mm=0.15)
    ds.ImageLaterality, ds.Laterality = "L", "R"
    ds.PixelSpacing = [0.1]  # malformed: one value
    geometry = read_prior(ds, max_pixels=LIMIT).geometry
    assert geometry.laterality == "L"
    assert geometry.pixel_spacing == (0.15, 0.15)
    assert (geometry.body_part, geometry.shape) == ("CHEST", (200, 160))


@pytest.mark.parametrize("kwargs", [
    {},  # DX for presentation: the builder's window
    {"presentation_intent": "FOR PROCESSING"},  # no window: percentiles
    {"modality": "CR", "rescale": (2.0, -500.0), "window": (3000.0, 2000.0)},
])
def test_monochrome1_is_inverted_to_the_same_display(kwargs: dict) -> None:
    pixels = chest_pixels().astype(np.float64) * (2 if "rescale" in kwargs else 1) - (500 if "rescale" in kwargs else 0)
    plain = read_prior(build_synthetic_image(pixels, **kwargs), max_pixels=LIMIT)
    inverted = build_synthetic_image(pixels, photometric_interpretation="MONOCHROME1", **kwargs)
    assert not np.array_equal(inverted.pixel_array, build_synthetic_image(pixels, **kwargs).pixel_array)
    np.testing.assert_allclose(read_prior(inverted, max_pixels=LIMIT).pixels, plain.pixels, atol=1e-6)


def test_rescale_and_a_clipping_window_are_applied() -> None:
    pixels = chest_pixels().astype(np.float64) * 2 - 500  # output units after the Modality LUT
    prior = read_prior(build_synthetic_image(pixels, modality="CR", rescale=(2.0, -500.0), window=(3000.0, 2000.0)),
                       max_pixels=LIMIT)
    np.testing.assert_allclose(prior.pixels, linear_window(pixels, 3000.0, 2000.0), atol=1e-5)
    assert (prior.pixels == 0).any() and (prior.pixels == 1).any()  # the window clips both ends


def test_a_wide_window_is_not_stretched_to_the_data() -> None:
    pixels = chest_pixels()
    prior = read_prior(build_synthetic_image(pixels, modality="CR", window=(2048.0, 8192.0)), max_pixels=LIMIT)
    np.testing.assert_allclose(prior.pixels, linear_window(pixels.astype(np.float64), 2048.0, 8192.0), atol=1e-5)
    assert 0.2 < prior.pixels.min() and prior.pixels.max() < 0.7  # the window's own range, not min..max


@pytest.mark.parametrize("vr", ["US", "OW"])
def test_voi_lut_sequence_is_applied(vr: str, tmp_path: Path) -> None:
    ds = build_synthetic_image(chest_pixels(), modality="CR")
    lut = np.round(np.sqrt(np.arange(4096) / 4095) * 255).astype(np.uint16)  # a non-linear 8-bit VOI LUT
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4096, 0, 8])
    item.add_new("LUTData", vr, lut.tolist() if vr == "US" else lut.astype("<u2").tobytes())
    ds.VOILUTSequence = Sequence([item])
    prior = read_prior(write(ds, tmp_path / "lut.dcm"), max_pixels=LIMIT)
    np.testing.assert_allclose(prior.pixels, lut[chest_pixels()] / 255.0, atol=1e-6)


def test_processing_window_ignores_a_few_extreme_pixels() -> None:
    pixels = chest_pixels() // 2  # uses half the 12-bit range
    hot = pixels.copy()
    hot[0, :10] = 4095  # dead detector pixels
    clean = read_prior(build_synthetic_image(pixels, presentation_intent="FOR PROCESSING"), max_pixels=LIMIT)
    noisy = read_prior(build_synthetic_image(hot, presentation_intent="FOR PROCESSING"), max_pixels=LIMIT)
    assert np.abs(noisy.pixels[1:] - clean.pixels[1:]).mean() < 0.01  # a min-max window would halve the contrast
    assert clean.pixels.max() - clean.pixels.min() == pytest.approx(1.0)


@pytest.mark.parametrize("tool, options, syntax", [
    ("dcmcjpeg", ("+e1",), "1.2.840.10008.1.2.4.70"),  # JPEG lossless, process 14, selection value 1
    ("dcmcjpeg", ("+el",), "1.2.840.10008.1.2.4.57"),  # JPEG lossless, process 14
    ("dcmcjpls", (), "1.2.840.10008.1.2.4.80"),  # JPEG-LS lossless
    ("dcmcrle", (), "1.2.840.10008.1.2.5"),  # RLE
])
def test_lossless_transfer_syntaxes_decode(dx_file: Path, tmp_path: Path, tool: str, options: tuple,
                                           syntax: str) -> None:
    compressed = dcmtk_compress(dx_file, tmp_path / "c.dcm", tool, *options)
    assert pydicom.dcmread(compressed).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(read_prior(compressed, max_pixels=LIMIT).pixels,
                                  read_prior(dx_file, max_pixels=LIMIT).pixels)


def test_jpeg_baseline_decodes(tmp_path: Path) -> None:
    eight_bit = write(build_synthetic_image(chest_pixels(bits=8), modality="OT", bits_stored=8), tmp_path / "8.dcm")
    compressed = dcmtk_compress(eight_bit, tmp_path / "b.dcm", "dcmcjpeg", "+eb")
    assert pydicom.dcmread(compressed).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    # DCMTK's lossy encoder also shifts the stored values (min to 0); the automatic window does not mind.
    lossy = read_prior(compressed, max_pixels=LIMIT).pixels
    assert np.abs(lossy - read_prior(eight_bit, max_pixels=LIMIT).pixels).mean() < 0.02


def test_jpeg_2000_decodes(dx_file: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(dx_file)
    ds.compress(JPEG2000Lossless)
    compressed = write(ds, tmp_path / "j2k.dcm")
    assert pydicom.dcmread(compressed).file_meta.TransferSyntaxUID == JPEG2000Lossless
    np.testing.assert_array_equal(read_prior(compressed, max_pixels=LIMIT).pixels,
                                  read_prior(dx_file, max_pixels=LIMIT).pixels)


def test_not_dicom(tmp_path: Path) -> None:
    (tmp_path / "x.dcm").write_bytes(b"this is a text file, not DICOM" * 10)
    with pytest.raises(NotDicomError, match="not a readable DICOM file"):
        read_prior(tmp_path / "x.dcm", max_pixels=LIMIT)
    with pytest.raises(NotDicomError):
        read_prior(b"", max_pixels=LIMIT)


def test_truncated_pixel_data(dx_file: Path, tmp_path: Path) -> None:
    data = dx_file.read_bytes()
    (tmp_path / "t.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(PixelDataError, match="pixel data could not be decoded .*truncated"):
        read_prior(tmp_path / "t.dcm", max_pixels=LIMIT)


@pytest.mark.parametrize("length, error", [(400, NotDicomError), (1500, NoPixelDataError)])
def test_truncated_header(dx_file: Path, length: int, error: type) -> None:
    with pytest.raises(error, match="truncated"):
        read_prior(dx_file.read_bytes()[:length], max_pixels=LIMIT)


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
    with pytest.raises(UnsupportedImageError, match="colour images \\(RGB\\)"):
        read_prior(ds, max_pixels=LIMIT)


@pytest.mark.parametrize("sop_class, modality", [
    ("1.2.840.10008.5.1.4.1.1.2", "CT"), ("1.2.840.10008.5.1.4.1.1.4", "MR"), ("1.2.840.10008.5.1.4.1.1.6.1", "US"),
])
def test_wrong_modality(sop_class: str, modality: str) -> None:
    ds = build_synthetic_image(chest_pixels())
    ds.SOPClassUID, ds.Modality = sop_class, modality
    with pytest.raises(UnsupportedImageError, match=f"modality {modality}"):
        read_prior(ds, max_pixels=LIMIT)


def test_too_large_is_refused_before_decoding() -> None:
    ds = build_synthetic_image(chest_pixels())
    ds.PixelData = b"\x00"  # would fail to decode: the size check must come first
    with pytest.raises(ImageTooLargeError, match="200x160 = 32000 pixels; the limit is 10000"):
        read_prior(ds, max_pixels=10_000)


def test_malformed_header_values() -> None:
    ds = build_synthetic_image(chest_pixels())
    ds.WindowWidth = 0  # the LINEAR window needs a width of at least 1
    with pytest.raises(NotDicomError, match="malformed"):
        read_prior(ds, max_pixels=LIMIT)


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")
def test_messages_are_one_line_and_carry_no_phi() -> None:
    ds = build_synthetic_image(chest_pixels(), patient_name="DOE^JANE", patient_id="MRN12345",
                               patient_birth_date="19610203")
    ds.SOPClassUID, ds.Modality = "1.2.840.10008.5.1.4.1.1.4", "MR\nDOE"
    with pytest.raises(UnsupportedImageError) as info:
        read_prior(ds, max_pixels=LIMIT)
    message = str(info.value)
    assert "\n" not in message and "MRN12345" not in message and "19610203" not in message and "JANE" not in message


def corrupt_rle_dx() -> Dataset:
    """A valid RLE DX whose second segment offset is moved back two bytes: the first segment loses its last run
    and the second starts inside it, so decoding writes past the end of the frame."""
    ds = build_synthetic_image(chest_pixels())
    ds.compress(RLELossless)
    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    second = struct.unpack_from("<L", frame, 8)[0]
    struct.pack_into("<L", frame, 8, second - 2)
    ds.PixelData = encapsulate([bytes(frame)])
    return ds


def _rust_decoder_failure(ds: Dataset) -> BaseException:
    """What pylibjpeg-rle raises on ``ds``'s pixel data."""
    ds.pixel_array_options(decoding_plugin="pylibjpeg")
    try:
        _ = ds.pixel_array
    except BaseException as exc:  # noqa: BLE001 - a panic is what is looked for
        return exc
    raise AssertionError("the Rust decoder decoded it")


def test_the_corrupt_rle_fixture_panics_the_rust_decoder() -> None:
    """What the reader must never let through: pylibjpeg-rle's panic, a BaseException that `except Exception`
    misses (pyo3_runtime cannot be imported, so the class is only known by name)."""
    panic = _rust_decoder_failure(corrupt_rle_dx())
    assert (type(panic).__module__, type(panic).__name__) == ("pyo3_runtime", "PanicException")
    assert not isinstance(panic, Exception)


def test_a_corrupt_rle_stream_is_a_clear_refusal(tmp_path: Path) -> None:
    with pytest.raises(PixelDataError, match="pixel data could not be decoded .*1.2.840.10008.1.2.5"):
        read_prior(write(corrupt_rle_dx(), tmp_path / "rle.dcm"), max_pixels=LIMIT)


@pytest.mark.parametrize("raised, refused", [("panic", True), (MemoryError, True), (KeyboardInterrupt, False),
                                             (SystemExit, False)])
def test_every_decoder_failure_but_an_interrupt_is_a_pixel_data_error(
        raised: type[BaseException] | str, refused: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any decoder (JPEG 2000 here) that panics or fails is refused in one line; an interrupt still interrupts."""
    error = type(_rust_decoder_failure(corrupt_rle_dx())) if raised == "panic" else raised
    assert isinstance(error, type)
    ds = build_synthetic_image(chest_pixels())
    ds.compress(JPEG2000Lossless)

    def fail(self: Dataset) -> np.ndarray:
        raise error("the decoder failed")

    monkeypatch.setattr(Dataset, "pixel_array", property(fail))
    with pytest.raises(PixelDataError if refused else error):
        read_prior(ds, max_pixels=LIMIT)


def test_rle_data_larger_than_any_encoding_is_refused_before_decoding() -> None:
    """pydicom's RLE decoder would expand each 2-byte run to 128 bytes before checking the length."""
    ds = build_synthetic_image(chest_pixels())
    ds.compress(RLELossless)
    segment = b"\x81\x00" * (2 * 200 * 160)  # twice the 16-bit 200x160 image, each run expanding 64-fold
    header = struct.pack("<16L", 2, 64, 64 + len(segment), *([0] * 13))
    ds.PixelData = encapsulate([header + segment + segment])
    with pytest.raises(PixelDataError, match="more than any encoding of a 200x160 image"):
        read_prior(ds, max_pixels=LIMIT)


def _declaring(ds: Dataset, marker: bytes, offset: int, size: bytes) -> Dataset:
    """``ds`` with ``size`` written into its codestream at ``offset`` bytes after ``marker``."""
    frame = bytearray(get_frame(ds.PixelData, 0, number_of_frames=1))
    at = frame.index(marker) + offset
    frame[at:at + len(size)] = size
    ds.PixelData = encapsulate([bytes(frame)])
    return ds


def _jpeg_2000(dx_file: Path, tmp_path: Path) -> Dataset:
    ds = pydicom.dcmread(dx_file)
    ds.compress(JPEG2000Lossless)
    return _declaring(ds, b"\xff\x51", 10, struct.pack(">L", 5_000_096))  # Ysiz: 5 million rows


def _jpeg_lossless(dx_file: Path, tmp_path: Path) -> Dataset:
    ds = pydicom.dcmread(dcmtk_compress(dx_file, tmp_path / "jl.dcm", "dcmcjpeg", "+e1"))
    return _declaring(ds, b"\xff\xc3", 5, struct.pack(">HH", 30_000, 30_000))  # SOF3 height and width


@pytest.mark.parametrize("make, declared", [(_jpeg_2000, "5000096x160"), (_jpeg_lossless, "30000x30000")])
def test_a_stream_declaring_a_larger_image_is_refused_before_decoding(
        make, declared: str, dx_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """A decoder allocates what the stream declares: a 4 KB JPEG 2000 file once took 12 s and 900 MB this way."""
    ds = make(dx_file, tmp_path)

    def decoded(self: Dataset) -> np.ndarray:
        raise AssertionError("a decoder was asked")

    monkeypatch.setattr(Dataset, "pixel_array", property(decoded))
    with pytest.raises(PixelDataError, match=f"its stream declares a {declared} image, the header a 200x160 one"):
        read_prior(ds, max_pixels=LIMIT)


def _with_vr(data: bytes, tag: tuple[int, int], vr: bytes, new_vr: bytes) -> bytes:
    """``data`` (explicit VR little endian) with one element's VR bytes replaced."""
    element = struct.pack("<HH", *tag) + vr
    assert data.count(element) == 1
    return data.replace(element, struct.pack("<HH", *tag) + new_vr)


@pytest.mark.parametrize("tag, vr, new_vr", [
    ((0x0020, 0x0020), b"CS", b"\x43\x82"),  # PatientOrientation: an unknown VR (NotImplementedError)
    ((0x0008, 0x0016), b"UI", b"FD"),  # SOPClassUID as 8-byte floats: 28 bytes do not fit (BytesLengthException)
])
def test_an_element_that_cannot_be_parsed_is_a_malformed_header(dx_file: Path, tag: tuple[int, int], vr: bytes,
                                                                 new_vr: bytes) -> None:
    with pytest.raises(NotDicomError, match="header is malformed"):
        read_prior(_with_vr(dx_file.read_bytes(), tag, vr, new_vr), max_pixels=LIMIT)


def test_seeded_mutations_never_escape_the_reader() -> None:
    """A short run of benchmarks/reliability.py's part (a): every mutation is read or refused with a
    DicomInputError (the run once met a Rust panic, NotImplementedError, BytesLengthException and OSError)."""
    priors = seed_priors()
    outcomes = [(index, *read_outcome(mutation(priors, 1, index)[2])) for index in range(600)]
    assert [(index, detail) for index, outcome, detail in outcomes if outcome == "escaped"] == []
    assert {"accepted", "refused"} <= {outcome for _, outcome, _ in outcomes}


def test_the_demo_prior_and_the_synthetic_priors_carry_a_complete_record() -> None:
    check_patient_record(read_prior(DEMO_PRIOR, max_pixels=LIMIT).dataset)
    for modality in ("DX", "CR", "OT"):
        check_patient_record(build_synthetic_image(chest_pixels(), modality=modality))


def _without(keyword: str) -> Dataset:
    ds = build_synthetic_image(chest_pixels())
    delattr(ds, keyword)
    return ds


def _raw(keyword: str, vr: str, value: bytes) -> Dataset:
    """A prior whose ``keyword`` holds ``value`` as read from a file: not validated when set."""
    ds = build_synthetic_image(chest_pixels(), patient_birth_date="19610203")
    ds[keyword] = DataElement(ds[keyword].tag, vr, value)
    return pydicom.dcmread(pydicom.filebase.DicomBytesIO(_saved(ds)))


def _saved(ds: Dataset) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize("make, message", [
    (lambda: _without("AccessionNumber"), "has no AccessionNumber \\(Type 2\\)"),
    (lambda: _without("PatientSex"), "has no PatientSex"),
    (lambda: _without("StudyInstanceUID"), "has no StudyInstanceUID \\(Type 1\\)"),
    (lambda: _raw("PatientSex", "CS", b"m "), "PatientSex is malformed"),
    (lambda: _raw("PatientBirthDate", "DA", b"1961020x"), "PatientBirthDate is malformed: not a valid DA"),
    (lambda: _raw("StudyTime", "TM", b"256000"), "StudyTime is malformed"),
    (lambda: _raw("StudyID", "SH", b"1\\2 "), "StudyID is malformed"),
    (lambda: _raw("SeriesInstanceUID", "UI", b""), "SeriesInstanceUID is empty"),
])
def test_a_record_the_outputs_cannot_copy_is_refused(make, message: str) -> None:  # noqa: ANN001
    """Each of these once failed only after generation, in highdicom, with a traceback."""
    ds = make()
    with pytest.raises(PatientRecordError, match=message) as info:
        check_patient_record(ds)
    assert "1961020x" not in str(info.value) and "19610203" not in str(info.value)


def test_a_uid_with_another_vr_is_refused(dx_file: Path) -> None:
    """Read as a PN, the SOP Class UID still names DX for the reader; the outputs would fail to copy it."""
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_with_vr(dx_file.read_bytes(), (0x0008, 0x0016), b"UI",
                                                                  b"PN")))
    read_prior(ds, max_pixels=LIMIT)
    with pytest.raises(PatientRecordError, match="SOPClassUID is malformed: not a valid UI value"):
        check_patient_record(ds)


def test_an_unparsable_element_anywhere_is_refused_before_a_writer_meets_it(dx_file: Path) -> None:
    """The writers copy more than the reader looks at: every element is parsed here, once."""
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_with_vr(dx_file.read_bytes(), (0x0008, 0x1030), b"LO",
                                                                  b"\x43\x82")))  # StudyDescription
    read_prior(ds, max_pixels=LIMIT)  # the reader does not need it
    with pytest.raises(PatientRecordError, match="cannot be parsed"):
        check_patient_record(ds)


def test_pydicom_warnings_about_a_file_are_held_back(caplog: pytest.LogCaptureFixture,
                                                     recwarn: pytest.WarningsRecorder) -> None:
    """pydicom warns, and logs at WARNING, about what it tolerates in a file, sometimes quoting values: nothing of
    it reaches a log or the terminal (where it would also break a refusal's one line); a debug line counts it."""
    ds = build_synthetic_image(chest_pixels())
    ds.compress(RLELossless)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame + b"\x81\x00" * 4])  # the last segment decodes 512 bytes too long
    with caplog.at_level("DEBUG"):
        read_prior(ds, max_pixels=LIMIT)
    assert not [r for r in caplog.records if r.name.startswith("pydicom")] and not recwarn.list
    assert "pydicom reported 1 problem(s) with the file" in caplog.text
