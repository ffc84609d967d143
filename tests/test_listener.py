"""The DICOM listener against real peers: DCMTK's echoscu and storescu, and pynetdicom as an SCU."""

from __future__ import annotations

import ssl
import subprocess
import threading
from pathlib import Path
from unittest.mock import Mock

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation, Verification
from pynetdicom.status import STATUS_FAILURE, STORAGE_SERVICE_CLASS_STATUS

from dicom_io.completion import StudyArrival
from dicom_io.listener import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, Listener, ListenerConfig
from dicom_io.peers import DicomPeer
from dicom_io.records import MANUFACTURER
from dicom_io.spool import Spool
from dicom_io.synthetic import build_synthetic_image
from tests.support.dicom_fixtures import chest_pixels, write
from tests.support.net import free_port, wait_for

PEER = DicomPeer("STORESCU", "127.0.0.1", 104)


class Running:
    """A listener whose completion clock stands still until a test moves it (``clock.return_value``)."""

    def __init__(self, tmp_path: Path, max_bytes: int = 10**9, **overrides) -> None:
        values = {"ae_title": "PROGEMU", "host": "127.0.0.1", "port": free_port(), "peers": (PEER,),
                  "quiet_seconds": 10.0, **overrides}
        self.config = ListenerConfig(**values)
        self.spool = Spool(tmp_path / "spool", max_bytes)
        self.completed: list[StudyArrival] = []
        self.clock = Mock(return_value=0.0)
        self.listener = Listener(self.config, self.spool, on_complete=self.completed.append,
                                 is_own_output=lambda ds: ds.get("Manufacturer") == MANUFACTURER, clock=self.clock)

    def __enter__(self) -> Running:
        self.listener.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.stop()

    @property
    def port(self) -> int:
        return self.config.port


def _dcmtk(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)


def _image(study: str | None = None, **overrides) -> pydicom.Dataset:
    ds = build_synthetic_image(chest_pixels(), study_instance_uid=study or generate_uid())
    for keyword, value in overrides.items():
        setattr(ds, keyword, value)
    return ds


def _pynetdicom_store(port: int, ds: pydicom.Dataset, calling: str = "STORESCU") -> int:
    ae = AE(calling)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="PROGEMU")
    assert assoc.is_established
    try:
        return assoc.send_c_store(ds).Status
    finally:
        assoc.release()


@pytest.mark.integration
def test_echoscu_from_an_allowed_peer_succeeds(tmp_path: Path) -> None:
    with Running(tmp_path) as node:
        result = _dcmtk("echoscu", "-aet", "STORESCU", "-aec", "PROGEMU", "127.0.0.1", str(node.port))
    assert result.returncode == 0, result.stderr


@pytest.mark.integration
def test_unknown_ae_title_is_rejected_at_association(tmp_path: Path) -> None:
    with Running(tmp_path) as node:
        result = _dcmtk("echoscu", "-aet", "INTRUDER", "-aec", "PROGEMU", "127.0.0.1", str(node.port))
    assert result.returncode != 0
    assert "Association Rejected" in result.stderr + result.stdout
    assert "Calling AE Title Not Recognized" in result.stderr + result.stdout


@pytest.mark.integration
def test_known_ae_title_from_another_host_is_rejected(tmp_path: Path) -> None:
    with Running(tmp_path, peers=(DicomPeer("STORESCU", "192.0.2.10", 104),)) as node:
        result = _dcmtk("echoscu", "-aet", "STORESCU", "-aec", "PROGEMU", "127.0.0.1", str(node.port))
    assert result.returncode != 0
    assert "Association Rejected" in result.stderr + result.stdout


@pytest.mark.integration
def test_storescu_instances_land_in_the_spool_as_sent_and_the_study_completes(tmp_path: Path) -> None:
    study = generate_uid()
    files = [write(_image(study), tmp_path / f"in{i}.dcm") for i in range(3)]
    with Running(tmp_path) as node:
        result = _dcmtk("storescu", "-aet", "STORESCU", "-aec", "PROGEMU", "127.0.0.1", str(node.port),
                        *map(str, files))
        assert result.returncode == 0, result.stderr
        node.listener.flush()
        assert node.completed == []  # however slow the machine: no time has passed on the listener's clock
        node.clock.return_value = node.config.quiet_seconds
        wait_for(lambda: node.completed, 10, "the study to complete after the quiet period")
    [arrival] = node.completed
    assert (arrival.study_uid, arrival.instances, arrival.calling_ae_title, arrival.called_ae_title) == (
        study, 3, "STORESCU", "PROGEMU")
    spooled = node.spool.instances(study)
    assert len(spooled) == 3
    assert not list((tmp_path / "spool").rglob("*.part"))
    for source in files:
        original = pydicom.dcmread(source)
        [copy] = [p for p in spooled if p.stem == original.SOPInstanceUID]
        received = pydicom.dcmread(copy)
        assert np.array_equal(received.pixel_array, original.pixel_array)
        assert received.PatientID == original.PatientID


@pytest.mark.integration
def test_a_study_completes_as_soon_as_the_expected_series_are_in(tmp_path: Path) -> None:
    ds = _image()
    with Running(tmp_path, quiet_seconds=3600) as node:
        node.listener.expect(ds.StudyInstanceUID, [ds.SeriesInstanceUID])
        assert _pynetdicom_store(node.port, ds) == 0
        wait_for(lambda: node.completed, 5, "completion by the expected series")
    assert node.completed[0].series == {ds.SeriesInstanceUID}


@pytest.mark.integration
def test_our_own_outputs_are_acknowledged_but_never_spooled(tmp_path: Path) -> None:
    ds = _image(Manufacturer=MANUFACTURER)
    with Running(tmp_path) as node:
        assert _pynetdicom_store(node.port, ds) == 0
        node.listener.flush()
    assert node.spool.instances(ds.StudyInstanceUID) == []
    assert node.completed == []


@pytest.mark.integration
def test_a_failed_write_answers_a_failure_status_not_success(tmp_path: Path) -> None:
    ds = _image()
    with Running(tmp_path) as node:
        node.spool.root.joinpath(ds.StudyInstanceUID).write_text("a file where the study directory goes")
        assert _pynetdicom_store(node.port, ds) == OUT_OF_RESOURCES
    assert not node.listener.tracker.receiving(ds.StudyInstanceUID)
    assert list((tmp_path / "spool").rglob("*.dcm")) == []


@pytest.mark.integration
def test_a_full_spool_refuses_and_keeps_nothing_half_written(tmp_path: Path) -> None:
    ds = _image()
    with Running(tmp_path, max_bytes=1000) as node:
        assert _pynetdicom_store(node.port, ds) == OUT_OF_RESOURCES
    assert list((tmp_path / "spool").rglob("*.dcm")) == []
    assert list((tmp_path / "spool").rglob("*.part")) == []


def test_refusals_are_c_store_failure_statuses() -> None:
    assert STORAGE_SERVICE_CLASS_STATUS[OUT_OF_RESOURCES] == (STATUS_FAILURE, "Refused: Out of Resources")
    assert STORAGE_SERVICE_CLASS_STATUS[CANNOT_UNDERSTAND] == (STATUS_FAILURE, "Cannot Understand")


@pytest.mark.integration
def test_a_dataset_without_study_uid_is_refused(tmp_path: Path) -> None:
    ds = _image()
    del ds.StudyInstanceUID
    with Running(tmp_path) as node:
        assert _pynetdicom_store(node.port, ds) == CANNOT_UNDERSTAND
    assert list((tmp_path / "spool").rglob("*.dcm")) == []


@pytest.mark.integration
def test_associations_beyond_the_limit_are_rejected(tmp_path: Path) -> None:
    with Running(tmp_path, max_associations=1) as node:
        ae = AE("STORESCU")
        ae.add_requested_context(Verification)
        first = ae.associate("127.0.0.1", node.port, ae_title="PROGEMU")
        try:
            assert first.is_established
            second = ae.associate("127.0.0.1", node.port, ae_title="PROGEMU")
            assert second.is_rejected
        finally:
            first.release()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "node.pem", tmp_path / "node.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                    str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.mark.integration
def test_tls_listener_answers_tls_and_refuses_plain_connections(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    with Running(tmp_path, tls_cert=cert, tls_key=key) as node:
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        ae = AE("STORESCU")
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.network_timeout = 5
        secure = ae.associate("127.0.0.1", node.port, ae_title="PROGEMU", tls_args=(client, "127.0.0.1"))
        assert secure.is_established
        assert secure.send_c_echo().Status == 0
        secure.release()
        plain = ae.associate("127.0.0.1", node.port, ae_title="PROGEMU")
        assert not plain.is_established


@pytest.mark.parametrize("text", ["PACS@10.0.0.1:104", "A B@host.example:11112", "X@[::1]:4242"])
def test_peer_round_trips(text: str) -> None:
    assert str(DicomPeer.parse(text)) == text


@pytest.mark.parametrize("text", ["PACS@host", "@host:104", "WAY_TOO_LONG_AE_TITLE@h:104", "P@h:70000", "P\\Q@h:1"])
def test_bad_peer_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        DicomPeer.parse(text)


@pytest.mark.integration
def test_concurrent_senders_all_land(tmp_path: Path) -> None:
    images = [_image() for _ in range(4)]
    with Running(tmp_path) as node:
        statuses = []
        threads = [threading.Thread(target=lambda ds=ds: statuses.append(_pynetdicom_store(node.port, ds)))
                   for ds in images]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert statuses == [0] * 4
    assert all(node.spool.instances(ds.StudyInstanceUID) for ds in images)


@pytest.mark.integration
def test_dx_storage_class_is_accepted_in_compressed_transfer_syntaxes(tmp_path: Path) -> None:
    from pydicom.uid import JPEGLSLossless

    ds = _image()
    ds.compress(JPEGLSLossless)
    with Running(tmp_path) as node:
        assert ds.SOPClassUID == DigitalXRayImageStorageForPresentation
        assert _pynetdicom_store(node.port, ds) == 0
    [spooled] = node.spool.instances(ds.StudyInstanceUID)
    assert pydicom.dcmread(spooled).file_meta.TransferSyntaxUID == JPEGLSLossless


@pytest.mark.integration
def test_progemu_listen_runs_the_listener_alone(tmp_path: Path) -> None:
    import os
    import sys

    from tests.support.net import stop_process

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROGEMU_")}
    listen = subprocess.Popen([str(Path(sys.executable).parent / "progemu"), "listen", "--dicom-port", str(port),
                               "--peer", "STORESCU@127.0.0.1:104", "--data-dir", str(tmp_path / "data")],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _dcmtk("echoscu", "-aet", "STORESCU", "-aec", "PROGEMU", "127.0.0.1",
                                str(port)).returncode == 0, 60, "progemu listen to answer C-ECHO")
        ds = _image()
        sent = _dcmtk("storescu", "-aet", "STORESCU", "-aec", "PROGEMU", "127.0.0.1", str(port),
                      str(write(ds, tmp_path / "in.dcm")))
        assert sent.returncode == 0, sent.stderr
    finally:
        stop_process(listen, timeout=30)
    spooled = tmp_path / "data" / "spool" / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    assert pydicom.dcmread(spooled).SOPInstanceUID == ds.SOPInstanceUID
    assert listen.returncode == 0  # SIGTERM stops it cleanly
