"""The `progemu` command end to end: outputs that validate, reproducible seeds, one-line refusals, no PHI in logs."""

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from fhir.resources.bundle import Bundle

from benchmarks.reliability import mutation, read_outcome, seed_priors
from dicom_io.peers import DicomPeer
from dicom_io.reader import read_prior
from dicom_io.records import SYNTHETIC_NOTICE
from dicom_io.synthetic import build_synthetic_image
from plugin.cli import build_parser, main
from plugin.cli.options import flag, settings
from plugin.cli.training import train_config
from plugin.config import Settings
from tests.conftest import PhiLogCheck
from tests.support.dicom_fixtures import TEST_PHI, chest_pixels, write
from tests.support.dicom_validators import assert_dciodvfy_clean, dsrdump_text
from tests.test_reader import corrupt_rle_dx

PATIENT: dict[str, Any] = {"patient_name": "DOE^JANE", "patient_id": "MRN-778899", "patient_birth_date": "19510203"}
DEMO_PRIOR = Path(__file__).parents[1] / "plugin" / "assets" / "demo_prior.dcm"
OUTPUTS = ("counterfactual.dcm", "report.dcm", "report_page.dcm", "report_pdf.dcm", "fhir.json", "preview.png")


@pytest.fixture
def prior(tmp_path: Path) -> Path:
    return write(build_synthetic_image(chest_pixels(), modality="CR", **PATIENT), tmp_path / "prior.dcm")


def counterfactual(prior: Path, out: Path, model: Path, *extra: str) -> int:
    return main(["counterfactual", str(prior), "--hypothesis", "the left pleural effusion worsens",
                 "--out", str(out), "--model", str(model), "--engine", "torch", *extra])


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path) -> None:
    """As a new user runs it: the console script, the shipped prior and the shipped model."""
    out = tmp_path / "demo"
    done = subprocess.run([str(Path(sys.executable).parent / "progemu"), "demo", "--out", str(out), "--seed", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert all((out / name).exists() for name in OUTPUTS)
    assert done.stdout.count("\n") == 1 and "wrote counterfactual.dcm" in done.stdout and "seed 1" in done.stdout
    assert "generating" in done.stderr  # the progress bar
    assert_dciodvfy_clean(out / "counterfactual.dcm")
    assert_dciodvfy_clean(out / "report.dcm")
    assert_dciodvfy_clean(out / "report_page.dcm")
    report = dsrdump_text(out / "report.dcm")
    assert "pleural effusion has developed" in report and "seed=1" in report
    sc, prior_ds = pydicom.dcmread(out / "counterfactual.dcm"), pydicom.dcmread(DEMO_PRIOR)
    assert sc.StudyInstanceUID == prior_ds.StudyInstanceUID and sc.SeriesInstanceUID != prior_ds.SeriesInstanceUID
    assert (sc.Rows, sc.Columns) == (prior_ds.Rows, prior_ds.Columns)
    assert list(sc.ImageType)[:2] == ["DERIVED", "SECONDARY"] and SYNTHETIC_NOTICE in sc.ImageComments
    bundle = json.loads((out / "fhir.json").read_text())
    assert Bundle.model_validate(bundle).model_dump(mode="json", exclude_none=True)["type"] == "collection"
    # Residual composition: outside the hypothesised change the SC carries the prior's own pixels at full resolution:
    # most of the image (the decoder's own image keeps under a fifth, the next test).
    assert "composition=residual" in report
    assert _share_of_prior_pixels(sc, DEMO_PRIOR) > 0.6


def _share_of_prior_pixels(sc: pydicom.Dataset, prior: Path) -> float:
    own = np.rint(read_prior(prior, max_pixels=10**8).pixels * 255.0)
    return float((sc.pixel_array == own).mean())


@pytest.mark.slow
def test_decoded_composition_delivers_the_decoder_image(tmp_path: Path) -> None:
    assert main(["demo", "--out", str(tmp_path), "--seed", "1", "--composition", "decoded"]) == 0
    assert "composition=decoded" in dsrdump_text(tmp_path / "report.dcm")
    # The VQ decoder reproduces the prior only approximately: hardly a pixel keeps its value.
    assert _share_of_prior_pixels(pydicom.dcmread(tmp_path / "counterfactual.dcm"), DEMO_PRIOR) < 0.2


@pytest.mark.slow
def test_same_seed_gives_byte_identical_pixels(prior: Path, tmp_path: Path, small_checkpoint: Path) -> None:
    assert counterfactual(prior, tmp_path / "a", small_checkpoint, "--seed", "5") == 0
    assert counterfactual(prior, tmp_path / "b", small_checkpoint, "--seed", "5") == 0
    assert counterfactual(prior, tmp_path / "c", small_checkpoint, "--seed", "6") == 0
    a, b, c = (pydicom.dcmread(tmp_path / d / "counterfactual.dcm") for d in "abc")
    assert a.PixelData == b.PixelData
    assert a.PixelData != c.PixelData
    assert a.SOPInstanceUID != b.SOPInstanceUID  # a new instance each run, the same pixels


@pytest.mark.slow
def test_sampler_settings_reach_the_report(prior: Path, tmp_path: Path, small_checkpoint: Path) -> None:
    assert counterfactual(prior, tmp_path / "o", small_checkpoint, "--seed", "9", "--cfg-scale", "2.5",
                          "--top-k", "7", "--top-p", "0.9", "--temperature", "0.8", "--fhir-version", "R4B") == 0
    report = dsrdump_text(tmp_path / "o" / "report.dcm")
    for setting in ("seed=9", "cfg_scale=2.5", "top_k=7", "top_p=0.9", "temperature=0.8", "checkpoint_sha256="):
        assert setting in report
    from fhir.resources.R4B.bundle import Bundle as BundleR4B

    BundleR4B.model_validate(json.loads((tmp_path / "o" / "fhir.json").read_text()))


def _refusal(capsys: pytest.CaptureFixture, code: int, pattern: str) -> None:
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("progemu: error: ") and pattern in lines[-1], err
    assert "Traceback" not in err


def _dataset_file(tmp_path: Path, edit) -> Path:  # noqa: ANN001
    ds = build_synthetic_image(chest_pixels(), **PATIENT)
    edit(ds)
    return write(ds, tmp_path / "bad.dcm")


def test_not_dicom(tmp_path: Path, small_checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    _refusal(capsys, counterfactual(tmp_path / "notes.txt", tmp_path / "o", small_checkpoint), "not a readable DICOM")


def test_truncated(prior: Path, tmp_path: Path, small_checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "t.dcm").write_bytes(prior.read_bytes()[:5000])
    _refusal(capsys, counterfactual(tmp_path / "t.dcm", tmp_path / "o", small_checkpoint), "truncated")


@pytest.mark.parametrize("edit, message", [
    (lambda ds: delattr(ds, "PixelData"), "no pixel data"),
    (lambda ds: setattr(ds, "NumberOfFrames", 3), "multi-frame"),
    (lambda ds: ds.update({"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB"}), "colour"),
    (lambda ds: ds.update({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2", "Modality": "CT"}), "modality CT"),
])
def test_unusable_images(tmp_path: Path, small_checkpoint: Path, capsys: pytest.CaptureFixture, edit,  # noqa: ANN001
                         message: str) -> None:
    _refusal(capsys, counterfactual(_dataset_file(tmp_path, edit), tmp_path / "o", small_checkpoint), message)
    assert not (tmp_path / "o").exists()


def test_oversized(prior: Path, tmp_path: Path, small_checkpoint: Path, capsys: pytest.CaptureFixture,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROGEMU_MAX_IMAGE_PIXELS", "1000")
    _refusal(capsys, counterfactual(prior, tmp_path / "o", small_checkpoint), "the limit is 1000")


@pytest.mark.parametrize("hypothesis, message", [("   ", "empty"), ("x" * 501, "the limit is 500")])
def test_bad_hypotheses(prior: Path, tmp_path: Path, small_checkpoint: Path, capsys: pytest.CaptureFixture,
                        hypothesis: str, message: str) -> None:
    code = main(["counterfactual", str(prior), "--hypothesis", hypothesis, "--out", str(tmp_path / "o"),
                 "--model", str(small_checkpoint)])
    _refusal(capsys, code, message)


@pytest.mark.parametrize("option, value, message", [("--seed", "-4", "seed"), ("--top-p", "1.5", "top-p"),
                                                    ("--temperature", "-1", "temperature")])
def test_bad_settings(prior: Path, tmp_path: Path, small_checkpoint: Path, capsys: pytest.CaptureFixture,
                      option: str, value: str, message: str) -> None:
    _refusal(capsys, counterfactual(prior, tmp_path / "o", small_checkpoint, option, value), message)


def test_missing_prior_and_model(tmp_path: Path, small_checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    _refusal(capsys, counterfactual(tmp_path / "nope.dcm", tmp_path / "o", small_checkpoint), "does not exist")
    prior = write(build_synthetic_image(chest_pixels()), tmp_path / "p.dcm")
    _refusal(capsys, counterfactual(prior, tmp_path / "o", tmp_path / "no-model"), "does not exist")


@pytest.mark.slow
def test_no_phi_in_logs(prior: Path, tmp_path: Path, small_checkpoint: Path,
                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        code = main(["-vv", "counterfactual", str(prior), "--hypothesis", "effusion worsens", "--out",
                     str(tmp_path / "o"), "--model", str(small_checkpoint)])
    assert code == 0
    logged = caplog.text
    assert logged  # something was logged at debug level
    for value in ("DOE", "JANE", "MRN-778899", "19510203"):
        assert value not in logged
    # the run's own messages were captured (so the PHI check above looked at them): the SC it wrote is named
    sc_uid = pydicom.dcmread(tmp_path / "o" / "counterfactual.dcm").SOPInstanceUID
    assert f"counterfactual SC {sc_uid}" in logged, logged


def _malformed_priors(directory: Path) -> dict[str, Path]:
    """Priors that once ended in a traceback and exit 1: a corrupt RLE stream (a Rust panic), an element of unknown
    VR, a record the outputs cannot copy (after generation, in highdicom); and seeded mutations of an RLE DX that
    are no usable prior."""
    valid = build_synthetic_image(chest_pixels(), **PATIENT)
    data = write(valid, directory / "valid.dcm").read_bytes()
    edits = {"unknown VR": (b"\x20\x00\x20\x00CS", b"\x20\x00\x20\x00\x43\x82"),
             "lowercase PatientSex": (b"\x10\x00\x40\x00CS\x02\x00O ", b"\x10\x00\x40\x00CS\x02\x00m ")}
    files = {name: directory / f"{name}.dcm" for name in (*edits, "corrupt RLE", "no AccessionNumber")}
    for name, (old, new) in edits.items():
        assert data.count(old) == 1
        files[name].write_bytes(data.replace(old, new))
    write(corrupt_rle_dx(), files["corrupt RLE"])
    del valid.AccessionNumber
    write(valid, files["no AccessionNumber"])
    priors = seed_priors()
    seeded = (mutation(priors, 1, index) for index in range(2, 2000, 4))  # the RLE DX's, every mutator in turn
    unusable = [(f"{mutator} {index}", data) for index, (_, mutator, data) in enumerate(seeded)
                if read_outcome(data)[0] != "accepted"][:5]
    for name, mutated in unusable:
        files[name] = directory / f"{name}.dcm"
        files[name].write_bytes(mutated)
    return files


def test_a_malformed_prior_is_one_line_and_exit_2(tmp_path: Path, small_checkpoint: Path,
                                                   capfd: pytest.CaptureFixture) -> None:
    """Refused before the model loads; the captured file descriptors show everything a terminal would."""
    for name, path in _malformed_priors(tmp_path).items():
        code = counterfactual(path, tmp_path / "o", small_checkpoint)
        err = capfd.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("progemu: error: "), (name, err)
        assert not any(value in err for value in TEST_PHI), (name, err)
    assert not (tmp_path / "o").exists()


def test_a_corrupt_rle_prior_through_the_console_script(tmp_path: Path) -> None:
    """As a user runs it, Rust's backtrace setting inherited: one line, exit 2, and no model is loaded."""
    prior = write(corrupt_rle_dx(), tmp_path / "rle.dcm")
    done = subprocess.run([str(Path(sys.executable).parent / "progemu"), "counterfactual", str(prior),
                           "--hypothesis", "effusion worsens", "--model", str(tmp_path / "no-model")],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "RUST_BACKTRACE": "1"})
    assert done.returncode == 2 and done.stdout == "", done
    assert done.stderr.count("\n") == 1 and "pixel data could not be decoded" in done.stderr, done.stderr


def test_the_session_phi_check_catches_a_patient_name_in_a_log_record() -> None:
    """The check tests/conftest.py runs over every record of a session (here on a logger of its own, so that this
    deliberate leak does not fail the session)."""
    check = PhiLogCheck(TEST_PHI)
    logger = logging.getLogger("tests.phi-check-probe")
    logger.propagate, logger.level = False, logging.DEBUG
    logger.addHandler(check)
    try:
        logger.debug("read a prior of 200x160")
        logger.debug("sent the study of %s", PATIENT["patient_name"])
        logger.info("patient JANE DOE, born 1951-02-03")
        try:
            raise ValueError(f"bad value {PATIENT['patient_id']!r}")
        except ValueError:
            logger.exception("refused")
        logger.info("P-9 and PHANTOM on their own are ordinary words")  # short values and parts are not checked
    finally:
        logger.removeHandler(check)
    assert [(leak.level, leak.value) for leak in check.leaks] == [
        ("DEBUG", "DOE^JANE"), ("INFO", "1951-02-03"), ("INFO", "JANE DOE"), ("ERROR", "MRN-778899")]


def test_train_options_override_only_what_they_name() -> None:
    default = train_config(build_parser().parse_args(["train", "--data", "d", "--out", "o"]))
    assert default.lm.changed_token_weight == 1.0 and default.version.startswith("progemu-demo-")
    config = train_config(build_parser().parse_args(
        ["train", "--data", "d", "--out", "o", "--lm-steps", "7", "--changed-token-weight", "4", "--seed", "3"]))
    assert (config.lm.steps, config.lm.changed_token_weight, config.lm.seed, config.vq.seed) == (7, 4.0, 3, 3)
    assert config.vq.steps == default.vq.steps and config.lm.batch_size == default.lm.batch_size
    assert config.refine == default.refine and default.refine.steps > 0
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--refine-steps", "0", "--from", "c"])
    assert train_config(args).refine.steps == 0 and args.start_from == Path("c")


COMMANDS = ("counterfactual", "demo", "serve", "listen", "worker", "export-onnx", "verify-onnx", "convert-checkpoint",
            "calibrate", "make-dataset", "train", "evaluate", "db", "clients", "audit")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PROGEMU_* settings from the machine the tests run on."""
    for name in [name for name in os.environ if name.startswith("PROGEMU_")]:
        monkeypatch.delenv(name)


def _help(capsys: pytest.CaptureFixture, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_help_lists_every_command(capsys: pytest.CaptureFixture) -> None:
    listed = re.findall(r"^ {4}(\S+)", _help(capsys), re.MULTILINE)
    assert sorted(listed) == sorted(COMMANDS)
    for command in COMMANDS:
        assert f"usage: progemu {command}" in _help(capsys, command)


def test_help_imports_no_model_code() -> None:
    """`progemu --help` stays fast: torch, transformers and onnx load only when a command needs them."""
    done = subprocess.run([sys.executable, "-c", "import sys, plugin.cli; print(sorted(set(sys.modules) & "
                           "{'torch', 'transformers', 'onnx', 'onnxruntime', 'celery'}))"],
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("command", ["serve", "listen", "worker"])
def test_node_flags_are_settings_fields(command: str, capsys: pytest.CaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every flag of a node command is a Settings field's, documented by the field's description."""
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapped help lines
    options = _help(capsys, command).split("options:")[1]
    entries = {entry.split()[0].rstrip(","): " ".join(entry.split())
               for entry in re.split(r"\n  (?=-)", options) if entry.strip()}
    fields = build_parser().parse_args([command]).settings_fields
    assert set(entries) - {"-h"} == {flag(name)[0] for name in fields}
    for name in fields:
        description = Settings.model_fields[name].description
        entry = entries[flag(name)[0]]
        assert f"PROGEMU_{name.upper()}" in entry
        assert description and " ".join(description.split()) in entry, (name, entry)


def test_worker_flags_override_the_environment(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROGEMU_WORKER_CONCURRENCY", "2")
    monkeypatch.setenv("PROGEMU_WORKER_QUEUES", "io")
    config = settings(build_parser().parse_args(["worker"]))
    assert (config.worker_concurrency, config.worker_queues) == (2, ("io",))
    config = settings(build_parser().parse_args(["worker", "--concurrency", "3", "--queues", "gpu,io"]))
    assert (config.worker_concurrency, config.worker_queues) == (3, ("gpu", "io"))


def test_node_flags_reach_the_settings(clean_env: None) -> None:
    args = build_parser().parse_args(["serve", "--peer", "MODALITY@10.0.0.5:104", "--peer", "PACS@pacs:4242",
                                      "--destination", "VIEWER@viewer:11112", "--dicom-port", "11113",
                                      "--http-port", "9090", "--model", "ckpt", "--data-dir", "spool"])
    config = settings(args)
    assert config.peers == (DicomPeer("MODALITY", "10.0.0.5", 104), DicomPeer("PACS", "pacs", 4242))
    assert config.destination == DicomPeer("VIEWER", "viewer", 11112)
    assert (config.dicom_port, config.http_port, config.model_path, config.data_dir) == (
        11113, 9090, Path("ckpt"), Path("spool"))


def test_node_refusals(clean_env: None, capsys: pytest.CaptureFixture, tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # `serve` opens the default data directory (./progemu-data) before it refuses
    _refusal(capsys, main(["listen", "--ae-title", "A-TITLE-TOO-LONG-FOR-DICOM"]), "bad configuration: ae_title")
    _refusal(capsys, main(["serve", "--peer", "nonsense"]), "bad configuration: peers.0")
    _refusal(capsys, main(["worker", "--concurrency", "0"]), "bad configuration: worker_concurrency")
    _refusal(capsys, main(["worker"]), "needs a broker")
    _refusal(capsys, main(["serve"]), "the REST API has no client to accept")
