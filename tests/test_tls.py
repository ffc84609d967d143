"""dicom_io.tls: the client context of outgoing associations, and the tie of a caller's certificate to its AE title.

The tie is checked on certificates as Python's ssl module reports them, then end to end: a real pynetdicom
TLS server that requires client certificates reads the caller's certificate in its EVT_REQUESTED handler,
where the listener's admission check runs.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at run time

from dicom_io.listener import tls_server_context
from dicom_io.tls import PeerCertificate, certified_names, certifies_ae_title, client_context, peer_certificate
from tests.support.pki import TestCa

PACS_CERT = {"subject": ((("countryName", "BE"),), (("commonName", "PACS"),)),
             "subjectAltName": (("DNS", "pacs.hospital.example"), ("DNS", "PACS_B"), ("IP Address", "10.0.0.5"))}


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return TestCa.create(tmp_path_factory.mktemp("pki"))


def test_certified_names_are_the_common_names_and_dns_alt_names() -> None:
    assert certified_names(PACS_CERT) == {"PACS", "pacs.hospital.example", "PACS_B"}
    assert certified_names({}) == set()


@pytest.mark.parametrize(("certificate", "ae_title", "certified"), [
    pytest.param(PACS_CERT, "PACS", True, id="common-name"),
    pytest.param(PACS_CERT, "PACS  ", True, id="padded-ae-title"),
    pytest.param(PACS_CERT, "PACS_B", True, id="dns-alt-name"),
    pytest.param(PACS_CERT, "MODALITY", False, id="another-ae"),
    pytest.param(PACS_CERT, "pacs", False, id="another-case"),
    pytest.param(PACS_CERT, "10.0.0.5", False, id="ip-alt-name-is-no-ae-title"),
    pytest.param(PACS_CERT, "BE", False, id="another-subject-field"),
    pytest.param(PACS_CERT, "", False, id="empty-ae-title"),
    pytest.param({}, "PACS", False, id="unverified-certificate"),
    pytest.param(None, "PACS", False, id="no-certificate"),
])
def test_certifies_ae_title(certificate: dict | None, ae_title: str, certified: bool) -> None:
    assert certifies_ae_title(certificate, ae_title) is certified


def test_client_context_verifies_the_peer_and_carries_our_certificate(ca: TestCa) -> None:
    node = ca.issue("node", common_name="PROGEMU")
    context = client_context(node.cert, node.key, ca.cert)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "progemu-test-ca"),),)]
    assert client_context(None, None, ca.cert).verify_mode == ssl.CERT_REQUIRED


def test_client_context_refuses_what_it_cannot_load(ca: TestCa, tmp_path: Path) -> None:
    node = ca.issue("node-lone", common_name="PROGEMU")
    with pytest.raises(ValueError, match="both tls_cert and tls_key"):
        client_context(node.cert, None, ca.cert)
    with pytest.raises(ValueError, match=f"the certificate {tmp_path / 'missing.pem'} .*No such file"):
        client_context(tmp_path / "missing.pem", node.key, ca.cert)
    with pytest.raises(ValueError, match=f"the CA certificates {tmp_path / 'missing.pem'}: No such file"):
        client_context(node.cert, node.key, tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ValueError, match="junk.pem"):
        client_context(tmp_path / "junk.pem", node.key, ca.cert)
    with pytest.raises(ValueError, match="KEY_VALUES_MISMATCH"):
        client_context(node.cert, ca.key, ca.cert)


@pytest.fixture
def tls_server(ca: TestCa) -> Iterator[tuple[int, list]]:
    """A pynetdicom TLS server requiring client certificates; records, per association, (calling AE, certificate)."""
    server_cert = ca.issue("server", common_name="NODE")
    seen: list[tuple[str, PeerCertificate | None]] = []

    def on_requested(event: evt.Event) -> None:
        # the A-ASSOCIATE-RQ, as the listener reads it: requestor.ae_title is set only after acceptance
        request = event.assoc.requestor.primitive
        assert request is not None
        seen.append((request.calling_ae_title, peer_certificate(event.assoc)))

    ae = AE("NODE")
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_REQUESTED, on_requested)],
                             ssl_context=tls_server_context(server_cert.cert, server_cert.key, ca.cert))
    assert server is not None
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()


def _echo(port: int, calling: str, context: ssl.SSLContext | None) -> bool:
    ae = AE(calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title="NODE", tls_args=(context, "127.0.0.1") if context else None)
    established = assoc.is_established
    if established:
        assoc.release()
    return established


@pytest.mark.integration
def test_the_callers_certificate_is_read_where_associations_are_admitted(ca: TestCa,
                                                                         tls_server: tuple[int, list]) -> None:
    port, seen = tls_server
    pacs = ca.issue("pacs", common_name="PACS", alt_names=("DNS:PACS_B",))
    context = client_context(pacs.cert, pacs.key, ca.cert)
    assert _echo(port, "PACS", context) and _echo(port, "PACS_B", context) and _echo(port, "MODALITY", context)
    assert [(title, certifies_ae_title(certificate, title)) for title, certificate in seen] == [
        ("PACS", True), ("PACS_B", True), ("MODALITY", False)], "the certificate of PACS must not let it be MODALITY"


@pytest.mark.integration
def test_without_tls_there_is_no_certificate(tmp_path: Path) -> None:
    seen: list[PeerCertificate | None] = []
    ae = AE("NODE")
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
        (evt.EVT_REQUESTED, lambda event: seen.append(peer_certificate(event.assoc)))])
    assert server is not None
    try:
        assert _echo(server.server_address[1], "PACS", None)
    finally:
        server.shutdown()
    assert seen == [None] and not certifies_ae_title(seen[0], "PACS")
