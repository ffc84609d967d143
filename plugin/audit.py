"""The audit trail: who sent, asked for, read and received which study, kept so that an edit shows.

Why a chain: an auditor must be able to show which peer sent a study, who asked for a counterfactual of it and
where the results went, and that nobody changed that record afterwards. Each record is one JSON line of
``data_dir/audit.log`` carrying a sequence number and the SHA-256 of the record before it (``prev``); its own
``hash`` covers its canonical JSON. :meth:`AuditTrail.verify` walks the chain and names the first record that was
edited, deleted, reordered or cut short. What a chain cannot show on its own: records cut off the end (what is
left is still a valid chain), or a whole tail rewritten and re-hashed from some record on. Against both, note the
head hash that ``progemu audit verify`` prints, or export the trail (below) to a collector the node cannot rewrite.

Records hold UIDs, AE titles, addresses, API client names, job ids and error reasons (which never name the
patient); never patient names, IDs or birth dates, nor the hypothesis. Each event admits only its own fields.

Export, the IHE ATNA way: with ``audit_syslog`` set, each record is also sent as a DICOM audit message
(PS3.15 A.5) inside an RFC 5424 syslog message, over UDP (RFC 5426) or TCP with octet-counting framing
(RFC 6587), from a background thread: a slow or absent collector never holds up the node, and a message that
cannot be sent is dropped with a warning (the local trail keeps it). The header is written here, not by a
library: the RFC 5424 handlers on PyPI are logging handlers, unmaintained since 2019 (rfc5424-logging-handler
also pulls in pytz and tzlocal, connects in its constructor and reports send failures through
``Handler.handleError``'s traceback), and the header is one line.

============================  ============================================  ======
event                         DICOM audit message (EventID, EventTypeCode)  action
============================  ============================================  ======
application-started/-stopped  110100 Application Activity, 110120/110121    E
association-accepted          110114 User Authentication, 110122 Login      E
association-refused           110113 Security Alert, 110126 Node Auth.      E
study-received                110104 DICOM Instances Transferred            C
job-requested                 110109 Order Record                           C
job-finished                  110103 DICOM Instances Accessed (created)     C
results-read                  110103 DICOM Instances Accessed               R
results-delivered             110104 Instances Transferred (dicom), 110106  R
                              Export (fhir)
audit-log-used                110101 Audit Log Used                         R
============================  ============================================  ======

The messages carry no Patient participant object, which PS3.15 asks for in 110104, 110103 and 110109: the trail
holds no patient data by design; the Study Instance UID links each message to the study.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import errno
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import queue
import select
import socket
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from dicom_io.peers import DicomPeer
from plugin.errors import UsageError

if TYPE_CHECKING:
    from plugin.config import Settings

log = logging.getLogger(__name__)

AUDIT_FILE = "audit.log"
"""The trail's name in ``data_dir``."""
GENESIS = "0" * 64
"""The ``prev`` of the first record."""


class AuditEvent(enum.StrEnum):
    APPLICATION_STARTED = "application-started"
    APPLICATION_STOPPED = "application-stopped"
    ASSOCIATION_ACCEPTED = "association-accepted"
    ASSOCIATION_REFUSED = "association-refused"
    STUDY_RECEIVED = "study-received"
    JOB_REQUESTED = "job-requested"
    JOB_FINISHED = "job-finished"
    RESULTS_READ = "results-read"
    RESULTS_DELIVERED = "results-delivered"
    AUDIT_LOG_USED = "audit-log-used"


EVENT_FIELDS: dict[AuditEvent, frozenset[str]] = {
    AuditEvent.APPLICATION_STARTED: frozenset({"pid"}),
    AuditEvent.APPLICATION_STOPPED: frozenset({"pid"}),
    AuditEvent.ASSOCIATION_ACCEPTED: frozenset({"calling_ae", "address"}),
    AuditEvent.ASSOCIATION_REFUSED: frozenset({"calling_ae", "address", "reason"}),
    AuditEvent.STUDY_RECEIVED: frozenset({"study_uid", "calling_ae", "instances"}),
    AuditEvent.JOB_REQUESTED: frozenset({"job_id", "study_uid", "client", "requester", "source"}),
    AuditEvent.JOB_FINISHED: frozenset({"job_id", "study_uid", "state", "reason"}),
    AuditEvent.RESULTS_READ: frozenset({"job_id", "study_uid", "client"}),
    AuditEvent.RESULTS_DELIVERED: frozenset({"job_id", "study_uid", "kind", "target", "reason"}),
    AuditEvent.AUDIT_LOG_USED: frozenset({"trail", "command", "intact", "records"}),
}
"""The only fields each event may carry: an allow-list, so that no patient data reaches the trail by accident."""


class Outcome(enum.StrEnum):
    """PS3.15 EventOutcomeIndicator, by name."""

    SUCCESS = "success"
    MINOR_FAILURE = "minor-failure"
    SERIOUS_FAILURE = "serious-failure"
    MAJOR_FAILURE = "major-failure"

    @property
    def code(self) -> str:
        return {"success": "0", "minor-failure": "4", "serious-failure": "8", "major-failure": "12"}[self.value]


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    time: str
    """UTC, ISO 8601 with microseconds and ``Z``."""
    event: str
    actor: str
    """Who acted: a calling AE title, an API client, this node's AE title, an OS user."""
    outcome: str
    fields: dict[str, Any]
    prev: str
    hash: str

    @property
    def timestamp(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.time)


def canonical(value: dict[str, Any]) -> bytes:
    """The bytes a hash covers: sorted keys, no spaces, UTF-8 (values are only strings, integers, booleans)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(content: dict[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in content.items() if k != "hash"})).hexdigest()


@dataclass(frozen=True)
class Break:
    """Where the chain first breaks: the line of the file, the record's own number where readable, and why."""

    line: int
    seq: int | None
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}" + (f" (record {self.seq})" if self.seq is not None else "") + f": {self.reason}"


@dataclass(frozen=True)
class Verification:
    records: int
    """Records that chain correctly from the first (all of them when intact)."""
    head: str
    """Hash of the last record that chains correctly (GENESIS for an empty trail)."""
    broken: Break | None

    @property
    def intact(self) -> bool:
        return self.broken is None


class AuditTrail:
    """The node's audit trail in one file, safe to append to from many threads and processes at once.

    Each append takes an exclusive ``flock`` on its own descriptor of the file (O_APPEND, created 0600), reads the
    last record's hash and number, writes one line and fsyncs before releasing the lock. Failing to write a record
    is logged and never raised: the node goes on serving (see the module docstring).
    """

    def __init__(self, path: Path, *, source_id: str, exporter: SyslogExporter | None = None) -> None:
        self.path = path
        self.source_id = source_id
        """AuditSourceID of the export and actor of the node's own actions: our AE title."""
        self.exporter = exporter

    @classmethod
    def from_settings(cls, config: Settings) -> AuditTrail:
        exporter = SyslogExporter(config.audit_syslog, source_id=config.ae_title) if config.audit_syslog else None
        return cls(config.data_dir / AUDIT_FILE, source_id=config.ae_title, exporter=exporter)

    # --- writing ----------------------------------------------------------------------------------

    def record(self, event: AuditEvent, *, actor: str, outcome: Outcome = Outcome.SUCCESS,
               **fields: str | int | bool | None) -> AuditRecord | None:
        """Append one record (fields that are None are left out); None when it could not be written."""
        event = AuditEvent(event)
        unknown = set(fields) - EVENT_FIELDS[event]
        if unknown:
            raise ValueError(f"{event} records no field {', '.join(sorted(unknown))}")
        values = {name: value for name, value in fields.items() if value is not None}
        if any(not isinstance(value, str | int) for value in values.values()):  # bool is an int
            raise TypeError("audit fields are strings, integers or booleans")
        try:
            written = self._append(event, actor, Outcome(outcome), values)
        except OSError as exc:
            log.error("audit record %s could not be written to %s: %s", event, self.path,
                      exc.strerror or type(exc).__name__)
            return None
        if self.exporter is not None:
            try:
                self.exporter.submit(written)
            except Exception:  # noqa: BLE001 - e.g. no thread could be started: the export is a copy, the node goes on
                log.warning("audit record %s not handed to the syslog export", event, exc_info=True)
        return written

    def _append(self, event: AuditEvent, actor: str, outcome: Outcome, fields: dict[str, Any]) -> AuditRecord:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by close, also if this process dies
            last, ends_with_newline = _last_record(fd)
            content: dict[str, Any] = {
                "seq": last.seq + 1 if last else 1, "time": _now(), "event": str(event), "actor": actor,
                "outcome": str(outcome), "fields": fields, "prev": last.hash if last else GENESIS}
            written = AuditRecord(**content, hash=record_hash(content))
            # A line cut short by a crash stays as it is (verify reports it); the new record starts a line of its own.
            _write_all(fd, (b"" if ends_with_newline else b"\n") + canonical(asdict(written)) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_directory(self.path.parent)
        return written

    # --- the node's events, each with its own fields ------------------------------------------------

    def application_started(self) -> AuditRecord | None:
        return self.record(AuditEvent.APPLICATION_STARTED, actor=self.source_id, pid=os.getpid())

    def application_stopped(self) -> AuditRecord | None:
        return self.record(AuditEvent.APPLICATION_STOPPED, actor=self.source_id, pid=os.getpid())

    def association_accepted(self, calling_ae: str, address: str) -> AuditRecord | None:
        return self.record(AuditEvent.ASSOCIATION_ACCEPTED, actor=calling_ae, calling_ae=calling_ae, address=address)

    def association_refused(self, calling_ae: str, address: str, reason: str) -> AuditRecord | None:
        return self.record(AuditEvent.ASSOCIATION_REFUSED, actor=calling_ae, outcome=Outcome.MINOR_FAILURE,
                           calling_ae=calling_ae, address=address, reason=reason)

    def study_received(self, study_uid: str, calling_ae: str, instances: int) -> AuditRecord | None:
        return self.record(AuditEvent.STUDY_RECEIVED, actor=calling_ae, study_uid=study_uid, calling_ae=calling_ae,
                           instances=instances)

    def job_requested(self, job_id: str, study_uid: str, *, client: str | None, requester: str | None = None,
                      source: str = "api") -> AuditRecord | None:
        """``client``: the API client that asked (None for a routing rule: then the node itself asked)."""
        return self.record(AuditEvent.JOB_REQUESTED, actor=client or self.source_id, job_id=job_id,
                           study_uid=study_uid, client=client, requester=requester, source=source)

    def job_finished(self, job_id: str, study_uid: str, *, state: str, reason: str | None = None
                     ) -> AuditRecord | None:
        """``state``: the job's final state, ``done`` or ``failed``."""
        return self.record(AuditEvent.JOB_FINISHED, actor=self.source_id,
                           outcome=Outcome.SUCCESS if state == "done" else Outcome.SERIOUS_FAILURE,
                           job_id=job_id, study_uid=study_uid, state=state, reason=reason)

    def results_read(self, job_id: str, study_uid: str, *, client: str) -> AuditRecord | None:
        return self.record(AuditEvent.RESULTS_READ, actor=client, job_id=job_id, study_uid=study_uid, client=client)

    def results_delivered(self, job_id: str, study_uid: str, *, kind: str, target: str,
                          error: str | None = None) -> AuditRecord | None:
        """``kind``: ``dicom`` (``target`` AET@HOST:PORT) or ``fhir`` (the base URL); ``error``: why it never will."""
        return self.record(AuditEvent.RESULTS_DELIVERED, actor=self.source_id,
                           outcome=Outcome.SUCCESS if error is None else Outcome.SERIOUS_FAILURE,
                           job_id=job_id, study_uid=study_uid, kind=kind, target=target, reason=error)

    def audit_log_used(self, *, user: str, command: str, verification: Verification | None = None
                       ) -> AuditRecord | None:
        return self.record(AuditEvent.AUDIT_LOG_USED, actor=user,
                           outcome=Outcome.SUCCESS if verification is None or verification.intact
                           else Outcome.MAJOR_FAILURE, trail=str(self.path.resolve()), command=command,
                           intact=None if verification is None else verification.intact,
                           records=None if verification is None else verification.records)

    # --- reading ----------------------------------------------------------------------------------

    def records(self) -> Iterator[AuditRecord]:
        """The records in file order; lines that are not records are skipped (``verify`` reports them)."""
        for _, raw in self._lines():
            parsed = _parse(raw)
            if parsed is not None:
                yield parsed

    def verify(self) -> Verification:
        """Walk the chain from the first record; stop at the first that does not follow from the one before.

        Raises FileNotFoundError when there is no trail (a deleted trail is not an empty one).
        """
        if not self.path.exists():
            raise FileNotFoundError(errno.ENOENT, "no audit trail", str(self.path))
        head, count = GENESIS, 0
        for number, raw in self._lines():
            found = _parse(raw)
            if found is None or not raw.endswith(b"\n"):
                return Verification(count, head, Break(number, found.seq if found else None,
                                                       "not a complete audit record (edited, or a write cut short)"))
            expected = count + 1
            if found.hash != record_hash(asdict(found)):
                reason = "edited: its hash does not match its content"
            elif found.seq < expected:
                reason = f"out of order or repeated: expected record {expected}"
            elif found.seq > expected:
                missing = f"record {expected}" if found.seq == expected + 1 else \
                    f"records {expected} to {found.seq - 1}"
                reason = (f"out of order: record {expected} comes later in the file"
                          if self._has_later(number, expected) else f"{missing} deleted")
            elif found.prev != head:
                reason = (f"does not follow record {count}: that record was edited and re-hashed, or replaced"
                          if count else "does not start the chain: records before it were removed and renumbered")
            else:
                head, count = found.hash, expected
                continue
            return Verification(count, head, Break(number, found.seq, reason))
        return Verification(count, head, None)

    def _lines(self) -> Iterator[tuple[int, bytes]]:
        with self.path.open("rb") as lines:
            yield from enumerate(lines, start=1)

    def _has_later(self, after_line: int, seq: int) -> bool:
        return any(number > after_line and (found := _parse(raw)) is not None and found.seq == seq
                   for number, raw in self._lines())

    def close(self, timeout: float = 5.0) -> None:
        """Send what the exporter still holds (at most ``timeout`` seconds) and stop it."""
        if self.exporter is not None:
            self.exporter.close(timeout)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _parse(raw: bytes) -> AuditRecord | None:
    try:
        content = json.loads(raw)
        found = AuditRecord(**content)
    except (ValueError, TypeError):
        return None
    valid = (isinstance(found.seq, int) and isinstance(found.hash, str) and isinstance(found.prev, str)
             and isinstance(found.fields, dict))
    return found if valid else None


def _last_record(fd: int, chunk: int = 65_536) -> tuple[AuditRecord | None, bool]:
    """The last parseable record of the file, and whether the file ends a line; read backwards from the end."""
    end = os.fstat(fd).st_size
    if end == 0:
        return None, True
    ends_with_newline = os.pread(fd, 1, end - 1) == b"\n"
    tail = b""
    position = end
    while position > 0:
        start = max(0, position - chunk)
        tail = os.pread(fd, position - start, start) + tail
        position = start
        lines = tail.split(b"\n")
        complete = lines if position == 0 else lines[1:]  # the first piece may be part of a longer line
        for line in reversed(complete):
            found = _parse(line) if line.strip() else None
            if found is not None:
                return found, ends_with_newline
        tail = lines[0] if position > 0 else b""
    return None, ends_with_newline


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- DICOM audit messages (PS3.15 A.5) ------------------------------------------------------------------

DCM = "DCM"


@dataclass(frozen=True)
class _Code:
    code: str
    meaning: str
    system: str = DCM

    def element(self, parent: ET.Element, tag: str) -> ET.Element:
        return ET.SubElement(parent, tag, {"csd-code": self.code, "codeSystemName": self.system,
                                           "originalText": self.meaning})


APPLICATION_ACTIVITY = _Code("110100", "Application Activity")
AUDIT_LOG_USED = _Code("110101", "Audit Log Used")
INSTANCES_ACCESSED = _Code("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = _Code("110104", "DICOM Instances Transferred")
EXPORT = _Code("110106", "Export")
ORDER_RECORD = _Code("110109", "Order Record")
SECURITY_ALERT = _Code("110113", "Security Alert")
USER_AUTHENTICATION = _Code("110114", "User Authentication")
APPLICATION_START = _Code("110120", "Application Start")
APPLICATION_STOP = _Code("110121", "Application Stop")
LOGIN = _Code("110122", "Login")
NODE_AUTHENTICATION = _Code("110126", "Node Authentication")
APPLICATION = _Code("110150", "Application")
SOURCE = _Code("110153", "Source Role ID")
DESTINATION = _Code("110152", "Destination Role ID")
STUDY_INSTANCE_UID = _Code("110180", "Study Instance UID")
JOB = _Code("job", "ProgEmu counterfactual job", "99PROGEMU")
URI = _Code("12", "URI", "RFC-3881")
APPLICATION_SERVER = _Code("4", "Application Server Process or Thread")

_EVENTS: dict[str, tuple[_Code, _Code | None, str]] = {
    AuditEvent.APPLICATION_STARTED: (APPLICATION_ACTIVITY, APPLICATION_START, "E"),
    AuditEvent.APPLICATION_STOPPED: (APPLICATION_ACTIVITY, APPLICATION_STOP, "E"),
    AuditEvent.ASSOCIATION_ACCEPTED: (USER_AUTHENTICATION, LOGIN, "E"),
    AuditEvent.ASSOCIATION_REFUSED: (SECURITY_ALERT, NODE_AUTHENTICATION, "E"),
    AuditEvent.STUDY_RECEIVED: (INSTANCES_TRANSFERRED, None, "C"),
    AuditEvent.JOB_REQUESTED: (ORDER_RECORD, None, "C"),
    AuditEvent.JOB_FINISHED: (INSTANCES_ACCESSED, None, "C"),
    AuditEvent.RESULTS_READ: (INSTANCES_ACCESSED, None, "R"),
    AuditEvent.RESULTS_DELIVERED: (INSTANCES_TRANSFERRED, None, "R"),
    AuditEvent.AUDIT_LOG_USED: (AUDIT_LOG_USED, None, "R"),
}


def audit_message(record: AuditRecord, *, source_id: str, host: str) -> str:
    """The record as a DICOM audit message (XML, PS3.15 A.5.1); ``host``: this node's network access point."""
    event_id, type_code, action = _EVENTS[record.event]
    fields = record.fields
    if record.event == AuditEvent.RESULTS_DELIVERED and fields.get("kind") == "fhir":
        event_id = EXPORT
    root = ET.Element("AuditMessage")
    identification = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": action, "EventDateTime": record.time, "EventOutcomeIndicator": Outcome(record.outcome).code})
    event_id.element(identification, "EventID")
    if type_code is not None:
        type_code.element(identification, "EventTypeCode")
    if fields.get("reason"):
        ET.SubElement(identification, "EventOutcomeDescription").text = str(fields["reason"])
    for participant in _participants(record, source_id, host):
        _participant(root, *participant)
    source = ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": source_id})
    APPLICATION_SERVER.element(source, "AuditSourceTypeCode")
    if "study_uid" in fields:
        study = _object(root, str(fields["study_uid"]), STUDY_INSTANCE_UID, role="3")  # 3: report (a study)
        if "instances" in fields:
            ET.SubElement(study, "ParticipantObjectDetail", {
                "type": "NumberOfInstances", "value": base64.b64encode(str(fields["instances"]).encode()).decode()})
    if "job_id" in fields:
        _object(root, str(fields["job_id"]), JOB, role="20")  # 20: job
    if "trail" in fields:
        _object(root, Path(str(fields["trail"])).as_uri(), URI, role="13")  # 13: security resource
    return ET.tostring(root, encoding="unicode", xml_declaration=False)


_Participant = tuple[str, bool, _Code | None, str | None, str | None]
"""UserID, UserIsRequestor, RoleIDCode, network access point, UserName."""


def _participants(record: AuditRecord, source_id: str, host: str) -> list[_Participant]:
    fields, event = record.fields, record.event
    node: _Participant = (source_id, False, APPLICATION, host, None)
    if event in (AuditEvent.ASSOCIATION_ACCEPTED, AuditEvent.ASSOCIATION_REFUSED, AuditEvent.STUDY_RECEIVED):
        caller = str(fields.get("calling_ae", record.actor))
        return [(caller, True, SOURCE, fields.get("address"), None), (source_id, False, DESTINATION, host, None)]
    if event in (AuditEvent.JOB_REQUESTED, AuditEvent.RESULTS_READ) and fields.get("client"):
        return [(str(fields["client"]), True, None, None, fields.get("requester")), node]
    if event == AuditEvent.RESULTS_DELIVERED:
        target = str(fields.get("target", ""))
        address: str | None = None
        if fields.get("kind") == "dicom":
            try:
                peer = DicomPeer.parse(target)
                target, address = peer.ae_title, peer.host
            except ValueError:
                pass
        return [(source_id, True, SOURCE, host, None), (target, False, DESTINATION, address, None)]
    if event == AuditEvent.AUDIT_LOG_USED:
        return [(record.actor, True, None, host, None), node]
    return [(source_id, True, APPLICATION, host, None)]


def _participant(root: ET.Element, user_id: str, requestor: bool, role: _Code | None, address: str | None,
                 user_name: str | None) -> None:
    attributes = {"UserID": user_id, "UserIsRequestor": "true" if requestor else "false"}
    if user_name:
        attributes["UserName"] = user_name
    if address:
        attributes |= {"NetworkAccessPointID": address, "NetworkAccessPointTypeCode": "2" if _is_ip(address) else "1"}
    participant = ET.SubElement(root, "ActiveParticipant", attributes)
    if role is not None:
        role.element(participant, "RoleIDCode")


def _object(root: ET.Element, object_id: str, id_type: _Code, *, role: str) -> ET.Element:
    found = ET.SubElement(root, "ParticipantObjectIdentification", {
        "ParticipantObjectID": object_id, "ParticipantObjectTypeCode": "2", "ParticipantObjectTypeCodeRole": role})
    id_type.element(found, "ParticipantObjectIDTypeCode")
    return found


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


# --- syslog (RFC 5424 over UDP or TCP) -----------------------------------------------------------------

AUTHPRIV = 10
"""Facility of security/authorization messages, which IHE ITI-20 asks for."""
NOTICE, WARNING = 5, 4
MSGID = "IHE+RFC-3881"
"""The MSGID IHE ITI-20 gives audit messages, for historical reasons also for the DICOM schema."""
APP_NAME = "progemu"


@dataclass(frozen=True)
class SyslogTarget:
    transport: str
    """``udp`` or ``tcp``."""
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> SyslogTarget:
        """``udp://host:port`` or ``tcp://host:port``; a UsageError names what is wrong."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            port, parts = None, None
        if parts is None or parts.scheme not in ("udp", "tcp") or not parts.hostname or port is None:
            raise UsageError(f"audit_syslog must be udp://host:port or tcp://host:port, not {url!r}")
        return cls(parts.scheme, parts.hostname, port)

    def __str__(self) -> str:
        return f"{self.transport}://{self.host}:{self.port}"


def syslog_message(xml: str, *, time: str, outcome: str, hostname: str, procid: int) -> bytes:
    """One RFC 5424 message: the header, no structured data, the XML as MSG (UTF-8, no BOM: IHE ITI CP 477)."""
    severity = NOTICE if outcome == Outcome.SUCCESS else WARNING
    header = f"<{AUTHPRIV * 8 + severity}>1 {time} {_printable(hostname, 255)} {APP_NAME} {procid} {MSGID} -"
    return f"{header} <?xml version=\"1.0\" encoding=\"UTF-8\"?>{xml}".encode()


def _printable(value: str, limit: int) -> str:
    """RFC 5424 header fields are 1 to ``limit`` PRINTUSASCII characters, else the NILVALUE."""
    return "".join(c for c in value if 33 <= ord(c) <= 126)[:limit] or "-"


def octet_counted(message: bytes) -> bytes:
    """RFC 6587 3.4.1 framing for TCP: the length, a space, the message."""
    return b"%d %b" % (len(message), message)


class SyslogExporter:
    """Sends audit records to a syslog collector from a background thread; never raises into the node.

    A message that cannot be sent (collector down, queue full) is dropped: the local trail is the record, the
    export a copy. One warning when sending starts failing, one info line when it works again. A forked child
    (Celery's prefork workers) starts its own thread and connection.
    """

    def __init__(self, url: str, *, source_id: str, hostname: str | None = None, queue_size: int = 1000,
                 timeout: float = 5.0) -> None:
        self.target = SyslogTarget.parse(url)
        self.source_id = source_id
        self.hostname = hostname or socket.gethostname()
        self.timeout = timeout
        self._queue_size = queue_size
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._queue: queue.Queue[AuditRecord | None] = queue.Queue(queue_size)
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._failures = 0

    def submit(self, record: AuditRecord) -> None:
        self._ensure_thread()
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._failed(f"{self._queue_size} messages waiting")

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked child: the parent's thread is not here
                self._pid, self._socket = os.getpid(), None
                self._queue = queue.Queue(self._queue_size)
                self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            record = self._queue.get()
            try:
                if record is None:
                    return
                self._send(record)
            finally:
                self._queue.task_done()

    def _send(self, record: AuditRecord) -> None:
        try:
            xml = audit_message(record, source_id=self.source_id, host=self.hostname)
            message = syslog_message(xml, time=record.time, outcome=record.outcome, hostname=self.hostname,
                                     procid=os.getpid())
            if self.target.transport == "udp":
                self._send_udp(message)
            else:
                self._send_tcp(octet_counted(message))
        except OSError as exc:
            self._failed(exc.strerror or type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - whatever goes wrong, the node goes on
            self._failed(type(exc).__name__)
        else:
            if self._failures:
                log.info("audit messages reach %s again (%d not sent)", self.target, self._failures)
                self._failures = 0

    def _send_udp(self, message: bytes) -> None:
        family, kind, proto, _, address = socket.getaddrinfo(self.target.host, self.target.port,
                                                             type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as sender:
            sender.sendto(message, address)

    def _send_tcp(self, framed: bytes) -> None:
        if self._socket is not None and _closed_by_peer(self._socket):
            self._disconnect()  # else the message would go into a connection the collector has closed, and be lost
        if self._socket is None:
            self._socket = socket.create_connection((self.target.host, self.target.port), timeout=self.timeout)
        try:
            self._socket.sendall(framed)
        except OSError:
            self._disconnect()
            raise

    def _disconnect(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _failed(self, why: str) -> None:
        if not self._failures:
            log.warning("audit messages are not reaching %s (%s); the local audit trail keeps every record",
                        self.target, why)
        self._failures += 1

    def flush(self, timeout: float) -> bool:
        """Wait until every submitted message was sent or dropped; False when ``timeout`` passed first."""
        if self._pid != os.getpid():
            return True
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout: float = 5.0) -> None:
        if self._pid != os.getpid() or self._thread is None:
            return
        if self.flush(timeout):
            self._queue.put(None)
            self._thread.join(timeout)
        self._disconnect()
        self._pid = None


def _closed_by_peer(connection: socket.socket) -> bool:
    """A collector sends nothing: a readable socket means it closed the connection (or reset it)."""
    try:
        readable, _, _ = select.select([connection], [], [], 0)
        return bool(readable) and connection.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True
