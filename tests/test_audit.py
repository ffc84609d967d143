"""The audit trail: a hash chain that shows edits, deletions and reordering; safe appends from many processes;
DICOM audit messages over real UDP and TCP syslog sockets; an export failure never stops the node; the CLI."""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import re
import socket
import stat
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from plugin.audit import (
    GENESIS,
    AuditEvent,
    AuditRecord,
    AuditTrail,
    Outcome,
    SyslogExporter,
    audit_message,
    record_hash,
)
from plugin.cli import audit as audit_cli
from plugin.config import Settings
from plugin.errors import UsageError
from tests.support.net import free_port, wait_for

STUDY = "1.2.826.0.1.3680043.8.498.1"
OTHER_STUDY = "1.2.826.0.1.3680043.8.498.2"
RFC5424 = re.compile(rb"^<(?P<pri>\d{1,3})>1 (?P<time>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) (?P<msgid>\S+) "
                     rb"(?P<sd>-|\[.*?\]) (?P<msg>.*)$", re.S)


def trail_at(tmp_path: Path, exporter: SyslogExporter | None = None) -> AuditTrail:
    return AuditTrail(tmp_path / "audit.log", source_id="PROGEMU", exporter=exporter)


def node_story(trail: AuditTrail) -> None:
    """What one pushed study and one API request leave behind: eight records."""
    trail.application_started()
    trail.association_accepted("MODALITY", "127.0.0.1")
    trail.study_received(STUDY, "MODALITY", instances=3)
    trail.job_requested("job-1", STUDY, client="ris", requester="dr-house")
    trail.job_finished("job-1", STUDY, state="done")
    trail.results_delivered("job-1", STUDY, kind="dicom", target="PACS@127.0.0.1:4242")
    trail.results_read("job-1", STUDY, client="ris")
    trail.association_refused("INTRUDER", "10.9.8.7", "not an allowed peer")


def lines(trail: AuditTrail) -> list[str]:
    return trail.path.read_text().splitlines(keepends=True)


# --- the chain ----------------------------------------------------------------------------------------

def test_records_chain_and_verify_intact(tmp_path: Path) -> None:
    trail = trail_at(tmp_path)
    node_story(trail)
    records = [json.loads(line) for line in lines(trail)]
    assert [r["seq"] for r in records] == list(range(1, 9))
    assert records[0]["prev"] == GENESIS
    assert all(r["prev"] == before["hash"] for before, r in zip(records, records[1:], strict=False))
    assert all(r["hash"] == record_hash(r) for r in records)
    assert records[2]["event"] == "study-received" and records[2]["actor"] == "MODALITY"
    assert records[2]["fields"] == {"study_uid": STUDY, "calling_ae": "MODALITY", "instances": 3}
    assert records[2]["time"].endswith("Z")
    assert records[-1]["outcome"] == "minor-failure"
    assert stat.S_IMODE(trail.path.stat().st_mode) == 0o600
    result = trail.verify()
    assert result.intact and result.records == 8 and result.head == records[-1]["hash"]


def test_only_an_events_own_fields_are_recorded(tmp_path: Path) -> None:
    """The allow-list keeps patient data out: a field an event does not name is refused, nothing is written."""
    trail = trail_at(tmp_path)
    with pytest.raises(ValueError, match="patient_name"):
        trail.record(AuditEvent.STUDY_RECEIVED, actor="MODALITY", study_uid=STUDY, patient_name="DOE^JANE")
    assert not trail.path.exists()


def test_an_edited_record_is_found(tmp_path: Path) -> None:
    trail = trail_at(tmp_path)
    node_story(trail)
    text = lines(trail)
    text[2] = text[2].replace(STUDY, OTHER_STUDY)
    trail.path.write_text("".join(text))
    result = trail.verify()
    assert result.broken is not None and (result.broken.line, result.broken.seq) == (3, 3)
    assert "edited" in result.broken.reason and result.records == 2


def test_an_edited_and_rehashed_record_breaks_the_next(tmp_path: Path) -> None:
    """A forger who recomputes the edited record's hash is caught by the next record's ``prev``."""
    trail = trail_at(tmp_path)
    node_story(trail)
    text = lines(trail)
    forged = json.loads(text[2]) | {"actor": "SOMEONE-ELSE"}
    forged["hash"] = record_hash(forged)
    text[2] = json.dumps(forged) + "\n"
    trail.path.write_text("".join(text))
    broken = trail.verify().broken
    assert broken is not None and broken.seq == 4 and "does not follow record 3" in broken.reason


def test_a_deleted_record_is_found(tmp_path: Path) -> None:
    trail = trail_at(tmp_path)
    node_story(trail)
    text = lines(trail)
    del text[3]
    trail.path.write_text("".join(text))
    broken = trail.verify().broken
    assert broken is not None and (broken.line, broken.seq) == (4, 5) and broken.reason == "record 4 deleted"


def test_swapped_records_are_found(tmp_path: Path) -> None:
    trail = trail_at(tmp_path)
    node_story(trail)
    text = lines(trail)
    text[4], text[5] = text[5], text[4]
    trail.path.write_text("".join(text))
    broken = trail.verify().broken
    assert broken is not None and (broken.line, broken.seq) == (5, 6)
    assert broken.reason == "out of order: record 5 comes later in the file"


def test_a_truncated_tail_still_chains_but_changes_the_head(tmp_path: Path) -> None:
    """The chain's limit: records cut off the end leave a valid chain; only the head an operator noted shows it."""
    trail = trail_at(tmp_path)
    node_story(trail)
    head = trail.verify().head
    trail.path.write_text("".join(lines(trail)[:-2]))
    result = trail.verify()
    assert result.intact and result.records == 6 and result.head != head


def test_a_record_cut_short_is_reported_and_the_next_append_starts_a_new_line(tmp_path: Path) -> None:
    trail = trail_at(tmp_path)
    node_story(trail)
    text = lines(trail)
    text[-1] = text[-1][:40]  # a crash in the middle of a write
    trail.path.write_text("".join(text))
    broken = trail.verify().broken
    assert broken is not None and broken.line == 8 and "cut short" in broken.reason
    appended = trail.job_finished("job-2", STUDY, state="failed", reason="the prior is not a chest radiograph")
    assert appended is not None and appended.seq == 8 and appended.prev == json.loads(text[6])["hash"]
    assert json.loads(lines(trail)[-1])["seq"] == 8  # a line of its own, after the cut one
    assert trail.verify().broken == broken


def test_verify_without_a_trail_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        trail_at(tmp_path).verify()


def test_a_write_failure_is_logged_and_the_node_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    trail = AuditTrail(blocker / "audit.log", source_id="PROGEMU")
    with caplog.at_level(logging.ERROR, logger="plugin.audit"):
        assert trail.association_accepted("MODALITY", "127.0.0.1") is None
    assert "could not be written" in caplog.text


def _append_many(path: str, count: int) -> None:
    trail = AuditTrail(Path(path), source_id="PROGEMU")
    threads = [threading.Thread(target=lambda: [trail.study_received(STUDY, f"AE{os.getpid()}", instances=i)
                                                 for i in range(count)]) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_appends_from_many_processes_and_threads_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_many, args=(str(path), 15)) for _ in range(4)]
    for worker in workers:
        worker.start()
    _append_many(str(path), 15)
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    result = AuditTrail(path, source_id="PROGEMU").verify()
    assert result.intact and result.records == 5 * 2 * 15


# --- DICOM audit messages over syslog -------------------------------------------------------------------

class UdpCollector:
    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(10)
        self.port = self.socket.getsockname()[1]

    def receive(self) -> bytes:
        return self.socket.recv(65_535)


class TcpCollector:
    """A syslog collector on loopback that reads octet-counted frames (RFC 6587 3.4.1) into ``messages``."""

    def __init__(self, port: int = 0) -> None:
        self.server = socket.create_server(("127.0.0.1", port))
        self.port = self.server.getsockname()[1]
        self.messages: list[bytes] = []
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            self.connections.append(connection)
            threading.Thread(target=self._read, args=(connection,), daemon=True).start()

    def _read(self, connection: socket.socket) -> None:
        stream = connection.makefile("rb")
        try:
            while True:
                length = b""
                while (char := stream.read(1)) != b" ":
                    if not char:
                        return
                    length += char
                self.messages.append(stream.read(int(length)))
        except (OSError, ValueError):
            return

    def close(self) -> None:
        self.server.close()
        for connection in self.connections:
            connection.close()


def parse(message: bytes) -> tuple[re.Match[bytes], ET.Element]:
    header = RFC5424.match(message)
    assert header is not None, message[:200]
    assert header["msg"].startswith(b"<?xml")  # MSG-ANY: no BOM (IHE ITI CP 477)
    return header, ET.fromstring(header["msg"])


def exporter(url: str) -> SyslogExporter:
    return SyslogExporter(url, source_id="PROGEMU", hostname="node.example.org")


def test_udp_export_sends_a_dicom_audit_message(tmp_path: Path) -> None:
    collector = UdpCollector()
    trail = trail_at(tmp_path, exporter(f"udp://127.0.0.1:{collector.port}"))
    try:
        sent = trail.study_received(STUDY, "MODALITY", instances=3)
        header, xml = parse(collector.receive())
    finally:
        trail.close()
        collector.socket.close()
    assert sent is not None
    assert int(header["pri"]) == 10 * 8 + 5  # security/authorization, notice
    assert header["time"].decode() == sent.time and header["host"] == b"node.example.org"
    assert (header["app"], header["procid"], header["msgid"], header["sd"]) == (
        b"progemu", str(os.getpid()).encode(), b"IHE+RFC-3881", b"-")
    assert xml.tag == "AuditMessage"
    event = xml.find("EventIdentification")
    assert event is not None and event.get("EventActionCode") == "C" and event.get("EventOutcomeIndicator") == "0"
    assert event.find("EventID").attrib == {"csd-code": "110104", "codeSystemName": "DCM",  # type: ignore[union-attr]
                                            "originalText": "DICOM Instances Transferred"}
    participants = {p.get("UserID"): p for p in xml.iter("ActiveParticipant")}
    assert participants["MODALITY"].get("UserIsRequestor") == "true"
    assert participants["PROGEMU"].find("RoleIDCode").get("csd-code") == "110152"  # type: ignore[union-attr]
    assert xml.find("AuditSourceIdentification").get("AuditSourceID") == "PROGEMU"  # type: ignore[union-attr]
    study = xml.find("ParticipantObjectIdentification")
    assert study is not None and study.get("ParticipantObjectID") == STUDY
    assert study.find("ParticipantObjectIDTypeCode").get("csd-code") == "110180"  # type: ignore[union-attr]


def test_tcp_export_frames_each_message_by_its_length(tmp_path: Path) -> None:
    collector = TcpCollector()
    trail = trail_at(tmp_path, exporter(f"tcp://127.0.0.1:{collector.port}"))
    try:
        trail.job_requested("job-1", STUDY, client="ris", requester="dr-house")
        trail.association_refused("INTRUDER", "10.9.8.7", "not an allowed peer")
        wait_for(lambda: len(collector.messages) == 2, 10, "two syslog messages")
    finally:
        trail.close()
        collector.close()
    (ordered, ordered_xml), (refused, refused_xml) = (parse(m) for m in collector.messages)
    assert int(ordered["pri"]) == 85 and int(refused["pri"]) == 84  # a failure is a warning
    assert ordered_xml.find("EventIdentification/EventID").get("csd-code") == "110109"  # type: ignore[union-attr]
    client = ordered_xml.find("ActiveParticipant")
    assert client is not None and (client.get("UserID"), client.get("UserName")) == ("ris", "dr-house")
    ids = {o.get("ParticipantObjectID") for o in ordered_xml.iter("ParticipantObjectIdentification")}
    assert ids == {STUDY, "job-1"}
    event = refused_xml.find("EventIdentification")
    assert event is not None and event.get("EventOutcomeIndicator") == "4"
    assert event.find("EventID").get("csd-code") == "110113"  # type: ignore[union-attr]
    assert event.find("EventTypeCode").get("csd-code") == "110126"  # type: ignore[union-attr]
    assert event.findtext("EventOutcomeDescription") == "not an allowed peer"
    caller = refused_xml.find("ActiveParticipant")
    assert caller is not None and caller.attrib["NetworkAccessPointID"] == "10.9.8.7"
    assert caller.attrib["NetworkAccessPointTypeCode"] == "2"


def test_a_collector_that_is_down_never_stops_the_node(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Refused connections: records are still written, one warning is logged; once the collector is up (and after
    it restarts, closing the connection), messages reach it again."""
    port = free_port()
    trail = trail_at(tmp_path, exporter(f"tcp://127.0.0.1:{port}"))
    with caplog.at_level(logging.INFO, logger="plugin.audit"):
        assert trail.association_accepted("MODALITY", "127.0.0.1") is not None
        assert trail.study_received(STUDY, "MODALITY", instances=1) is not None
        assert trail.exporter is not None and trail.exporter.flush(10)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "not reaching tcp://127.0.0.1" in warnings[0].getMessage()
        collector = TcpCollector(port)
        try:
            trail.job_finished("job-1", STUDY, state="done")
            wait_for(lambda: len(collector.messages) == 1, 10, "the message after the collector came up")
            assert "reach tcp://127.0.0.1" in caplog.text and "(2 not sent)" in caplog.text
            for connection in collector.connections:  # the collector restarts: our connection is closed
                connection.shutdown(socket.SHUT_RDWR)
            wait_for(lambda: trail.exporter is not None and trail.exporter._socket is not None
                     and audit_closed(trail.exporter._socket), 10, "the closed connection")
            trail.results_read("job-1", STUDY, client="ris")
            wait_for(lambda: len(collector.messages) == 2, 10, "the message after the restart")
        finally:
            trail.close()
            collector.close()
    assert trail.verify().records == 4


def audit_closed(connection: socket.socket) -> bool:
    from plugin.audit import _closed_by_peer

    return _closed_by_peer(connection)


@pytest.mark.parametrize("url", ["http://127.0.0.1:514", "udp://127.0.0.1", "tcp://:514", "syslog"])
def test_a_wrong_collector_url_is_a_usage_error(url: str) -> None:
    with pytest.raises(UsageError, match="udp://host:port or tcp://host:port"):
        exporter(url)


def _message_for(tmp_path: Path, make) -> ET.Element:
    trail = trail_at(tmp_path)
    record: AuditRecord = make(trail)
    return ET.fromstring(audit_message(record, source_id="PROGEMU", host="node.example.org"))


@pytest.mark.parametrize(("make", "event_id", "action", "type_code"), [
    (lambda t: t.application_started(), "110100", "E", "110120"),
    (lambda t: t.application_stopped(), "110100", "E", "110121"),
    (lambda t: t.association_accepted("MODALITY", "127.0.0.1"), "110114", "E", "110122"),
    (lambda t: t.job_finished("job-1", STUDY, state="failed", reason="generation failed"), "110103", "C", None),
    (lambda t: t.results_read("job-1", STUDY, client="ris"), "110103", "R", None),
    (lambda t: t.results_delivered("job-1", STUDY, kind="fhir", target="https://fhir.example.org/r5"),
     "110106", "R", None),
    (lambda t: t.audit_log_used(user="auditor", command="show"), "110101", "R", None),
])
def test_each_event_has_its_dicom_event_id(tmp_path: Path, make, event_id: str, action: str,
                                           type_code: str | None) -> None:
    xml = _message_for(tmp_path, make)
    event = xml.find("EventIdentification")
    assert event is not None and event.get("EventActionCode") == action
    assert event.find("EventID").get("csd-code") == event_id  # type: ignore[union-attr]
    found = event.find("EventTypeCode")
    assert (found.get("csd-code") if found is not None else None) == type_code
    assert xml.find("ActiveParticipant") is not None and xml.find("AuditSourceIdentification") is not None


def test_a_dicom_delivery_names_the_destination_ae_and_host(tmp_path: Path) -> None:
    xml = _message_for(tmp_path, lambda t: t.results_delivered("job-1", STUDY, kind="dicom",
                                                                target="PACS@pacs.example.org:4242",
                                                                error="association rejected"))
    event = xml.find("EventIdentification")
    assert event is not None and event.get("EventOutcomeIndicator") == "8"
    assert event.find("EventID").get("csd-code") == "110104"  # type: ignore[union-attr]
    destination = [p for p in xml.iter("ActiveParticipant") if p.get("UserIsRequestor") == "false"]
    assert [(p.get("UserID"), p.get("NetworkAccessPointID"), p.get("NetworkAccessPointTypeCode"))
            for p in destination] == [("PACS", "pacs.example.org", "1")]


# --- the command line -----------------------------------------------------------------------------------

def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="progemu")
    audit_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("PROGEMU_CONFIG", "PROGEMU_AUDIT_SYSLOG", "PROGEMU_DATA_DIR", "PROGEMU_AE_TITLE"):
        monkeypatch.delenv(name, raising=False)
    node_story(AuditTrail.from_settings(Settings(data_dir=tmp_path)))
    return tmp_path


def test_cli_verify_intact_then_broken(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("audit", "verify", "--data-dir", str(data_dir)) == 0
    assert capsys.readouterr().out.startswith("audit trail intact: 8 records (head ")
    trail = AuditTrail(data_dir / "audit.log", source_id="PROGEMU")
    last = list(trail.records())[-1]
    assert (last.event, last.fields) == ("audit-log-used", {
        "trail": str(trail.path.resolve()), "command": "verify", "intact": True, "records": 8})
    text = lines(trail)
    text[1] = text[1].replace("127.0.0.1", "127.0.0.2")
    trail.path.write_text("".join(text))
    assert run("audit", "verify", "--data-dir", str(data_dir), "--read-only") == 2
    out = capsys.readouterr().out
    assert out.startswith("audit trail broken at line 2 (record 2): edited") and "the 1 record(s) before" in out
    assert len(lines(trail)) == 9  # --read-only: nothing appended


def test_cli_verify_without_a_trail(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no audit trail"):
        run("audit", "verify", "--data-dir", str(tmp_path))


def test_cli_show_filters(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("audit", "show", "--data-dir", str(data_dir), "--job", "job-1", "--read-only") == 0
    shown = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in shown] == ["job-requested", "job-finished", "results-delivered",
                                                   "results-read"]
    assert "client=ris" in shown[0] and f"study_uid={STUDY}" in shown[0]
    assert run("audit", "show", "--data-dir", str(data_dir), "--since", "2000-01-01", "--json", "--read-only") == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 8 and all(r["hash"] == record_hash(r) for r in records)
    assert run("audit", "show", "--data-dir", str(data_dir), "--since", "1h", "--study", OTHER_STUDY) == 0
    assert capsys.readouterr().out == ""
    assert run("audit", "show", "--data-dir", str(data_dir), "--since", "2999-01-01T00:00Z", "--read-only") == 0
    assert capsys.readouterr().out == ""
    assert list(AuditTrail(data_dir / "audit.log", source_id="X").records())[-1].event == "audit-log-used"


def test_cli_since_refuses_what_it_cannot_read() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a date"):
        audit_cli.since("last tuesday")


def test_outcome_codes() -> None:
    assert [o.code for o in Outcome] == ["0", "4", "8", "12"]
