"""Listener throughput against DCMTK's storescp, and end-to-end latency from a request to the SR in Orthanc.

Both receivers get the same files from the same sender (DCMTK storescu, one association)
on loopback; the ratio is ours / storescp, measured in this run. Ours fsyncs every instance
before answering success; storescp does not.

    python benchmarks/listener.py                      # 200 DX images of about 10 MB, 3 rounds
    python benchmarks/listener.py --count 50 --rounds 1 --skip-latency
"""

from __future__ import annotations

import argparse
import functools
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dicom_io.listener import Listener, ListenerConfig  # noqa: E402
from dicom_io.peers import DicomPeer  # noqa: E402
from dicom_io.spool import Spool  # noqa: E402
from dicom_io.synthetic import build_synthetic_image  # noqa: E402
from tests.support.net import free_port, wait_for  # noqa: E402

log = logging.getLogger("benchmarks.listener")
SENDER = "BENCHSCU"


def make_images(directory: Path, count: int, size_mb: float) -> int:
    """``count`` DX files of one study, ``size_mb`` each (16-bit pixels); returns the total bytes."""
    side = int((size_mb * 2**20 / 2) ** 0.5)
    rng = np.random.default_rng(0)
    pixels = (rng.random((side, side)) * 4095).astype(np.uint16)
    template = build_synthetic_image(pixels, study_instance_uid=generate_uid())
    directory.mkdir(parents=True, exist_ok=True)
    series = generate_uid()
    for index in range(count):
        template.SeriesInstanceUID = series
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        template.InstanceNumber = index + 1
        template.save_as(directory / f"{index:04d}.dcm", enforce_file_format=True)
    return sum(path.stat().st_size for path in directory.iterdir())


def send(directory: Path, port: int, called: str) -> float:
    """Seconds for storescu to send every file in one association."""
    files = sorted(str(p) for p in directory.iterdir())
    started = time.perf_counter()
    result = subprocess.run(["storescu", "-aet", SENDER, "-aec", called, "127.0.0.1", str(port), *files],
                            capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0 or "Store Failed" in result.stderr:
        raise RuntimeError(f"storescu failed: {result.stderr[-500:]}")
    return elapsed


def time_storescp(images: Path, work: Path, max_pdu: int | None = None) -> float:
    out = work / "storescp-out"
    out.mkdir()
    port = free_port()
    pdu = ["--max-pdu", str(max_pdu)] if max_pdu else []
    server = subprocess.Popen(["storescp", "-aet", "STORESCP", *pdu, "-od", str(out), str(port)])
    try:
        wait_for(lambda: subprocess.run(["echoscu", "-aec", "STORESCP", "127.0.0.1", str(port)],
                                        capture_output=True).returncode == 0, 10, "storescp")
        return send(images, port, "STORESCP")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(out)


def time_ours(images: Path, work: Path) -> float:
    port = free_port()
    spool = Spool(work / "spool", max_bytes=2**40)
    listener = Listener(ListenerConfig(ae_title="PROGEMU", host="127.0.0.1", port=port,
                                       peers=(DicomPeer(SENDER, "127.0.0.1", 104),), quiet_seconds=3600),
                        spool, on_complete=lambda arrival: None)
    listener.start()
    try:
        return send(images, port, "PROGEMU")
    finally:
        listener.stop()
        shutil.rmtree(work / "spool")


def throughput(args: argparse.Namespace, work: Path) -> None:
    images = work / "images"
    total = make_images(images, args.count, args.size_mb)
    mb = total / 2**20
    print(f"{args.count} DX files, {mb / args.count:.1f} MB each, {mb:.0f} MB in all; sender: DCMTK storescu")
    # storescp as shipped (max PDU 16 KiB) and with the largest PDU it accepts (128 KiB; ours takes 256 KiB)
    rows: dict[str, list[float]] = {"storescp, default PDU": [], "storescp, 128 KiB PDU": [], "progemu listener": []}
    for round_ in range(args.rounds):
        rows["storescp, default PDU"].append(time_storescp(images, work))
        rows["storescp, 128 KiB PDU"].append(time_storescp(images, work, max_pdu=131_072))
        rows["progemu listener"].append(time_ours(images, work))
        log.info("round %d: %s", round_ + 1, ", ".join(f"{name} {times[-1]:.1f} s" for name, times in rows.items()))
    # the baseline is the faster storescp, so the ratio is never flattered by DCMTK's small default PDU
    baseline = min(statistics.median(rows["storescp, default PDU"]), statistics.median(rows["storescp, 128 KiB PDU"]))
    print(f"{'receiver':<24} {'median s':>9} {'files/s':>8} {'MB/s':>7} {'vs storescp':>12}")
    for name, times in rows.items():
        median = statistics.median(times)
        print(f"{name:<24} {median:>9.2f} {args.count / median:>8.1f} {mb / median:>7.1f} {baseline / median:>11.2f}x")
    shutil.rmtree(images)


def latency(work: Path) -> None:
    """Request -> SR in Orthanc, with the demo model, through `progemu serve` (embedded worker)."""
    from tests.support.node_server import NodeServer
    from tests.support.orthanc_server import PASSWORD, USER, OrthancServer
    from tests.support.studies import fresh_prior

    node_port = free_port()
    orthanc = OrthancServer(work / "orthanc", modalities={"PROGEMU": ["PROGEMU", "127.0.0.1", node_port]}).start()
    node = NodeServer(work / "node", dicom_port=node_port, env={
        "PROGEMU_PACS_URL": orthanc.url, "PROGEMU_PACS_USERNAME": USER, "PROGEMU_PACS_PASSWORD": PASSWORD,
        "PROGEMU_PEERS": f"ORTHANC@127.0.0.1:{orthanc.dicom_port}", "PROGEMU_STUDY_QUIET_SECONDS": "2"})
    try:
        node.start()
        times = []
        for index in range(4):
            prior = fresh_prior(work / f"prior{index}.dcm")
            orthanc.upload(work / f"prior{index}.dcm")
            started = time.perf_counter()
            job_id = node.post({"study_instance_uid": prior.StudyInstanceUID,
                                "hypothesis": "The left pleural effusion worsens.", "series_instance_uids": [
                                    prior.SeriesInstanceUID] if index % 2 else []}).json()["id"]
            sr_uid = node.wait_until(job_id, {"done"}, interval=0.05)["results"]["sr"]["sop_instance_uid"]
            wait_for(functools.partial(orthanc.client.instances.lookup, sr_uid), 60, "the SR in Orthanc", interval=0.05)
            times.append(time.perf_counter() - started)
            log.info("request %d: %.2f s", index, times[-1])
        named, quiet = times[1::2], times[0::2]
        print(f"request -> SR in Orthanc: {statistics.median(named):.2f} s when the request names the series; "
              f"{statistics.median(quiet):.2f} s when the node waits for a 2 s quiet period "
              f"(first request includes model loading: {times[0]:.2f} s)")
    finally:
        node.stop()
        orthanc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--size-mb", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--workdir", type=Path, help="scratch space (default: a temporary directory)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("dicom_io", "pynetdicom", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        throughput(args, Path(scratch))
        if not args.skip_latency:
            latency(Path(scratch))


if __name__ == "__main__":
    main()
