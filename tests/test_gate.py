"""The input gate, as a radiologist meets it: header rules and the model's own out-of-distribution score, in the
CLI (one line, exit 2), in the node (the job fails with the reason) and, overridden for research, in every output."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from dicom_io.reader import SourceGeometry
from dicom_io.synthetic import build_synthetic_image
from inference.model import read_spec
from plugin.cli import main
from plugin.config import DEMO_MODEL, Settings
from plugin.errors import InputRefused
from plugin.gate import check_header
from plugin.jobs import JobState, NewJob
from plugin.orchestrator import Orchestrator
from plugin.tasks import CeleryDispatcher, configure, generate, use_node
from tests.support.dicom_fixtures import chest_pixels, phantom_prior, write
from tests.support.dicom_validators import assert_dciodvfy_clean, dsrdump_text

DEMO_VERSION = read_spec(DEMO_MODEL).version

CHEST_PARTS, FRONTAL = ("CHEST", "THORAX", "LUNG"), ("PA", "AP")


def _geometry(**values: str | None) -> SourceGeometry:
    return SourceGeometry(rows=10, columns=10, pixel_spacing=None, patient_orientation=None, laterality=None,
                          body_part=values.get("body_part"), view_position=values.get("view_position"))


@pytest.mark.parametrize(("body_part", "view"), [(None, None), ("CHEST", "PA"), ("chest ", "AP"), ("THORAX", None)])
def test_frontal_chest_headers_pass(body_part: str | None, view: str | None) -> None:
    check_header(_geometry(body_part=body_part, view_position=view), body_parts=CHEST_PARTS, view_positions=FRONTAL)


@pytest.mark.parametrize(("body_part", "view", "reason"), [
    ("EXTREMITY", None, "the prior is an image of EXTREMITY, not of the chest"),
    ("KNEE", "AP", "the prior is an image of KNEE, not of the chest"),
    ("CHEST", "LL", "the prior is a LL view: the model handles frontal chest radiographs only"),
    (None, "LATERAL", "the prior is a LATERAL view"),
])
def test_other_body_parts_and_views_are_refused_with_the_reason(body_part: str | None, view: str, reason: str) -> None:
    with pytest.raises(InputRefused, match=reason):
        check_header(_geometry(body_part=body_part, view_position=view), body_parts=CHEST_PARTS,
                     view_positions=FRONTAL)


def test_accepted_values_are_configuration() -> None:
    config = Settings(gate_body_parts="CHEST,ABDOMEN", gate_view_positions="PA,AP,LL")
    assert config.gate_body_parts == ("CHEST", "ABDOMEN")
    check_header(_geometry(body_part="ABDOMEN", view_position="LL"), body_parts=config.gate_body_parts,
                 view_positions=config.gate_view_positions)


def _run(prior: Path, out: Path, *extra: str) -> int:
    return main(["counterfactual", str(prior), "--hypothesis", "The left pleural effusion worsens.", "--out", str(out),
                 "--model", str(DEMO_MODEL), *extra])


def _last_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.strip()][-1]


def test_cli_refuses_a_tibia_and_a_lateral_before_generating(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tibia = write(phantom_prior(modality="CR"), tmp_path / "tibia.dcm")
    ds = pydicom.dcmread(tibia)
    ds.BodyPartExamined = "EXTREMITY"
    ds.save_as(tibia)
    assert _run(tibia, tmp_path / "out") == 2
    assert _last_error(capsys).startswith("progemu: error: the prior is an image of EXTREMITY, not of the chest")
    lateral = write(phantom_prior(), tmp_path / "lateral.dcm")
    ds = pydicom.dcmread(lateral)
    ds.ViewPosition = "LL"
    ds.save_as(lateral)
    assert _run(lateral, tmp_path / "out") == 2
    assert "the prior is a LL view" in _last_error(capsys)
    assert not (tmp_path / "out").exists()  # refused before anything is written


@pytest.mark.slow
def test_cli_refuses_what_the_model_never_saw_unless_overridden(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A cartoon the demo model (trained on phantoms) never saw: refused with score and limit, or let through and
    recorded as such in the SR, the SC, the report page and FHIR."""
    cartoon = write(build_synthetic_image(chest_pixels()), tmp_path / "cartoon.dcm")
    assert _run(cartoon, tmp_path / "refused") == 2
    line = _last_error(capsys)
    assert f"this image is outside what ProgEmu {DEMO_VERSION} was trained on (score " in line and ", limit " in line
    assert not (tmp_path / "refused").exists()

    out = tmp_path / "overridden"
    assert _run(cartoon, out, "--allow-out-of-distribution", "--seed", "2") == 0
    assert "progemu: warning: " in capsys.readouterr().err  # a flagged result is never shown as a normal one
    report = dsrdump_text(out / "report.dcm")
    assert "Research override" in report and "Outside operational limits" in report
    assert_dciodvfy_clean(out / "report.dcm")
    sc = pydicom.dcmread(out / "counterfactual.dcm")
    marking = sc.ImageComments.split("SYNTHETIC - NOT FOR DIAGNOSIS")[0]  # the marking comes first
    assert "OUTSIDE THE TRAINING DATA (research override)" in marking
    bundle = json.loads((out / "fhir.json").read_text())
    reports = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"]
    assert "OUTSIDE THE TRAINING DATA (research override)" in reports[0]["conclusion"]


@pytest.mark.slow
def test_an_in_distribution_prior_records_its_score_within_the_limit(tmp_path: Path) -> None:
    prior = write(phantom_prior(), tmp_path / "prior.dcm")
    assert _run(prior, tmp_path / "out", "--seed", "1") == 0
    report = dsrdump_text(tmp_path / "out" / "report.dcm")
    assert "Inside operational limits" in report and "within the limit" in report


@pytest.mark.slow
def test_the_node_fails_a_refused_job_with_the_reason_and_runs_an_overridden_one(tmp_path: Path) -> None:
    config = Settings(data_dir=tmp_path)
    configure(config)
    node = Orchestrator(config, CeleryDispatcher())
    use_node(node)
    cartoon = build_synthetic_image(chest_pixels())
    path = write(cartoon, tmp_path / "cartoon.dcm")
    node.spool.write(cartoon.StudyInstanceUID, cartoon.SeriesInstanceUID, cartoon.SOPInstanceUID, path.read_bytes())
    submitted = {override: node.store.submit(NewJob(
        request_id=f"r{override}", study_instance_uid=cartoon.StudyInstanceUID, source="test",
        hypothesis="The left pleural effusion worsens.", sampler=node.default_sampler(seed=3),
        allow_out_of_distribution=override))[0] for override in (False, True)}  # both before the study is released
    for job in submitted.values():
        generate.apply(args=(job.id,))  # the Celery task, run here: permanent failures fail the job at once
    refused, overridden = (node.store.get(submitted[override].id) for override in (False, True))
    assert refused.state == JobState.FAILED and f"outside what ProgEmu {DEMO_VERSION} was trained on" in refused.reason
    assert refused.results is None and refused.attempts == 1
    assert overridden.results is not None and overridden.allow_out_of_distribution  # generated (no destination)
    checks = overridden.results.checks
    assert checks.flagged and checks.input.overridden and not checks.input.within_limit
