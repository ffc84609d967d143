"""Reliability under malformed input and load: the reader, the DICOM listener and the REST API, fuzzed; the
listener under many concurrent senders. Loopback only; every part is bounded in count and time.

(a) reader   mutated DICOM files (seeded mutators: bytes, lengths, VRs, transfer syntaxes, pixel data) through
             dicom_io.reader, each in a worker process with a deadline: escaped exceptions, hangs and crashes
(b) network  malformed A-ASSOCIATE-RQ and P-DATA-TF PDUs over raw sockets against a listener (a child process),
             with a C-ECHO check every --echo-every cases and at the end
(c) api      the REST API (in process, built as tests/test_api.py builds it) fuzzed from its OpenAPI schema with
             schemathesis, positive and negative cases: 5xx answers
(d) load     K concurrent senders of M images each against a listener (a child process) that accepts at most
             8 associations: every image stored exactly once, the listener's peak RSS

    python benchmarks/reliability.py --quick                 # a small run of every part (under a minute)
    python benchmarks/reliability.py --parts reader --count 20000 --workers 2
    python benchmarks/reliability.py                         # the defaults (about 20 minutes on 2 cores)

Prints one Markdown table on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import io
import logging
import multiprocessing
import multiprocessing.connection
import random
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import data_element_generator
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.listener import SENDER, make_images  # noqa: E402
from dicom_io.synthetic import build_synthetic_image  # noqa: E402
from tests.support.dicom_fixtures import chest_pixels  # noqa: E402
from tests.support.net import free_port, wait_for  # noqa: E402

log = logging.getLogger("benchmarks.reliability")
CALLED = "PROGEMU"
MAX_PIXELS = 50_000_000
"""The node's default image limit (Settings.max_image_pixels)."""
DEFAULTS = {"reader": 100_000, "network": 10_000, "api": 500}
QUICK = {"reader": 400, "network": 200, "api": 60}


@dataclass
class Row:
    """One line of the final table."""

    part: str
    what: str
    count: int
    verdict: str
    figures: str


# --- (a) the reader: seeded mutations of valid priors ------------------------------------------------------


@dataclass(frozen=True)
class Element:
    """Where one top-level element of a file lies: enough to mutate its tag, VR, length or value."""

    tag_offset: int
    vr_offset: int | None
    """None in implicit VR."""
    length_offset: int
    length_size: int
    value_offset: int
    length: int


@dataclass(frozen=True)
class Prior:
    name: str
    data: bytes
    elements: tuple[Element, ...]
    body_offset: int
    pixel_offset: int
    implicit: bool


_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
VRS = ("AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV", "OW",
       "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV")
TRANSFER_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
                     "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                     "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
                     "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
                     "1.2.840.10008.1.2.5", "1.2.3.4.5.6.7")


def _layout(name: str, data: bytes) -> Prior:
    """Find the top-level elements of a file written by pydicom (a preamble, then the explicit VR LE meta group)."""
    body_offset = 144 + struct.unpack("<L", data[140:144])[0]
    syntax = UID(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta.TransferSyntaxUID)
    implicit = syntax == ImplicitVRLittleEndian
    elements, pixel_offset = [], len(data)
    for raw in data_element_generator(io.BytesIO(data[body_offset:]), implicit, True, defer_size=None):
        assert isinstance(raw, RawDataElement)
        value_offset = body_offset + raw.value_tell
        if implicit:
            element = Element(value_offset - 8, None, value_offset - 4, 4, value_offset, raw.length)
        elif raw.VR in _LONG_VRS:
            element = Element(value_offset - 12, value_offset - 8, value_offset - 4, 4, value_offset, raw.length)
        else:
            element = Element(value_offset - 8, value_offset - 4, value_offset - 2, 2, value_offset, raw.length)
        elements.append(element)
        if raw.tag == 0x7FE00010:
            pixel_offset = value_offset
    return Prior(name, data, tuple(elements), body_offset, pixel_offset, implicit)


def seed_priors() -> list[Prior]:
    """Four valid priors, small so that a mutation is read fast: DX (explicit VR), CR (implicit VR), DX in RLE and
    DX in JPEG 2000."""
    def encoded(ds: pydicom.Dataset, syntax: UID | None = None, implicit: bool = False) -> bytes:
        if syntax is not None:
            ds.compress(syntax)
        if implicit:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True, implicit_vr=implicit or None)
        return buffer.getvalue()

    def prior(modality: str = "DX") -> pydicom.Dataset:
        return build_synthetic_image(chest_pixels(96, 80), modality=modality, patient_name="FUZZ^PRIOR",
                                     patient_id="FUZZ-0001", patient_birth_date="19700101")

    return [_layout("DX explicit VR", encoded(prior())),
            _layout("CR implicit VR", encoded(prior("CR"), implicit=True)),
            _layout("DX RLE", encoded(prior(), RLELossless)),
            _layout("DX JPEG 2000", encoded(prior(), JPEG2000Lossless))]


def mutate_bytes(rng: random.Random, prior: Prior) -> bytes:
    """Overwrite a few bytes anywhere past the preamble; or truncate; or insert or delete a few bytes."""
    data = bytearray(prior.data)
    choice = rng.random()
    if choice < 0.1:
        return bytes(data[:rng.randrange(132, len(data))])
    if choice < 0.2:
        at = rng.randrange(132, len(data))
        return bytes(data[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))) + data[at:])
    if choice < 0.3:
        at = rng.randrange(132, len(data))
        return bytes(data[:at] + data[at + rng.randint(1, 8):])
    for _ in range(rng.randint(1, 10)):
        data[rng.randrange(132, len(data))] = rng.randrange(256)
    return bytes(data)


def mutate_lengths(rng: random.Random, prior: Prior) -> bytes:
    """Give one or two elements a wrong value length: off by one, zero, doubled, undefined or random."""
    data = bytearray(prior.data)
    for _ in range(rng.randint(1, 2)):
        element = rng.choice(prior.elements)
        top = 0xFFFF if element.length_size == 2 else 0xFFFFFFFF
        length = element.length if element.length != 0xFFFFFFFF else 0
        value = rng.choice([0, length - 1, length + 1, 2 * length, top, rng.randrange(top + 1)]) & top
        data[element.length_offset:element.length_offset + element.length_size] = value.to_bytes(
            element.length_size, "little")
    return bytes(data)


def mutate_vrs(rng: random.Random, prior: Prior) -> bytes:
    """Explicit VR: give elements another (or a nonsense) VR. Implicit VR: give them another tag, whose dictionary
    VR reads the value differently."""
    data = bytearray(prior.data)
    for _ in range(rng.randint(1, 3)):
        element = rng.choice(prior.elements)
        if element.vr_offset is not None:
            vr = rng.choice(VRS).encode() if rng.random() < 0.8 else bytes(rng.randrange(256) for _ in range(2))
            data[element.vr_offset:element.vr_offset + 2] = vr
        else:
            tag = rng.choice([t for t in pydicom.datadict.DicomDictionary if t < 0x7FE00000])
            data[element.tag_offset:element.tag_offset + 4] = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    return bytes(data)


def mutate_transfer_syntax(rng: random.Random, prior: Prior) -> bytes:
    """Announce another transfer syntax (or an unknown one) for an unchanged body."""
    meta = pydicom.dcmread(io.BytesIO(prior.data), stop_before_pixels=True).file_meta
    meta.TransferSyntaxUID = UID(rng.choice([s for s in TRANSFER_SYNTAXES if s != meta.TransferSyntaxUID]))
    buffer = DicomBytesIO()
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return prior.data[:132] + buffer.getvalue() + prior.data[prior.body_offset:]


def mutate_pixel_data(rng: random.Random, prior: Prior) -> bytes:
    """Damage the pixel data only: bytes overwritten (compressed streams' headers and offsets among them), a run
    zeroed, or the file cut inside it."""
    data = bytearray(prior.data)
    start, end = prior.pixel_offset, len(data)
    choice = rng.random()
    if choice < 0.15:
        return bytes(data[:rng.randrange(start, end)])
    if choice < 0.3:
        at, length = rng.randrange(start, end), rng.randint(1, 256)
        data[at:at + length] = bytes(len(data[at:at + length]))
        return bytes(data)
    head = min(end, start + 96)  # item tags, the offset table, an RLE header, a JPEG marker segment
    for _ in range(rng.randint(1, 12)):
        data[rng.randrange(start, head) if rng.random() < 0.5 else rng.randrange(start, end)] = rng.randrange(256)
    return bytes(data)


MUTATORS: dict[str, Callable[[random.Random, Prior], bytes]] = {
    "bytes": mutate_bytes, "lengths": mutate_lengths, "VRs": mutate_vrs, "transfer syntax": mutate_transfer_syntax,
    "pixel data": mutate_pixel_data}


def mutation(priors: list[Prior], seed: int, index: int) -> tuple[str, str, bytes]:
    """Mutation number ``index`` of run ``seed``: (prior, mutator, bytes), the same on every machine."""
    rng = random.Random(f"{seed}:{index}")
    prior = priors[index % len(priors)]
    name = list(MUTATORS)[(index // len(priors)) % len(MUTATORS)]
    return prior.name, name, MUTATORS[name](rng, prior)


def read_outcome(data: bytes) -> tuple[str, str]:
    """("accepted" | "refused" | "escaped", detail): the reader's verdict on one file, as the node would read it."""
    from dicom_io.errors import DicomInputError
    from dicom_io.reader import check_patient_record, read_prior

    try:
        check_patient_record(read_prior(data, max_pixels=MAX_PIXELS).dataset)
    except DicomInputError as exc:
        return "refused", type(exc).__name__
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - what the benchmark counts
        return "escaped", f"{type(exc).__module__}.{type(exc).__name__}"
    return "accepted", ""


def _reader_worker(connection: multiprocessing.connection.Connection, seed: int) -> None:
    """Reads the mutations the parent names, one at a time, and answers each with its outcome."""
    logging.disable(logging.CRITICAL)
    priors = seed_priors()
    connection.send("ready")
    while (index := connection.recv()) is not None:
        _, _, data = mutation(priors, seed, index)
        started = time.perf_counter()
        outcome = read_outcome(data)
        connection.send((index, *outcome, time.perf_counter() - started))


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    connection: multiprocessing.connection.Connection
    index: int | None = None
    deadline: float = 0.0


def _start_worker(context: Any, seed: int) -> _Worker:
    parent, child = context.Pipe()
    process = context.Process(target=_reader_worker, args=(child, seed), daemon=True)
    process.start()
    child.close()
    if not parent.poll(120) or parent.recv() != "ready":
        raise RuntimeError("a reader worker did not start")
    return _Worker(process, parent)


def fuzz_reader(count: int, *, seed: int, workers: int, timeout: float, max_seconds: float,
                save: Path | None) -> Row:
    """(a): ``count`` mutations through the reader in ``workers`` processes, each file within ``timeout`` s."""
    context = multiprocessing.get_context("spawn")
    pool = [_start_worker(context, seed) for _ in range(workers)]
    outcomes: Counter[str] = Counter()
    failures: list[tuple[int, str]] = []
    started = last_report = time.monotonic()
    next_index = done = 0
    slowest = 0.0

    def dispatch(worker: _Worker) -> None:
        nonlocal next_index
        if next_index < count and time.monotonic() - started < max_seconds:
            worker.index, worker.deadline = next_index, time.monotonic() + timeout
            worker.connection.send(next_index)
            next_index += 1
        else:
            worker.index = None

    def replace(worker: _Worker, outcome: str, detail: str) -> None:
        nonlocal done
        assert worker.index is not None
        outcomes[outcome] += 1
        failures.append((worker.index, f"{outcome}: {detail}"))
        done += 1
        worker.process.kill()
        worker.process.join()
        pool[pool.index(worker)] = fresh = _start_worker(context, seed)
        dispatch(fresh)

    for worker in pool:
        dispatch(worker)
    while busy := [w for w in pool if w.index is not None]:
        ready = multiprocessing.connection.wait([w.connection for w in busy],
                                                timeout=max(0.0, min(w.deadline for w in busy) - time.monotonic()))
        for worker in busy:
            if worker.connection in ready:
                try:
                    index, outcome, detail, took = worker.connection.recv()
                except EOFError:  # the worker died: a crash in native code
                    worker.process.join(5)
                    replace(worker, "crashed", f"exit code {worker.process.exitcode}")
                    continue
                outcomes[outcome] += 1
                outcomes[f"{outcome}: {detail}"] += 1
                slowest = max(slowest, took)
                if outcome == "escaped":
                    failures.append((index, detail))
                done += 1
                dispatch(worker)
            elif time.monotonic() > worker.deadline:
                replace(worker, "hung", f"over {timeout} s")
        if time.monotonic() - last_report > 10:
            last_report = time.monotonic()
            log.info("reader: %d/%d files (%.0f/s), escaped %d, hung %d, crashed %d", done, count,
                     done / (last_report - started), outcomes["escaped"], outcomes["hung"], outcomes["crashed"])
    for worker in pool:
        worker.connection.send(None)
        worker.process.join(5)
        if worker.process.is_alive():
            worker.process.kill()
    seconds = time.monotonic() - started
    _report_failures("reader", failures, seed, save)
    bad = outcomes["escaped"] + outcomes["hung"] + outcomes["crashed"]
    refusals, escapes = (", ".join(f"{key.split(': ')[1]} {value}" for key, value in outcomes.most_common()
                                   if key.startswith(f"{kind}: ")) for kind in ("refused", "escaped"))
    return Row("(a) reader", f"mutated DICOM files ({len(MUTATORS)} mutators x 4 priors, seed {seed})", done,
               f"escaped {outcomes['escaped']}{f' ({escapes})' if escapes else ''}, hung {outcomes['hung']}, "
               f"crashed {outcomes['crashed']}: {bad / max(done, 1):.3%}",
               f"accepted {outcomes['accepted'] / max(done, 1):.1%}, refused {outcomes['refused'] / max(done, 1):.1%} "
               f"({refusals}); {done / seconds:.0f} files/s with {workers} workers; slowest file {slowest:.2f} s "
               f"(deadline {timeout:g} s)")


def _report_failures(part: str, failures: list[tuple[int, str]], seed: int, save: Path | None) -> None:
    for index, detail in failures[:10]:
        log.warning("%s: mutation %d (seed %d): %s", part, index, seed, detail)
    if save is not None and failures and part == "reader":
        save.mkdir(parents=True, exist_ok=True)
        priors = seed_priors()
        for index, _ in failures:
            prior, mutator, data = mutation(priors, seed, index)
            (save / f"{index:07d}-{mutator.replace(' ', '-')}-{prior.replace(' ', '-')}.dcm").write_bytes(data)


# --- the listener in a child process ----------------------------------------------------------------------


def _serve(port: int, spool_dir: str, log_file: str, hosts: tuple[str, ...], stop: Any) -> None:
    """A listener as the node builds one (ListenerConfig's defaults, which are Settings'), with SENDER allowed from
    each of ``hosts``, until ``stop`` is set."""
    from dicom_io.listener import Listener, ListenerConfig
    from dicom_io.peers import DicomPeer
    from dicom_io.spool import Spool

    logging.basicConfig(level=logging.INFO, filename=log_file, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.stderr = open(log_file, "a", buffering=1)  # for the process's life: where dying threads print
    listener = Listener(ListenerConfig(ae_title=CALLED, host="127.0.0.1", port=port,
                                       peers=tuple(DicomPeer(SENDER, host, 104) for host in hosts),
                                       quiet_seconds=3600),
                        Spool(Path(spool_dir), max_bytes=2**40), on_complete=lambda arrival: None)
    listener.start()
    stop.wait()
    listener.stop()


class ListenerProcess:
    """The listener in a child process, so that its memory can be measured and a crash seen."""

    def __init__(self, work: Path, hosts: tuple[str, ...] = ("127.0.0.1",)) -> None:
        self.port = free_port()
        self.spool = work / "spool"
        self.log_file = work / "listener.log"
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self.process = context.Process(target=_serve, args=(self.port, str(self.spool), str(self.log_file), hosts,
                                                            self._stop), daemon=True)
        self.hosts = hosts

    def __enter__(self) -> ListenerProcess:
        self.process.start()
        wait_for(lambda: echo(self.port, self.hosts[0]), 60, "the listener")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    def memory(self, key: str = "VmRSS") -> int:
        """Bytes of the child's resident set (VmRSS), or its peak so far (VmHWM); 0 once it is gone."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return 0
        line = next(line for line in status.splitlines() if line.startswith(f"{key}:"))
        return int(line.split()[1]) * 1024


def echo(port: int, source: str = "127.0.0.1") -> bool:
    """One C-ECHO as an allowed peer calling from ``source``: True on success."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at run time

    ae = AE(SENDER)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title=CALLED, bind_address=(source, 0))
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0x0000


# --- (b) the network: malformed PDUs ----------------------------------------------------------------------


def associate_rq() -> bytes:
    """A valid A-ASSOCIATE-RQ from the allowed peer, proposing Verification."""
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import A_ASSOCIATE, ImplementationClassUIDNotification, MaximumLengthNotification
    from pynetdicom.presentation import build_context
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = SENDER, CALLED
    context = build_context(Verification)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    maximum, implementation = MaximumLengthNotification(), ImplementationClassUIDNotification()
    maximum.maximum_length_received = 16382
    implementation.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    primitive.user_information = [maximum, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def echo_pdata() -> bytes:
    """A C-ECHO-RQ as the P-DATA-TF PDU(s) that carry it on presentation context 1."""
    from pynetdicom.dimse_messages import C_ECHO_RQ
    from pynetdicom.dimse_primitives import C_ECHO
    from pynetdicom.pdu import P_DATA_TF
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    primitive = C_ECHO()
    primitive.MessageID, primitive.AffectedSOPClassUID = 1, Verification
    message = C_ECHO_RQ()
    message.primitive_to_message(primitive)
    encoded = b""
    for data in message.encode_msg(1, 16382):
        pdu = P_DATA_TF()
        pdu.from_primitive(data)
        encoded += pdu.encode()
    return encoded


def _damaged(rng: random.Random, pdu: bytes) -> bytes:
    """A PDU with flipped bytes, a wrong PDU or item length, cut short, or with garbage after it."""
    data = bytearray(pdu)
    choice = rng.random()
    if choice < 0.2:
        data[2:6] = struct.pack(">L", rng.choice([0, len(pdu) - 6 - 1, len(pdu), 2**31, 0xFFFFFFFF,
                                                  rng.randrange(2**32)]))
    elif choice < 0.4 and len(data) > 12:
        at = rng.randrange(6, len(data) - 4)
        data[at:at + 2] = struct.pack(">H", rng.randrange(2**16))  # an item's length, or whatever lies there
    elif choice < 0.55:
        return bytes(data[:rng.randrange(1, len(data))])
    elif choice < 0.65:
        return bytes(data) + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    else:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def _random_pdu(rng: random.Random) -> bytes:
    body = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 4, 16, 64, 512])))
    length = len(body) if rng.random() < 0.7 else rng.randrange(2**32)
    return struct.pack(">BBL", rng.choice([1, 2, 3, 4, 5, 6, 7, 0, 8, 0xFF]), 0, length) + body


def _answer(sock: socket.socket, wait: float) -> str:
    """What the listener said first: the PDU type it sent, "closed", or "silent" within ``wait`` s."""
    sock.settimeout(wait)
    try:
        head = sock.recv(1)
    except TimeoutError:
        return "silent"
    except OSError:
        return "closed"
    return {b"": "closed", b"\x02": "A-ASSOCIATE-AC", b"\x03": "A-ASSOCIATE-RJ", b"\x04": "P-DATA-TF",
            b"\x06": "A-RELEASE-RP", b"\x07": "A-ABORT"}.get(head, f"type {head.hex()}")


def _read_pdu(sock: socket.socket) -> bytes:
    """One whole PDU (header and body), or what arrived before the connection closed."""
    data = b""
    while len(data) < 6 or len(data) < 6 + struct.unpack(">L", data[2:6])[0]:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def pdu_case(port: int, source: str, rng: random.Random, rq: bytes, pdata: bytes, wait: float) -> tuple[str, str]:
    """One malformed exchange on a fresh connection from ``source``: (kind, the listener's first answer)."""
    kind = rng.choice(["A-ASSOCIATE-RQ damaged", "random PDU", "P-DATA-TF damaged", "PDU after association"])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as sock:
            if kind in ("P-DATA-TF damaged", "PDU after association"):
                sock.sendall(rq)
                if _read_pdu(sock)[:1] != b"\x02":
                    return kind, "association refused"
                sock.sendall(_damaged(rng, pdata) if kind == "P-DATA-TF damaged" else _random_pdu(rng))
            else:
                sock.sendall(_damaged(rng, rq) if kind == "A-ASSOCIATE-RQ damaged" else _random_pdu(rng))
            return kind, _answer(sock, wait)
    except OSError as exc:
        return kind, f"connection {type(exc).__name__}"


FUZZ_HOSTS = tuple(f"127.0.{index // 200 + 10}.{index % 200 + 1}" for index in range(64))
"""Loopback addresses the malformed connections come from, in turn. A connection the listener aborted or refused
holds one of its host's few pending slots until the ACSE timeout (pynetdicom waits that long for the close), so a
single address would mostly meet the per-host cap instead of the parser."""
CHECK_HOST = "127.0.9.9"
"""Where the C-ECHO checks come from: another peer, which the fuzzing must not lock out."""


def fuzz_network(count: int, *, seed: int, work: Path, wait: float, echo_every: int, max_seconds: float) -> Row:
    """(b): ``count`` malformed exchanges against a listener; C-ECHO every ``echo_every`` and at the end, from a
    peer of its own; and how long the fuzzing hosts themselves stay locked out."""
    rq, pdata = associate_rq(), echo_pdata()
    answers: Counter[str] = Counter()
    echoes = echo_failures = done = 0
    with ListenerProcess(work, (CHECK_HOST, *FUZZ_HOSTS)) as listener:
        started = last_report = time.monotonic()
        for index in range(count):
            if time.monotonic() - started > max_seconds:
                break
            source = FUZZ_HOSTS[index % len(FUZZ_HOSTS)]
            kind, answer = pdu_case(listener.port, source, random.Random(f"{seed}:pdu:{index}"), rq, pdata, wait)
            answers[answer] += 1
            done += 1
            if (index + 1) % echo_every == 0 or index + 1 == count:
                echoes += 1
                if not echo(listener.port, CHECK_HOST):
                    echo_failures += 1
                    log.warning("network: C-ECHO failed after case %d (%s)", index, kind)
            if time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                log.info("network: %d/%d cases (%.0f/s), echo failures %d", done, count,
                         done / (last_report - started), echo_failures)
        seconds = time.monotonic() - started
        recovered = _seconds_until(lambda: echo(listener.port, CHECK_HOST), 120)
        fuzzed_again = _seconds_until(lambda: all(echo(listener.port, host) for host in FUZZ_HOSTS[:4]), 120)
        alive, peak = listener.alive, listener.memory("VmHWM")
    logged = listener.log_file.read_text(errors="replace")
    shares = ", ".join(f"{answer} {n / max(done, 1):.0%}" for answer, n in answers.most_common(6))
    recovery = " and ".join(f"{who} after {value:.0f} s" if value is not None else f"{who} NOT within 120 s"
                            for who, value in (("the other peer", recovered), ("the fuzzing addresses", fuzzed_again)))
    return Row("(b) network", "malformed A-ASSOCIATE-RQ, P-DATA-TF and random PDUs on fresh connections, from "
                              f"{len(FUZZ_HOSTS)} loopback addresses in turn", done,
               f"C-ECHO from another peer during the run: {echoes - echo_failures}/{echoes} answered; once it stopped: "
               f"{recovery}; listener {'alive' if alive else 'DEAD'}",
               f"first answers: {shares}; {done / seconds:.0f} cases/s; the listener logged "
               f"{logged.count('Rejecting Association')} association rejections, "
               f"{logged.count('Exception in thread')} pynetdicom threads dying on an exception; "
               f"peak RSS {peak / 2**20:.0f} MiB")


def _seconds_until(condition: Callable[[], bool], limit: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        try:
            if condition():
                return time.monotonic() - started
        except Exception:  # noqa: BLE001 - a refused connection: not yet
            pass
        time.sleep(0.5)
    return None


# --- (c) the REST API -------------------------------------------------------------------------------------

API_TOKEN = "reliability-bench-token-0123456789abcdefghij"


def fuzz_api(count: int, *, work: Path) -> Row:
    """(c): ``count`` schemathesis cases over every operation of the API's OpenAPI schema, in process."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, seed, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.core.result import Ok

    from plugin.api import create_app
    from plugin.config import DEMO_PRIOR, Settings
    from plugin.orchestrator import Orchestrator
    from plugin.server import readiness
    from plugin.tasks import CeleryDispatcher, configure

    config = Settings(data_dir=work / "api", api_token=API_TOKEN)
    configure(config)  # the embedded (in-memory) broker: tasks are queued, no worker runs them
    node = Orchestrator(config, CeleryDispatcher())
    prior = pydicom.dcmread(DEMO_PRIOR)  # one spooled study, so that some generated requests find it
    node.spool.write(prior.StudyInstanceUID, prior.SeriesInstanceUID, prior.SOPInstanceUID, DEMO_PRIOR.read_bytes())
    app = create_app(node, readiness=lambda: readiness(node))
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=auth)
    operations = [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    statuses: Counter[str] = Counter()
    server_errors: Counter[str] = Counter()

    def run(operation: Any, mode: Any, examples: int, round_: int) -> int:
        """Up to ``examples`` cases of one operation in one mode, seeded by the round; how many ran."""
        ran = 0

        @seed(round_)
        @settings(max_examples=examples, database=None, deadline=None, suppress_health_check=list(HealthCheck),
                  phases=[Phase.generate])
        @given(case=operation.as_strategy(generation_mode=mode))
        def exercise(case: Any) -> None:
            nonlocal ran
            try:
                status = case.call(headers=auth).status_code
            except Exception as exc:  # noqa: BLE001 - an exception out of the app is a 500 to a client
                status = 500
                log.warning("api: %s %s raised %s", case.method, case.formatted_path, type(exc).__name__)
            ran += 1
            statuses[f"{status // 100}xx"] += 1
            statuses["total"] += 1
            if status >= 500:
                server_errors[f"{status} {case.method} {operation.path}"] += 1

        try:
            exercise()
        except Unsatisfiable:  # a negative case of an operation that takes nothing: there is none
            pass
        return ran

    runs = [(operation, mode) for operation in operations for mode in modes]
    for round_ in range(100):
        if statuses["total"] >= count or not runs:
            break
        examples = -(-(count - statuses["total"]) // len(runs))
        for operation, mode in list(runs):
            if run(operation, mode, examples, round_) < examples:  # its inputs are exhausted (e.g. /healthz)
                runs.remove((operation, mode))
        log.info("api: round %d: %d cases so far", round_ + 1, statuses["total"])
    total = statuses["total"]
    errors = sum(n for key, n in server_errors.items() if key.startswith("500 "))
    shares = ", ".join(f"{key} {n / max(total, 1):.0%}" for key, n in sorted(statuses.items()) if key != "total")
    other = ", ".join(f"{key} x{n}" for key, n in server_errors.items() if not key.startswith("500 "))
    return Row("(c) api", f"schemathesis cases over {len(operations)} operations, positive and negative", total,
               f"500 answers {errors} ({errors / max(total, 1):.2%})",
               f"{shares}" + (f"; other 5xx: {other} (/readyz: 503 is its documented 'not ready', here: no worker "
                              "or broker in this process)" if other else ""))


# --- (d) load ---------------------------------------------------------------------------------------------


@dataclass
class SenderTally:
    stored: set[str] = field(default_factory=set)
    refusals: Counter[str] = field(default_factory=Counter)


def _send_all(port: int, files: list[Path], tally: SenderTally, deadline: float) -> None:
    """Send every file, at least once, until each is acknowledged; a refused or broken association is retried
    after a short, growing, jittered pause (as a modality's queue would)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation  # type: ignore[attr-defined]

    ae = AE(SENDER)
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.network_timeout = 30
    pending = list(files)
    rng, pause = random.Random(str(files[0])), 0.05
    while pending and time.monotonic() < deadline:
        assoc = ae.associate("127.0.0.1", port, ae_title=CALLED)
        if not assoc.is_established:
            tally.refusals["rejected (transient)" if assoc.is_rejected and assoc.acceptor.primitive and
                           assoc.acceptor.primitive.result == 0x02 else
                           "rejected (permanent)" if assoc.is_rejected else "no association"] += 1
            time.sleep(pause * (1 + rng.random()))
            pause = min(pause * 2, 2.0)
            continue
        pause = 0.05
        while pending and assoc.is_established:
            status = assoc.send_c_store(pending[0])
            if status and status.Status == 0x0000:
                tally.stored.add(pending.pop(0).stem)
            elif not status:
                tally.refusals["association lost"] += 1
            else:
                tally.refusals[f"status 0x{status.Status:04x}"] += 1
                break
        assoc.release()


def load(senders: int, images: int, *, work: Path, size_mb: float, max_seconds: float) -> Row:
    """(d): ``senders`` concurrent senders of ``images`` images each; each image must be stored exactly once."""
    directories = []
    for index in range(senders):
        directory = work / "images" / f"{index:03d}"
        make_images(directory, images, size_mb)
        directories.append(directory)
    expected = {}
    for directory in directories:  # name each file by its SOP Instance UID, as the spool does
        for path in directory.iterdir():
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            path.rename(directory / f"{uid}.dcm")
            expected[uid] = directory.name
    tallies = [SenderTally() for _ in directories]
    peak_sampled = 0
    with ListenerProcess(work) as listener:
        started = time.monotonic()
        threads = [threading.Thread(target=_send_all, args=(listener.port, sorted(d.iterdir()), tally,
                                                             started + max_seconds), daemon=True)
                   for d, tally in zip(directories, tallies, strict=True)]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            peak_sampled = max(peak_sampled, listener.memory())
            time.sleep(0.1)
        seconds = time.monotonic() - started
        peak = max(peak_sampled, listener.memory("VmHWM"))
        alive = listener.alive
    stored_files = [p for p in listener.spool.rglob("*") if p.is_file() and p.suffix == ".dcm"]
    stored = Counter(p.stem for p in stored_files)
    acknowledged = set().union(*(tally.stored for tally in tallies))
    missing = set(expected) - set(stored)
    duplicates = sum(n - 1 for n in stored.values() if n > 1)
    unexpected = set(stored) - set(expected)
    refusals: Counter[str] = sum((tally.refusals for tally in tallies), Counter())
    total = senders * images
    verdict = (f"stored exactly once: {len(set(stored) & set(expected))}/{total} "
               f"(missing {len(missing)}, duplicates {duplicates}, unexpected {len(unexpected)}, "
               f"acknowledged {len(acknowledged)}); listener {'alive' if alive else 'DEAD'}")
    return Row("(d) load", f"{senders} senders x {images} DX images of {size_mb * 1024:.0f} KiB, at most 8 "
                           "associations", total, verdict,
               f"{total / seconds:.0f} images/s over {seconds:.0f} s; retries: "
               f"{', '.join(f'{k} {v}' for k, v in refusals.most_common()) or 'none'}; "
               f"listener peak RSS {peak / 2**20:.0f} MiB")


# --- the run ----------------------------------------------------------------------------------------------


def table(rows: list[Row]) -> Iterator[str]:
    yield "| part | what | count | verdict | figures |"
    yield "|---|---|---:|---|---|"
    for row in rows:
        yield f"| {row.part} | {row.what} | {row.count} | {row.verdict} | {row.figures} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="reader,network,api,load",
                        help="comma-separated, from reader, network, api, load (default: all)")
    parser.add_argument("--quick", action="store_true", help="small counts: a check that every part works")
    parser.add_argument("--count", type=int, help=f"cases for each chosen fuzz part (default: {DEFAULTS})")
    parser.add_argument("--seed", type=int, default=1, help="the mutations' seed (a run is reproducible)")
    parser.add_argument("--workers", type=int, default=2, help="reader worker processes")
    parser.add_argument("--file-timeout", type=float, default=10.0, help="seconds a file may take to be read")
    parser.add_argument("--save-failures", type=Path, help="write the mutated files that escaped or hung here")
    parser.add_argument("--pdu-wait", type=float, default=0.3, help="seconds to wait for the listener's answer")
    parser.add_argument("--echo-every", type=int, default=100, help="C-ECHO after this many PDU cases")
    parser.add_argument("--senders", type=int, help="concurrent senders in the load part (default 50)")
    parser.add_argument("--images", type=int, help="images per sender (default 100)")
    parser.add_argument("--size-mb", type=float, default=0.05, help="size of each load image")
    parser.add_argument("--max-minutes", type=float, default=120.0, help="time limit of each part")
    parser.add_argument("--workdir", type=Path, help="scratch space (default: a temporary directory)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("dicom_io", "pynetdicom", "pydicom", "httpx", "plugin", "celery", "kombu", "alembic"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    parts = [part.strip() for part in args.parts.split(",")]
    counts = {part: args.count or (QUICK if args.quick else DEFAULTS)[part] for part in DEFAULTS}
    max_seconds = args.max_minutes * 60
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        work = Path(scratch)
        if "reader" in parts:
            rows.append(fuzz_reader(counts["reader"], seed=args.seed, workers=args.workers,
                                    timeout=args.file_timeout, max_seconds=max_seconds, save=args.save_failures))
        if "network" in parts:
            (work / "network").mkdir()
            rows.append(fuzz_network(counts["network"], seed=args.seed, work=work / "network", wait=args.pdu_wait,
                                     echo_every=args.echo_every, max_seconds=max_seconds))
        if "api" in parts:
            rows.append(fuzz_api(counts["api"], work=work))
        if "load" in parts:
            (work / "load").mkdir()
            rows.append(load(args.senders or (5 if args.quick else 50), args.images or (10 if args.quick else 100),
                             work=work / "load", size_mb=args.size_mb, max_seconds=max_seconds))
            shutil.rmtree(work / "load", ignore_errors=True)
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
