"""Retrieval from the PACS: what is permanent (nothing to ask, nothing there) and what is transient (PACS down);
C-MOVE over TLS with ``outbound_tls``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove  # type: ignore[attr-defined]

from dicom_io.listener import tls_server_context
from dicom_io.tls import peer_certificate
from plugin.config import Settings
from plugin.errors import PacsNotConfigured, PermanentError, RetrievalError, TransientError
from plugin.retrieval import Retriever
from tests.support.net import free_port, skip_retry_backoff
from tests.support.pki import TestCa


def test_without_a_pacs_retrieval_is_a_permanent_failure(tmp_path: Path) -> None:
    retriever = Retriever(Settings(data_dir=tmp_path))
    assert not retriever.configured and retriever.exists("1.2.3") is None
    with pytest.raises(PacsNotConfigured, match="no PACS is configured") as raised:
        retriever.request("1.2.3")
    assert isinstance(raised.value, PermanentError) and not isinstance(raised.value, TransientError)


def test_a_pacs_that_does_not_answer_is_transient(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    skip_retry_backoff(monkeypatch)
    retriever = Retriever(Settings(data_dir=tmp_path, pacs_url=f"http://127.0.0.1:{free_port()}"))
    assert retriever.configured
    for attempt in (lambda: retriever.exists("1.2.3"), lambda: retriever.request("1.2.3")):
        with pytest.raises(RetrievalError) as raised:
            attempt()
        assert isinstance(raised.value, TransientError)


def test_a_dicom_only_pacs_that_is_down_is_transient(tmp_path: Path) -> None:
    retriever = Retriever(Settings(data_dir=tmp_path, pacs_dicom=f"PACS@127.0.0.1:{free_port()}"))
    with pytest.raises(RetrievalError):
        retriever.request("1.2.3", ["1.2.3.4"])


@pytest.fixture
def tls_pacs(tmp_path: Path) -> Iterator[SimpleNamespace]:
    """A C-MOVE SCP over TLS that requires a client certificate from its CA; it records each move it is asked
    for (the caller's certificate, the destination, the study and series) and sends nothing."""
    ca = TestCa.create(tmp_path / "pki")
    pacs, node = ca.issue("pacs", common_name="PACS"), ca.issue("node", common_name="PROGEMU")
    moves: list[dict] = []

    def on_move(event: evt.Event) -> Iterator:
        certificate = peer_certificate(event.assoc) or {}
        moves.append({"subject": certificate.get("subject"), "destination": event.move_destination,
                      "study": event.identifier.StudyInstanceUID, "series": event.identifier.SeriesInstanceUID})
        yield "127.0.0.1", 1  # the destination's address: never used, with no sub-operations
        yield 0

    ae = AE("PACS")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_MOVE, on_move)],
                             ssl_context=tls_server_context(pacs.cert, pacs.key, ca.cert))
    assert server is not None
    try:
        yield SimpleNamespace(ca=ca, node=node, moves=moves, peer=f"PACS@127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()


@pytest.mark.integration
def test_c_move_goes_over_tls_with_our_client_certificate(tmp_path: Path, tls_pacs: SimpleNamespace) -> None:
    settings = Settings(data_dir=tmp_path, pacs_dicom=tls_pacs.peer, ae_title="PROGEMU", outbound_tls=True,
                        tls_cert=tls_pacs.node.cert, tls_key=tls_pacs.node.key, tls_ca=tls_pacs.ca.cert)
    assert Retriever(settings).request("1.2.3", ["1.2.3.4"]) == ["1.2.3.4"]
    assert tls_pacs.moves == [{"subject": ((("commonName", "PROGEMU"),),), "destination": "PROGEMU",
                               "study": "1.2.3", "series": "1.2.3.4"}]
    plain = Retriever(settings.model_copy(update={"outbound_tls": False}))
    with pytest.raises(RetrievalError, match="failed"):
        plain.request("1.2.3", ["1.2.3.4"])
    assert len(tls_pacs.moves) == 1


def test_outbound_tls_whose_certificates_cannot_load_stops_the_node_at_start(tmp_path: Path) -> None:
    ca = TestCa.create(tmp_path / "pki")
    node = ca.issue("node", common_name="PROGEMU")
    base = Settings(data_dir=tmp_path, pacs_dicom="PACS@127.0.0.1:104", outbound_tls=True, tls_ca=ca.cert)
    for update, message in [({"tls_cert": node.cert}, "needs both tls_cert and tls_key"),
                            ({"tls_cert": tmp_path / "missing.pem", "tls_key": node.key}, "cannot load"),
                            ({"tls_ca": tmp_path / "missing-ca.pem"}, "cannot load")]:
        with pytest.raises(PermanentError, match=message):
            Retriever(base.model_copy(update=update))
    assert Retriever(base.model_copy(update={"tls_cert": node.cert, "tls_key": node.key})).configured
