"""The DICOM listener: a pynetdicom C-ECHO/C-STORE SCP with an allow-list, an atomic spool and completion.

Each piece is a small unit: ``admit`` decides associations, ``on_store`` writes what arrived,
and a poller hands complete studies to whoever started the listener. The listener never looks
at pixels and never decides what to do with a study.

Intake is bounded before anything is buffered: connections awaiting association are capped per
address and dropped after the ACSE timeout, each PDU's announced length is checked against what we
advertised before its body is read, and a dataset being received is refused (association aborted)
once it outgrows the spool's room.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pydicom
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # pynetdicom makes it at run time
from pynetdicom.status import Status
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from dicom_io.completion import StudyArrival, StudyTracker
from dicom_io.peers import DicomPeer
from dicom_io.spool import ForeignSenderError, Spool, SpoolFullError
from dicom_io.tls import certifies_ae_title, peer_certificate

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.presentation import PresentationContext

log = logging.getLogger(__name__)

SUCCESS = Status.SUCCESS
OUT_OF_RESOURCES = 0xA700
"""C-STORE "Refused: Out of Resources" (PS3.4 B.2.3): pynetdicom has no named constant for it."""
CANNOT_UNDERSTAND = 0xC000
"""C-STORE "Error: Cannot Understand" (PS3.4 B.2.3), likewise unnamed."""
NOT_AUTHORIZED = 0x0124
"""Refused: Not Authorized (PS3.7 C.4): the study belongs to another sender (the spool's first-sender rule)."""
# A-ASSOCIATE-RJ: rejected-permanent, by the service user, calling AE title not recognised
_REJECT_UNKNOWN_CALLER = (0x01, 0x01, 0x03)
_P_DATA_TF = 0x04
"""The PDU type that carries DIMSE messages; its length is what the advertised maximum PDU bounds (PS3.8 D.1)."""
PDV_HEADER_ALLOWANCE = 64
"""Bytes beyond our advertised maximum PDU still accepted in a P-DATA-TF PDU: some senders leave the 6-byte PDV
item header out of their count."""
MESSAGE_FLOOR = 64 * 1024
"""A DIMSE message this small is always received whole, whatever the spool's room: C-ECHO, and the command of a
C-STORE, are answered properly (Out of Resources) even by a full spool."""
CONTROL_PDU_MAX = 2**20
"""Largest A-ASSOCIATE-RQ (or other non-data PDU) read: a real one, offering every storage class in every
transfer syntax, stays well under this; it arrives before admission, so it must not be unbounded."""


@dataclass(frozen=True)
class ListenerConfig:
    ae_title: str
    host: str
    port: int
    peers: tuple[DicomPeer, ...]
    max_associations: int = 8
    max_pdu_bytes: int = 262_144
    """Advertised maximum P-DATA-TF PDU length, and enforced on what peers send (0: unlimited)."""
    quiet_seconds: float = 10.0
    acse_timeout: float = 10.0
    """Seconds a connection may take to request an association (and, with TLS, to complete its handshake)."""
    network_timeout: float = 60.0
    """Seconds an association may stay silent, or stall in the middle of a PDU, before it is aborted."""
    max_pending_per_host: int = 4
    """Connections one address may hold open before their association is accepted; more are closed at once."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None


def check_peers_resolve(peers: Iterable[DicomPeer]) -> None:
    """Raise RuntimeError naming the first peer whose host does not resolve: a start-up error, not a silent one."""
    for peer in peers:
        try:
            socket.getaddrinfo(peer.host, None)
        except (OSError, ValueError) as exc:  # ValueError: UnicodeError from the IDNA encoding of a bad name
            raise RuntimeError(f"DICOM peer {peer}: host {peer.host!r} does not resolve ({exc}); "
                               "correct the peer list or the name service") from exc


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


# --- connections: bounded before any association ------------------------------------------------------


class OversizedPDUError(Exception):
    """A peer announced a PDU longer than we accept.

    Deliberately not an OSError: pynetdicom's DUL then sends an A-ABORT and stops the association, where an
    OSError would read as a dropped connection.
    """


class PduFraming:
    """Follows PDU boundaries in the bytes a peer sends and refuses a PDU by its header, before its body is read."""

    def __init__(self, peer: str, max_data_pdu: int) -> None:
        self.peer = peer
        self.data_limit = max_data_pdu + PDV_HEADER_ALLOWANCE if max_data_pdu else 0xFFFFFFFF  # 0: unlimited
        self._header = bytearray()
        self._body_left = 0

    def limit(self, pdu_type: int) -> int:
        return self.data_limit if pdu_type == _P_DATA_TF else CONTROL_PDU_MAX

    def feed(self, data: bytes) -> None:
        """Account for ``data`` as the next received bytes; raise OversizedPDUError on a too long PDU."""
        position = 0
        while position < len(data):
            if self._body_left:
                step = min(self._body_left, len(data) - position)
                self._body_left -= step
                position += step
                continue
            take = data[position:position + 6 - len(self._header)]
            self._header += take
            position += len(take)
            if len(self._header) == 6:  # type (1), reserved (1), length (4, big endian): PS3.8 9.3.1
                pdu_type, _, length = struct.unpack(">BBL", self._header)
                self._header.clear()
                if length > self.limit(pdu_type):
                    log.warning("aborted the connection from %s: it announced a PDU of type 0x%02x and %d bytes, "
                                "more than the %d accepted", self.peer, pdu_type, length, self.limit(pdu_type))
                    raise OversizedPDUError(f"PDU of {length} bytes refused")
                self._body_left = length


class PendingConnections:
    """Connections from each address that have not yet been associated, at most ``per_host`` per address.

    Weakly held, so a connection that goes away unreleased stops counting by itself.
    """

    def __init__(self, per_host: int) -> None:
        self.per_host = per_host
        self._lock = threading.Lock()
        self._hosts: weakref.WeakKeyDictionary[socket.socket, str] = weakref.WeakKeyDictionary()

    def claim(self, connection: socket.socket, host: str) -> bool:
        with self._lock:
            if sum(1 for pending in self._hosts.values() if pending == host) >= self.per_host:
                return False
            self._hosts[connection] = host
            return True

    def release(self, connection: socket.socket) -> None:
        with self._lock:
            self._hosts.pop(connection, None)


class _Guarded:
    """What an accepted connection carries: its PDU framing check, and the pending slot it holds until associated."""

    framing: PduFraming | None = None
    awaiting: PendingConnections | None = None  # not "pending": SSLSocket.pending() is pynetdicom's

    def _received(self, data: bytes) -> bytes:
        if self.framing is not None:
            self.framing.feed(data)
        return data

    def _released(self) -> None:
        if self.awaiting is not None:
            self.awaiting.release(self)  # type: ignore[arg-type]  # only ever mixed into sockets


class _Connection(_Guarded, socket.socket):
    """A plain TCP connection from a peer."""

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        return self._received(super().recv(bufsize, flags))

    def close(self) -> None:
        self._released()
        super().close()


class _TlsConnection(_Guarded, ssl.SSLSocket):
    """A TLS connection from a peer: made by ``SSLContext.wrap_socket`` through ``sslsocket_class``."""

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        return self._received(super().recv(buflen, flags))

    def close(self) -> None:
        self._released()
        super().close()


def _buffered(assoc: Association) -> int:
    """Bytes of the DIMSE message that pynetdicom holds for ``assoc`` while it is being received."""
    message = assoc.dimse.message
    if message is None:
        return 0
    total = 0
    for buffer in (message.encoded_command_set, message.data_set):
        if buffer is not None:  # (a chunked dataset goes to a file instead; the listener does not ask for that)
            with buffer.getbuffer() as view:  # not tell(): decoding the command set moves its position
                total += view.nbytes
    return total


def _associated(assoc: Association, network_timeout: float) -> None:
    """An accepted association no longer counts as pending; from now on it may be silent for network_timeout."""
    connection = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    if isinstance(connection, _Guarded):
        connection._released()
        connection.settimeout(network_timeout)


def _end_acceptor_wait(assoc: Association) -> None:
    """Free an association that will never be established at once, instead of after the ACSE timeout.

    pynetdicom's acceptor waits up to the ACSE timeout for an A-ASSOCIATE-RQ primitive, even after its connection is
    gone, and meanwhile the association keeps one of the ``max_associations`` slots: a stream of malformed
    connections, one a second, kept every slot taken and locked every peer out. An empty hand-over ends that wait
    (pynetdicom reads it as the timeout it was waiting for: it kills the association and closes the connection).
    """
    if not assoc.is_established:
        assoc.dul.to_user_queue.put(None)  # type: ignore[arg-type]  # what receive_pdu returns on its timeout


class _EndingDUL(DULServiceProvider):
    """pynetdicom's DUL thread, which frees its association when it stops before one was established.

    The DUL stops on its own when a PDU cannot be decoded or the peer resets the connection (it sends an A-ABORT and
    returns), and dies when its state machine raises on a malformed PDU (an even presentation context ID: a
    ValueError in AE-6). Neither goes through the state machine's return to Sta1 that ``Listener._on_transition``
    watches, so without this each kept its slot for the ACSE timeout.
    """

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - a malformed PDU must cost its own association only
            log.warning("aborted a connection from %s: its PDU broke the DICOM upper layer (%s)",
                        self.assoc.requestor.address, type(exc).__name__)
        finally:
            _end_acceptor_wait(self.assoc)


class _RequestHandler(RequestHandler):
    """pynetdicom's handler, with the TLS handshake done here, in the connection's thread, within the ACSE timeout
    (pynetdicom does it in the accept loop, where one silent client would stall every other), and a DUL that frees
    its association when it stops early."""

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        # pynetdicom builds the DUL inside Association() and offers no factory for it; _EndingDUL only adds run()
        assoc.dul.__class__ = _EndingDUL
        return assoc


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded server, bounding connections before any association: at most ``pending_per_host``
    connections per address await association (more are closed at once), none waits longer than the ACSE
    timeout, and every PDU's length is checked before its body is read."""

    def __init__(self, ae: AE, address: tuple[str, int], ae_title: str, contexts: list[PresentationContext],
                 ssl_context: ssl.SSLContext | None = None, evt_handlers: list[evt.EventHandlerType] | None = None,
                 *, pending_per_host: int) -> None:
        self.pending = PendingConnections(pending_per_host)
        if ssl_context is not None:
            ssl_context.sslsocket_class = _TlsConnection
        super().__init__(ae, address, ae_title, contexts, ssl_context, evt_handlers, request_handler=_RequestHandler)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        if self.socket is None:
            raise OSError("the listening socket is closed")
        accepted, address = self.socket.accept()
        connection: _Connection | _TlsConnection
        if self.ssl_context is not None:  # the handshake is _RequestHandler's, in the connection's own thread
            connection = self.ssl_context.wrap_socket(  # type: ignore[assignment]  # sslsocket_class, see __init__
                accepted, server_side=True, do_handshake_on_connect=False)
        else:
            connection = _Connection(accepted.family, accepted.type, accepted.proto, fileno=accepted.detach())
        connection.settimeout(self.ae.acse_timeout)  # also bounds a peer that stalls inside a PDU before associating
        connection.framing = PduFraming(str(address[0]), self.ae.maximum_pdu_size)
        connection.awaiting = self.pending
        return connection, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = str(client_address[0])
        if self.pending.claim(request, host):
            return True
        log.warning("dropped a connection from %s: %d connections from it already await association",
                    host, self.pending.per_host)
        return False

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed before pynetdicom took it over (a TLS handshake): a line, not a traceback."""
        log.warning("connection from %s failed: %s", client_address[0], type(sys.exc_info()[1]).__name__)

    def shutdown(self) -> None:
        """Stop serving and close the socket (pynetdicom's own shutdown expects the AE to have started us)."""
        socketserver.BaseServer.shutdown(self)
        self.server_close()


@dataclass(frozen=True)
class AssociationAttempt:
    """Who asked to associate, from where, and whether they were let in: what an audit trail records."""

    calling_ae_title: str
    address: str
    accepted: bool
    reason: str | None = None


class Listener:
    """C-ECHO and C-STORE SCP; ``on_complete`` receives each complete study (from the poller thread) and
    ``on_association`` each association accepted or refused."""

    def __init__(self, config: ListenerConfig, spool: Spool, *,
                 on_complete: Callable[[StudyArrival], None],
                 on_association: Callable[[AssociationAttempt], None] = lambda attempt: None,
                 is_own_output: Callable[[pydicom.Dataset], bool] = lambda ds: False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.spool = spool
        self.on_association = on_association
        self.tracker = StudyTracker(config.quiet_seconds, clock)
        self.on_complete = on_complete
        self.is_own_output = is_own_output
        self._server: _Server | None = None
        self._refused: weakref.WeakSet[Association] = weakref.WeakSet()  # aborted by _on_pdu
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        if not config.peers:
            log.warning("no DICOM peers configured: every association will be refused")

    # --- association ------------------------------------------------------------------------------

    def admit(self, calling_ae_title: str, address: str) -> bool:
        """A caller is admitted when its AE title is a configured peer and it calls from that peer's host."""
        title = calling_ae_title.strip()
        return any(peer.ae_title == title and address in _addresses(peer.host) for peer in self.config.peers)

    def _certified(self, assoc: Association, calling_ae_title: str) -> bool:
        """With client certificates required (tls_ca), the caller's certificate must name the AE title it claims."""
        if not (self.config.tls_cert and self.config.tls_ca):
            return True
        return certifies_ae_title(peer_certificate(assoc), calling_ae_title)

    def _on_requested(self, event: evt.Event) -> None:
        # Fails closed: pynetdicom logs an exception raised here and goes on to accept the association.
        address = event.assoc.requestor.address
        caller, reason = "", "the admission check failed"
        try:
            request = event.assoc.requestor.primitive  # the A-ASSOCIATE-RQ: pynetdicom sets it before EVT_REQUESTED
            if request is None:  # never expected
                reason = "no A-ASSOCIATE-RQ"
                log.error("refused association from %s: pynetdicom passed on no A-ASSOCIATE-RQ", address)
            else:
                caller = request.calling_ae_title.strip()
                if not self.admit(caller, address):
                    reason = "not an allowed peer"
                elif not self._certified(event.assoc, caller):
                    reason = "its certificate does not name that AE title"
                else:
                    return
                log.warning("refused association from AE %r at %s: %s", caller, address, reason)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the caller is not admitted
            log.error("refused association from %s: the admission check failed (%s)", address, type(exc).__name__)
        self._tell(AssociationAttempt(caller, address, False, reason))
        event.assoc.acse.send_reject(*_REJECT_UNKNOWN_CALLER)
        event.assoc.kill()  # as pynetdicom's own rejection does: lets the DUL flush the A-ASSOCIATE-RJ

    def _on_transition(self, event: evt.Event) -> None:
        """A connection that closes before its association is established (its state machine back in Sta1, after a
        malformed PDU, an abort or our rejection) frees its slot at once: see :func:`_end_acceptor_wait`."""
        if event.next_state == "Sta1":
            _end_acceptor_wait(event.assoc)

    def _on_accepted(self, event: evt.Event) -> None:
        _associated(event.assoc, self.config.network_timeout)
        self._tell(AssociationAttempt(event.assoc.requestor.ae_title.strip(), event.assoc.requestor.address, True))

    def _on_rejected(self, event: evt.Event) -> None:
        """pynetdicom's own refusals (too many associations, no acceptable context); ours are told in _on_requested."""
        self._tell(AssociationAttempt(event.assoc.requestor.ae_title.strip(), event.assoc.requestor.address, False,
                                      "rejected by the DICOM stack"))

    def _tell(self, attempt: AssociationAttempt) -> None:
        try:
            self.on_association(attempt)
        except Exception:  # noqa: BLE001 - recording an association must never decide it
            log.exception("recording an association attempt failed")

    # --- intake -----------------------------------------------------------------------------------

    def _room(self) -> int:
        return self.spool.max_bytes - self.spool.used_bytes

    def _on_pdu(self, event: evt.Event) -> None:
        """Abort an association whose DIMSE message outgrows the spool's room, before pynetdicom has buffered it all.

        Runs in the association's DUL thread just before the P-DATA-TF PDU is handed to DIMSE, so what DIMSE holds
        is measured, not guessed. DIMSE has no way to refuse a C-STORE before its dataset is complete, hence the
        abort; a PDU that completes its dataset is let through, and ``_on_store`` answers Out of Resources.
        """
        pdu = event.pdu
        if not isinstance(pdu, P_DATA_TF) or event.assoc in self._refused:
            return
        try:
            values = [item.presentation_data_value or b"" for item in pdu.presentation_data_value_items]
            if any(value[0] & 0x03 == 0x02 for value in values if value):  # a dataset's last fragment (PS3.8 E.2)
                return
            incoming = sum(max(len(value) - 1, 0) for value in values)  # less each PDV's message control header
            if _buffered(event.assoc) + incoming <= max(self._room(), MESSAGE_FLOOR):
                return
            log.error("C-STORE refused: a message from %s outgrew the spool's room (%d of %d bytes used); "
                      "association aborted", event.assoc.requestor.address, self.spool.used_bytes, self.spool.max_bytes)
        except Exception as exc:  # noqa: BLE001 - fail closed: pynetdicom would log this and go on buffering
            log.error("aborted an association: checking the size of what it sent failed (%s)", type(exc).__name__)
        self._refused.add(event.assoc)  # the abort takes a moment; say so once
        event.assoc.abort()  # non-blocking inside an event handler: the DUL sends the A-ABORT

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
        calling = event.assoc.requestor.ae_title.strip()
        try:
            self.spool.write(study, series, sop, event.encoded_dataset(), calling_ae=calling,
                             called_ae=event.assoc.acceptor.ae_title.strip())
        except ValueError:
            log.warning("C-STORE refused: the instance has invalid UIDs")
            return CANNOT_UNDERSTAND
        except ForeignSenderError:
            log.warning("C-STORE refused: study %s belongs to another sender than AE %r", study, calling)
            return NOT_AUTHORIZED
        except SpoolFullError:
            log.error("C-STORE refused: the spool is full (%d bytes)", self.spool.max_bytes)
            return OUT_OF_RESOURCES
        except OSError as exc:
            log.error("C-STORE refused: the instance could not be written (%s)", exc.strerror or type(exc).__name__)
            return OUT_OF_RESOURCES
        self.tracker.record(study, series, modality, called=event.assoc.acceptor.ae_title.strip(), calling=calling)
        return SUCCESS

    # --- life cycle -------------------------------------------------------------------------------

    def _application_entity(self) -> AE:
        ae = AE(self.config.ae_title)
        ae.maximum_associations = self.config.max_associations
        ae.maximum_pdu_size = self.config.max_pdu_bytes
        ae.acse_timeout = self.config.acse_timeout
        ae.network_timeout = self.config.network_timeout
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is None:  # pynetdicom's storage contexts each name their SOP class
                raise RuntimeError("a pynetdicom storage presentation context has no abstract syntax")
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        return ae

    def start(self) -> tuple[str, int]:
        """Start serving in background threads; return the bound (host, port).

        Raises RuntimeError when a peer's host does not resolve: every call from it would be refused.
        """
        check_peers_resolve(self.config.peers)
        ssl_context = None
        if self.config.tls_cert:
            if not self.config.tls_key:
                raise ValueError("tls_cert needs tls_key")
            ssl_context = tls_server_context(self.config.tls_cert, self.config.tls_key, self.config.tls_ca)
        handlers: list[evt.EventHandlerType] = [
            (evt.EVT_REQUESTED, self._on_requested), (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected), (evt.EVT_FSM_TRANSITION, self._on_transition),
            (evt.EVT_PDU_RECV, self._on_pdu), (evt.EVT_C_ECHO, self._on_echo), (evt.EVT_C_STORE, self._on_store)]
        server = cast(_Server, self._application_entity().make_server(
            (self.config.host, self.config.port), ssl_context=ssl_context, evt_handlers=handlers, server_class=_Server,
            pending_per_host=self.config.max_pending_per_host))
        threading.Thread(target=server.serve_forever, name="dicom-listener", daemon=True).start()
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

    @property
    def associations(self) -> int:
        """Associations holding a slot now, established or still negotiating (at most ``max_associations``)."""
        return len(self._server.ae.active_associations) if self._server is not None else 0

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
