"""The DICOM listener: a pynetdicom C-ECHO/C-STORE SCP with an allow-list, an atomic spool and completion.

Each piece is a small unit: ``admit`` decides associations, ``on_store`` writes what arrived,
and a poller hands complete studies to whoever started the listener. The listener never looks
at pixels and never decides what to do with a study.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # pynetdicom makes it at run time
from pynetdicom.status import Status

from dicom_io.completion import StudyArrival, StudyTracker
from dicom_io.peers import DicomPeer
from dicom_io.spool import Spool, SpoolFullError

if TYPE_CHECKING:
    from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger(__name__)

SUCCESS = Status.SUCCESS
OUT_OF_RESOURCES = 0xA700
"""C-STORE "Refused: Out of Resources" (PS3.4 B.2.3): pynetdicom has no named constant for it."""
CANNOT_UNDERSTAND = 0xC000
"""C-STORE "Error: Cannot Understand" (PS3.4 B.2.3), likewise unnamed."""
# A-ASSOCIATE-RJ: rejected-permanent, by the service user, calling AE title not recognised
_REJECT_UNKNOWN_CALLER = (0x01, 0x01, 0x03)


@dataclass(frozen=True)
class ListenerConfig:
    ae_title: str
    host: str
    port: int
    peers: tuple[DicomPeer, ...]
    max_associations: int = 8
    max_pdu_bytes: int = 262_144
    quiet_seconds: float = 10.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None


def _addresses(host: str) -> set[str]:
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None)}  # IPv4/IPv6: the address is a str
    except OSError:
        log.warning("peer host %s does not resolve; its calls are refused", host)
        return set()


def tls_server_context(cert: Path, key: Path, ca: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if ca:
        context.load_verify_locations(ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class Listener:
    """C-ECHO and C-STORE SCP; ``on_complete`` receives each complete study (from the poller thread)."""

    def __init__(self, config: ListenerConfig, spool: Spool, *,
                 on_complete: Callable[[StudyArrival], None],
                 is_own_output: Callable[[pydicom.Dataset], bool] = lambda ds: False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.spool = spool
        self.tracker = StudyTracker(config.quiet_seconds, clock)
        self.on_complete = on_complete
        self.is_own_output = is_own_output
        self._server: ThreadedAssociationServer | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        if not config.peers:
            log.warning("no DICOM peers configured: every association will be refused")

    # --- association ------------------------------------------------------------------------------

    def admit(self, calling_ae_title: str, address: str) -> bool:
        """A caller is admitted when its AE title is a configured peer and it calls from that peer's host."""
        title = calling_ae_title.strip()
        return any(peer.ae_title == title and address in _addresses(peer.host) for peer in self.config.peers)

    def _on_requested(self, event: evt.Event) -> None:
        request = event.assoc.requestor.primitive  # the A-ASSOCIATE-RQ: pynetdicom sets it before EVT_REQUESTED
        address = event.assoc.requestor.address
        if request is None:  # never expected; raising here would let pynetdicom go on to accept the association
            log.error("refused association from %s: pynetdicom passed on no A-ASSOCIATE-RQ", address)
        elif self.admit(request.calling_ae_title, address):
            return
        else:
            log.warning("refused association from AE %r at %s: not an allowed peer",
                        request.calling_ae_title.strip(), address)
        event.assoc.acse.send_reject(*_REJECT_UNKNOWN_CALLER)
        event.assoc.kill()  # as pynetdicom's own rejection does: lets the DUL flush the A-ASSOCIATE-RJ

    # --- services ---------------------------------------------------------------------------------

    def _on_echo(self, event: evt.Event) -> int:
        return SUCCESS

    def _on_store(self, event: evt.Event) -> int:
        try:
            dataset = event.dataset
            study, series, sop = dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID
            modality = str(dataset.get("Modality", ""))
        except Exception:  # noqa: BLE001 - a dataset we cannot parse gets a failure status, never success
            log.warning("C-STORE refused: the dataset could not be decoded")
            return CANNOT_UNDERSTAND
        if self.is_own_output(dataset):
            log.info("skipped one of our own output instances (never processed again)")
            return SUCCESS
        try:
            self.spool.write(study, series, sop, event.encoded_dataset())
        except ValueError:
            log.warning("C-STORE refused: the instance has invalid UIDs")
            return CANNOT_UNDERSTAND
        except SpoolFullError:
            log.error("C-STORE refused: the spool is full (%d bytes)", self.spool.max_bytes)
            return OUT_OF_RESOURCES
        except OSError as exc:
            log.error("C-STORE refused: the instance could not be written (%s)", exc.strerror or type(exc).__name__)
            return OUT_OF_RESOURCES
        self.tracker.record(study, series, modality, called=event.assoc.acceptor.ae_title.strip(),
                            calling=event.assoc.requestor.ae_title.strip())
        return SUCCESS

    # --- life cycle -------------------------------------------------------------------------------

    def _application_entity(self) -> AE:
        ae = AE(self.config.ae_title)
        ae.maximum_associations = self.config.max_associations
        ae.maximum_pdu_size = self.config.max_pdu_bytes
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is None:  # pynetdicom's storage contexts each name their SOP class
                raise RuntimeError("a pynetdicom storage presentation context has no abstract syntax")
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        return ae

    def start(self) -> tuple[str, int]:
        """Start serving in background threads; return the bound (host, port)."""
        ssl_context = None
        if self.config.tls_cert:
            if not self.config.tls_key:
                raise ValueError("tls_cert needs tls_key")
            ssl_context = tls_server_context(self.config.tls_cert, self.config.tls_key, self.config.tls_ca)
        handlers: list[evt.EventHandlerType] = [
            (evt.EVT_REQUESTED, self._on_requested), (evt.EVT_C_ECHO, self._on_echo), (evt.EVT_C_STORE, self._on_store)]
        server = self._application_entity().start_server(
            (self.config.host, self.config.port), block=False, evt_handlers=handlers, ssl_context=ssl_context)
        if server is None:  # start_server returns None only when it blocked until shutdown
            raise RuntimeError("pynetdicom returned no server from a non-blocking start")
        self._server = server
        self._stop.clear()
        self._poller = threading.Thread(target=self._poll, name="study-completion", daemon=True)
        self._poller.start()
        host, port = server.server_address[:2]
        log.info("DICOM listener %s on %s:%d%s", self.config.ae_title, host, port, " (TLS)" if ssl_context else "")
        return host, port

    @property
    def running(self) -> bool:
        return self._server is not None

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            self.flush()

    def flush(self) -> None:
        """Hand over every study that is complete now."""
        for arrival in self.tracker.complete():
            try:
                self.on_complete(arrival)
            except Exception:  # noqa: BLE001 - one bad hand-over must not stop the poller
                log.exception("handling a complete study failed")

    def expect(self, study_uid: str, series_uids: Iterable[str]) -> None:
        self.tracker.expect(study_uid, set(series_uids))

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._poller is not None:
            self._poller.join(timeout=5)
