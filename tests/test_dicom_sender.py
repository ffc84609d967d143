"""Outgoing C-STORE and C-ECHO against our own listener: pynetdicom's status categories decide success; with a
TLS context, the association is TLS, our client certificate sent and the peer's checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_io.listener import Listener, ListenerConfig
from dicom_io.peers import DicomPeer
from dicom_io.sender import DicomSendError, _succeeded, echo, store
from dicom_io.spool import Spool
from dicom_io.synthetic import build_synthetic_image
from dicom_io.tls import client_context
from tests.support.dicom_fixtures import chest_pixels, write
from tests.support.net import free_port
from tests.support.pki import TestCa


@pytest.mark.parametrize(("code", "succeeded"), [
    (0x0000, True),
    (0xB000, True), (0xB006, True), (0xB007, True),  # C-STORE warnings: stored, with coercion or discarded elements
    (0xA700, False), (0xA900, False), (0xC000, False), (0x0110, False),  # failures
    (0xFE00, False), (0xFF00, False),  # cancelled, or still pending: not done
])
def test_success_and_warnings_count_as_sent(code: int, succeeded: bool) -> None:
    assert _succeeded(code) is succeeded


@pytest.mark.integration
@pytest.mark.parametrize(("max_bytes", "stored"), [(10**8, True), (1000, False)])
def test_store_succeeds_or_raises_with_the_peers_status(tmp_path: Path, max_bytes: int, stored: bool) -> None:
    config = ListenerConfig(ae_title="PROGEMU", host="127.0.0.1", port=free_port(),
                            peers=(DicomPeer("SENDER", "127.0.0.1", 104),))
    listener = Listener(config, Spool(tmp_path / "spool", max_bytes), on_complete=lambda arrival: None)
    path = write(build_synthetic_image(chest_pixels()), tmp_path / "out.dcm")
    peer = DicomPeer("PROGEMU", "127.0.0.1", config.port)
    listener.start()
    try:
        echo(peer, calling_ae_title="SENDER")
        if stored:
            store([path], peer, calling_ae_title="SENDER")
        else:
            with pytest.raises(DicomSendError, match="0xA700"):
                store([path], peer, calling_ae_title="SENDER")
    finally:
        listener.stop()
    assert bool(list((tmp_path / "spool").rglob("*.dcm"))) is stored


@pytest.mark.integration
def test_store_and_echo_over_tls_with_a_client_certificate(tmp_path: Path) -> None:
    """A listener that requires a client certificate signed by its CA: only our TLS context gets through."""
    ca, stranger = TestCa.create(tmp_path / "pki"), TestCa.create(tmp_path / "other-pki", "stranger-ca")
    node, sender = ca.issue("node", common_name="PROGEMU"), ca.issue("sender", common_name="SENDER")
    config = ListenerConfig(ae_title="PROGEMU", host="127.0.0.1", port=free_port(),
                            peers=(DicomPeer("SENDER", "127.0.0.1", 104),),
                            tls_cert=node.cert, tls_key=node.key, tls_ca=ca.cert)
    listener = Listener(config, Spool(tmp_path / "spool", 10**8), on_complete=lambda arrival: None)
    path = write(build_synthetic_image(chest_pixels()), tmp_path / "out.dcm")
    peer = DicomPeer("PROGEMU", "127.0.0.1", config.port)
    listener.start()
    try:
        with pytest.raises(DicomSendError, match="failed"):  # plain TCP to a TLS listener
            echo(peer, calling_ae_title="SENDER")
        with pytest.raises(DicomSendError, match="over TLS failed"):  # a listener certificate we do not trust
            echo(peer, calling_ae_title="SENDER", tls=client_context(sender.cert, sender.key, stranger.cert))
        with pytest.raises(DicomSendError, match="over TLS failed"):  # no client certificate
            echo(peer, calling_ae_title="SENDER", tls=client_context(None, None, ca.cert))
        misnamed = DicomPeer("PROGEMU", "localhost", config.port)  # the certificate names 127.0.0.1 only
        with pytest.raises(DicomSendError, match="over TLS failed"):
            echo(misnamed, calling_ae_title="SENDER", tls=client_context(sender.cert, sender.key, ca.cert))
        assert not list((tmp_path / "spool").rglob("*.dcm"))
        tls = client_context(sender.cert, sender.key, ca.cert)
        echo(peer, calling_ae_title="SENDER", tls=tls)
        store([path], peer, calling_ae_title="SENDER", tls=tls)
    finally:
        listener.stop()
    assert len(list((tmp_path / "spool").rglob("*.dcm"))) == 1
