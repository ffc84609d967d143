"""The pieces every output shares: byte-accurate text fitting, the algorithm as equipment, pixels, source references."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_io.output_common import (
    MAX_BYTES,
    Equipment,
    fit_text,
    generation_settings,
    quantize,
    source_image_item,
    to_uint8,
)
from dicom_io.records import AlgorithmRecord


@pytest.mark.parametrize("vr", ["LO", "ST", "LT"])
@pytest.mark.parametrize("phrase", ["the effusion worsens ", "Pleuraerguss größer ", "胸水增加 ", "🫁 "])
def test_fit_text_cuts_at_the_byte_limit_without_splitting_a_character(vr, phrase) -> None:
    long = phrase * 3000
    fitted = fit_text(long, vr)
    assert len(fitted.encode()) <= MAX_BYTES[vr]
    assert len(fitted.encode()) > MAX_BYTES[vr] - 8  # cut at the limit, not well before it
    assert fitted.endswith("...") and long.startswith(fitted.removesuffix("..."))
    assert fit_text(phrase, vr) == phrase  # what fits is kept as it is


def test_equipment_values_fit_lo_in_bytes() -> None:
    algorithm = AlgorithmRecord(name="Größer" * 11, version="ü" * 40, checkpoint_sha256="ab" * 32,
                                software_version="0.1.0", device_uid="2.25.1", manufacturer="ß" * 33)
    equipment = Equipment.of(algorithm)
    values = [equipment.manufacturer, equipment.model_name, equipment.device_name, *equipment.software_versions]
    assert all(len(value.encode()) <= 64 for value in values)
    assert equipment.software_versions[1] == "0.1.0" and equipment.device_uid == "2.25.1"
    assert equipment.highdicom_arguments() == {"manufacturer": equipment.manufacturer,
                                               "manufacturer_model_name": equipment.model_name,
                                               "software_versions": list(equipment.software_versions)}


def test_generation_settings_lead_with_the_checkpoint_then_sort_by_name() -> None:
    algorithm = AlgorithmRecord(name="ProgEmu", version="0", checkpoint_sha256="cd" * 32, software_version="0.1.0",
                                device_uid="2.25.1", parameters={"top_k": "2048", "seed": "7"})
    assert list(generation_settings(algorithm).items()) == [("checkpoint_sha256", "cd" * 32), ("seed", "7"),
                                                            ("top_k", "2048")]


def test_to_uint8_checks_then_rounds_to_nearest() -> None:
    pixels = np.array([[0.0, 0.5], [1.0, 1.5]], np.float32)
    assert to_uint8(pixels, (2, 2)).tolist() == [[0, 128], [255, 255]]
    assert np.array_equal(quantize(pixels), to_uint8(pixels, (2, 2)))
    for bad, shape in [(pixels, (2, 3)), (pixels.astype(np.uint8), (2, 2)), (np.full((2, 2), np.inf), (2, 2))]:
        with pytest.raises(ValueError):
            to_uint8(bad, shape)


@pytest.mark.parametrize(("preserved", "value"), [(True, "YES"), (False, "NO")])
def test_source_image_item_references_the_input_we_processed(preserved, value) -> None:
    item = source_image_item("1.2.840.10008.5.1.4.1.1.1.1", "1.2.3", spatial_locations_preserved=preserved)
    assert (item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID) == ("1.2.840.10008.5.1.4.1.1.1.1", "1.2.3")
    assert item.SpatialLocationsPreserved == value
    (purpose,) = item.PurposeOfReferenceCodeSequence
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("121322", "DCM")
