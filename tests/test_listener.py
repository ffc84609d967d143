"""The DICOM listener against real peers: DCMTK's echoscu and storescu, and pynetdicom as an SCU."""

from __future__ import annotations

import contextlib
import re
import select
import socket
import ssl
import struct
import subprocess
import threading
import time
import tracemalloc
from pathlib import Path
from unittest.mock import Mock

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation, Verification
from pynetdicom.status import STATUS_FAILURE, STORAGE_SERVICE_CLASS_STATUS

from benchmarks.reliability import associate_rq
from dicom_io.completion import StudyArrival
from dicom_io.listener import (
    CANNOT_UNDERSTAND,
    CONTROL_PDU_MAX,
    NOT_AUTHORIZED,
    OUT_OF_RESOURCES,
    AssociationAttempt,
    Listener,
    ListenerConfig,
    OversizedPDUError,
    PduFraming,
)
from dicom_io.peers import DicomPeer
from dicom_io.records import MANUFACTURER
from dicom_io.spool import Spool
from dicom_io.synthetic import build_synthetic_image
from tests.support.dicom_fixtures import chest_pixels, write
from tests.support.net import free_port, wait_for
from tests.support.pki import TestCa

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
        self.attempts: list[AssociationAttempt] = []
        self.listener = Listener(self.config, self.spool, on_complete=self.completed.append,
                                 on_association=self.attempts.append,
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


@pytest.mark.integration
def test_concurrent_senders_all_land(tmp_path: Path) -> None:
    images = [_image() for _ in range(4)]
    with Running(tmp_path, max_pending_per_host=len(images)) as node:  # all four may be negotiating at once
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


# --- admission and intake hardening ---------------------------------------------------------------------


class _FaultyAdmission(Listener):
    def admit(self, calling_ae_title: str, address: str) -> bool:
        raise UnicodeError("label empty or too long")  # what getaddrinfo raised for a peer at "pacs..example.org"


@pytest.mark.integration
def test_an_admission_check_that_fails_refuses_the_association(tmp_path: Path) -> None:
    node = Running(tmp_path)
    node.listener = _FaultyAdmission(node.config, node.spool, on_complete=node.completed.append)
    with node:
        result = _dcmtk("echoscu", "-aet", "STORESCU", "-aec", "PROGEMU", "127.0.0.1", str(node.port))
    assert result.returncode != 0
    assert "Association Rejected" in result.stderr + result.stdout


@pytest.mark.parametrize("host", ["pacs..example.org", "no-such-host.invalid"])
def test_start_refuses_a_peer_whose_host_does_not_resolve(tmp_path: Path, host: str) -> None:
    config = ListenerConfig(ae_title="PROGEMU", host="127.0.0.1", port=free_port(),
                            peers=(PEER, DicomPeer("ORTHANC", host, 4242)))  # built directly: parse would refuse
    listener = Listener(config, Spool(tmp_path / "spool", 10**6), on_complete=lambda arrival: None)
    with pytest.raises(RuntimeError, match=rf"ORTHANC@{re.escape(host)}:4242.*does not resolve"):
        listener.start()
    assert not listener.running


def _closed(sock: socket.socket) -> bool:
    """Whether the listener has closed its end (the socket must be readable)."""
    try:
        return sock.recv(1) == b""
    except ConnectionError:
        return True


def _wait_closed(sockets: list[socket.socket], count: int, timeout: float) -> None:
    """Wait until ``count`` of ``sockets`` were closed by the listener; fail after ``timeout`` seconds."""
    started, closed = time.monotonic(), set()
    while len(closed) < count:
        assert time.monotonic() - started < timeout, f"only {len(closed)} of {count} connections closed"
        readable, _, _ = select.select([s for s in sockets if s not in closed], [], [], 0.05)
        closed.update(s for s in readable if _closed(s))


@pytest.mark.integration
def test_idle_connections_from_one_address_cannot_lock_out_an_allowed_peer(tmp_path: Path) -> None:
    acse_timeout = 3.0
    with Running(tmp_path, peers=(DicomPeer("STORESCU", "127.0.0.2", 104),), acse_timeout=acse_timeout,
                 max_pending_per_host=2, max_associations=8) as node:
        idle = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(8)]  # as many as associations
        try:
            opened = time.monotonic()
            _wait_closed(idle, 6, timeout=acse_timeout / 2)  # beyond the cap: closed at once
            assert sum(1 for s in idle if select.select([s], [], [], 0)[0]) == 6  # and the 2 within it still open
            ae = AE("STORESCU")
            ae.add_requested_context(Verification)
            ae.acse_timeout = ae.network_timeout = 5
            assoc = ae.associate("127.0.0.1", node.port, ae_title="PROGEMU", bind_address=("127.0.0.2", 0))
            assert assoc.is_established, "the allowed peer was locked out"
            assert time.monotonic() - opened < acse_timeout  # while the idle connections were still held
            assert assoc.send_c_echo().Status == 0
            assoc.release()
            _wait_closed(idle, 8, timeout=acse_timeout + 5)  # the 2 pending ones: dropped after the ACSE timeout
        finally:
            for s in idle:
                s.close()


@pytest.mark.integration
def test_a_silent_tls_client_does_not_stall_the_listener(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    with Running(tmp_path, tls_cert=cert, tls_key=key, acse_timeout=30.0) as node:
        silent = socket.create_connection(("127.0.0.1", node.port))  # connects, never says ClientHello
        try:
            client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
            ae = AE("STORESCU")
            ae.add_requested_context(Verification)
            ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 5  # the TLS handshake included
            assoc = ae.associate("127.0.0.1", node.port, ae_title="PROGEMU", tls_args=(client, "127.0.0.1"))
            assert assoc.is_established
            assoc.release()
        finally:
            silent.close()


def _p_data_tf(context_id: int, fragment: bytes, control: int = 0x00) -> bytes:
    """One P-DATA-TF PDU with one PDV (PS3.8 9.3.5): control 0x00 is a dataset fragment, not the last."""
    item = struct.pack(">LBB", len(fragment) + 2, context_id, control) + fragment
    return struct.pack(">BBL", 0x04, 0x00, len(item)) + item


@pytest.mark.integration
def test_a_pdu_longer_than_the_advertised_maximum_aborts_the_association(tmp_path: Path) -> None:
    with Running(tmp_path, max_pdu_bytes=16_384) as node:
        ae = AE("STORESCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="PROGEMU")
        assert assoc.is_established
        assert assoc.acceptor.maximum_length == 16_384
        [context] = assoc.accepted_contexts
        raw = assoc.dul.socket.socket
        raw.sendall(_p_data_tf(context.context_id, b"\x00" * 16_384))  # fits; the PDV header is the allowance
        raw.sendall(_p_data_tf(context.context_id, b"\x00" * 65_536))  # four times what we advertised
        wait_for(lambda: assoc.is_aborted, 5, "the listener to abort the association")


@pytest.mark.integration
def test_an_oversized_association_request_is_aborted_before_its_body_is_read(tmp_path: Path) -> None:
    with Running(tmp_path) as node, socket.create_connection(("127.0.0.1", node.port)) as raw:
        raw.sendall(struct.pack(">BBL", 0x01, 0x00, 2**30) + b"\x00" * 1024)  # announces a 1 GiB A-ASSOCIATE-RQ
        raw.settimeout(5)
        assert raw.recv(1) == b"\x07"  # an A-ABORT PDU, at once


def test_pdu_framing_checks_each_header_however_the_bytes_arrive() -> None:
    last = _p_data_tf(1, b"y" * 2000)  # over the limit of 1000 + PDV_HEADER_ALLOWANCE
    stream = _p_data_tf(1, b"x" * 900) + struct.pack(">BBL", 0x05, 0, 4) + bytes(4) + last  # + an A-RELEASE-RQ
    header_end = len(stream) - len(last) + 6
    for chunk_size in (1, 5, 7, 4096):
        framing = PduFraming("192.0.2.1", max_data_pdu=1000)
        fed = 0
        with pytest.raises(OversizedPDUError):
            for start in range(0, len(stream), chunk_size):
                framing.feed(stream[start:start + chunk_size])
                fed += chunk_size
        assert fed < header_end <= fed + chunk_size  # refused in the bytes that complete its header, not later
    assert framing.limit(0x01) == CONTROL_PDU_MAX
    assert PduFraming("192.0.2.1", max_data_pdu=0).limit(0x04) == 2**32 - 1  # 0: unlimited, as advertised


@pytest.mark.integration
def test_a_full_spool_still_answers_echo_and_refuses_a_small_store_with_a_status(tmp_path: Path) -> None:
    with Running(tmp_path, max_bytes=1) as node:
        ae = AE("STORESCU")
        ae.add_requested_context(Verification)
        ds = _image()
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="PROGEMU")
        assert assoc.is_established
        try:
            assert assoc.send_c_echo().Status == 0
            assert assoc.send_c_store(ds).Status == OUT_OF_RESOURCES
        finally:
            assoc.release()


@pytest.mark.integration
def test_a_message_that_never_ends_is_aborted_once_it_outgrows_the_spools_room(tmp_path: Path) -> None:
    with Running(tmp_path, max_bytes=64 * 1024, max_pdu_bytes=16_384) as node:
        ae = AE("STORESCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="PROGEMU")
        assert assoc.is_established
        [context] = assoc.accepted_contexts
        raw = assoc.dul.socket.socket
        try:
            for _ in range(16):  # 256 KiB of dataset fragments, none the last, each after a command fragment
                raw.sendall(_p_data_tf(context.context_id, b"\x00" * 16, control=0x01)
                            + _p_data_tf(context.context_id, b"\x00" * 16_000))
        except OSError:  # the listener has closed the connection
            pass
        wait_for(lambda: assoc.is_aborted, 5, "the listener to abort the association")


@pytest.mark.integration
def test_a_dataset_larger_than_the_spools_room_is_refused_before_it_is_buffered(tmp_path: Path) -> None:
    ds = _image()
    ds.Rows, ds.Columns = 4096, 2048
    ds.PixelData = bytes(4096 * 2048 * 2)  # 16 MiB, against a spool with 256 KiB of room
    big = write(ds, tmp_path / "big.dcm")
    size = big.stat().st_size
    with Running(tmp_path, max_bytes=256 * 1024, max_pdu_bytes=16_384) as node:
        tracemalloc.start()
        try:
            _dcmtk("storescu", "-aet", "STORESCU", "-aec", "PROGEMU", "127.0.0.1", str(node.port), str(big))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert node.spool.used_bytes == 0
        echo = _dcmtk("echoscu", "-aet", "STORESCU", "-aec", "PROGEMU", "127.0.0.1", str(node.port))
        assert echo.returncode == 0, echo.stderr  # the listener goes on serving
    assert list((tmp_path / "spool").rglob("*.dcm")) == []
    # about 2 MiB are the association's own (pynetdicom copies every presentation context for it)
    assert peak < size / 4, f"{peak} bytes allocated at the peak while receiving {size} bytes"


@pytest.mark.integration
def test_every_association_accepted_or_refused_is_told_with_its_reason(tmp_path: Path) -> None:
    with Running(tmp_path) as node:
        _dcmtk("echoscu", "-aet", "STORESCU", "-aec", "PROGEMU", "127.0.0.1", str(node.port))
        _dcmtk("echoscu", "-aet", "INTRUDER", "-aec", "PROGEMU", "127.0.0.1", str(node.port))
        wait_for(lambda: len(node.attempts) == 2, 5, "both attempts told")
    assert node.attempts == [AssociationAttempt("STORESCU", "127.0.0.1", True),
                             AssociationAttempt("INTRUDER", "127.0.0.1", False, "not an allowed peer")]


@pytest.mark.integration
def test_a_client_certificate_must_name_the_ae_title_it_calls_as(tmp_path: Path) -> None:
    ca = TestCa.create(tmp_path / "pki")
    server, honest, other = (ca.issue("node", common_name="PROGEMU"), ca.issue("scu", common_name="STORESCU"),
                             ca.issue("modality", common_name="MODALITY"))
    with Running(tmp_path, tls_cert=server.cert, tls_key=server.key, tls_ca=ca.cert) as node:
        def echo(client: object) -> bool:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca.cert))
            context.load_cert_chain(client.cert, client.key)  # type: ignore[attr-defined]
            ae = AE("STORESCU")
            ae.add_requested_context(Verification)
            ae.acse_timeout = ae.network_timeout = 5
            assoc = ae.associate("127.0.0.1", node.port, ae_title="PROGEMU", tls_args=(context, "127.0.0.1"))
            established = assoc.is_established
            if established:
                assoc.release()
            return established

        assert echo(honest)
        assert not echo(other)  # a valid certificate of the CA, but for another AE title
    assert node.attempts[-1].reason == "its certificate does not name that AE title"


@pytest.mark.integration
def test_a_study_belongs_to_its_first_sender(tmp_path: Path) -> None:
    second = DicomPeer("OTHER", "127.0.0.1", 104)
    with Running(tmp_path, peers=(PEER, second)) as node:
        study = generate_uid()
        assert _pynetdicom_store(node.port, _image(study)) == 0
        planted = _image(study, SeriesInstanceUID=generate_uid())
        assert _pynetdicom_store(node.port, planted, calling="OTHER") == NOT_AUTHORIZED
        assert len(node.spool.instances(study)) == 1


@pytest.mark.integration
def test_a_connection_closed_before_associating_frees_its_slot_at_once(tmp_path: Path) -> None:
    """pynetdicom kept such a connection's association slot for the whole ACSE timeout: with one slot, a malformed
    request a second would have locked every peer out."""
    malformed = [b"\x01\x00" + struct.pack(">I", 20) + bytes(20),  # closed by the state machine
                 b"\xff\x00" + struct.pack(">I", 4) + b"junk",
                 _even_context_id(associate_rq())]  # kills pynetdicom's DUL thread (a ValueError in AE-6)
    with Running(tmp_path, max_associations=1, acse_timeout=10.0) as node:

        def echo_once_freed() -> None:
            wait_for(lambda: node.listener.associations == 0, 5, "the slot to be freed")  # not the ACSE timeout
            result = _dcmtk("echoscu", "-aet", "STORESCU", "-aec", "PROGEMU", "127.0.0.1", str(node.port))
            assert result.returncode == 0, result.stderr

        for payload in malformed:
            with socket.create_connection(("127.0.0.1", node.port), timeout=5) as sock:
                sock.sendall(payload)
                with contextlib.suppress(OSError):
                    sock.recv(1)  # the listener's answer (an A-ABORT), or its close: it has taken the PDU up
            echo_once_freed()
        # a reset in mid-PDU: pynetdicom's DUL stops on the error, outside its state machine
        with socket.create_connection(("127.0.0.1", node.port), timeout=5) as sock:
            sock.sendall(b"\x01\x00\x00")
            wait_for(lambda: node.listener.associations == 1, 5, "the listener to take the connection up")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        echo_once_freed()


def _even_context_id(request: bytes) -> bytes:
    """An A-ASSOCIATE-RQ whose first presentation context has an even ID, which PS3.8 9.3.2.2 forbids."""
    data, at = bytearray(request), 74  # the PDU header, protocol version, AE titles and reserved bytes (PS3.8 9.3.2)
    while data[at] != 0x20:  # skip the application context item to the first presentation context item
        at += 4 + struct.unpack(">H", data[at + 2:at + 4])[0]
    data[at + 4] = 2
    return bytes(data)
