"""A GPU worker on another host than the node: two network namespaces made by the test (tests/support/netns.py).

Host A runs the PACS (Orthanc), the node (`progemu serve` with the io queue), Redis and PostgreSQL; host B runs
`progemu worker --queues gpu` with an empty data directory of its own and reaches A only over the pair's link:
the broker, the job store and the node's internal API are all it shares with the node. A request makes Orthanc
send the study to the node; the worker on B takes the job, and is killed (every process of it, as a host that dies)
while the job runs; another worker on B takes the redelivered task and starts over; the SC, SR and report page
reach Orthanc, each exactly once.

Needs root (network namespaces), as CI runs; as another user it is skipped, saying so.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis

from plugin.clients import ClientStore, Scope
from plugin.config import Settings
from tests.support.faults import study_sop_uids
from tests.support.net import stop_process, wait_for
from tests.support.netns import Host, Hosts, OrthancOnHost, Postgres, Redis, two_hosts
from tests.support.node_server import BIN, NodeServer
from tests.support.orthanc_server import PASSWORD, USER
from tests.support.studies import fresh_prior

pytestmark = pytest.mark.integration

VISIBILITY_TIMEOUT = 20
"""Seconds before Redis hands a dead worker's task to another (production: an hour, longer than any job)."""


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    if os.geteuid() != 0:
        pytest.skip(f"network namespaces need root; this test runs as uid {os.geteuid()}")
    with two_hosts() as made:
        yield made


def _start_worker(host: Host, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with log_path.open("wb") as log:
        return host.popen([str(BIN / "progemu"), "-v", "worker", "--queues", "gpu", "--concurrency", "1"],
                             env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)  # its own process group: killed whole, as a host that dies


def _kill_whole(worker: subprocess.Popen) -> None:
    os.killpg(worker.pid, signal.SIGKILL)  # the supervisor and its prefork child
    worker.wait(10)


def test_a_worker_on_another_host_generates_and_a_killed_one_is_replaced_and_the_job_finishes_once(
        hosts: Hosts, tmp_path: Path) -> None:
    a, b = hosts.a, hosts.b
    with ExitStack() as stack:
        database = Postgres(a)
        stack.callback(database.stop)
        database.start()
        broker = Redis(a, tmp_path / "redis")
        stack.callback(broker.stop)
        broker.start()
        node = NodeServer(tmp_path / "node", host=a.watch_address, launcher=a.command(), env={
            "PROGEMU_BIND_HOST": "0.0.0.0", "PROGEMU_BROKER_URL": broker.url(a.address),
            "PROGEMU_WORKER_QUEUES": "io", "PROGEMU_DATABASE_URL": database.url(a.address),
            "PROGEMU_BROKER_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT)})
        orthanc = OrthancOnHost(a, tmp_path / "orthanc", modalities={
            "PROGEMU": ["PROGEMU", "127.0.0.1", node.dicom_port]})  # the ports are free on A: nothing else runs there
        stack.callback(orthanc.stop)
        orthanc.start()
        node.env |= {"PROGEMU_PACS_URL": f"http://127.0.0.1:{orthanc.http_port}", "PROGEMU_PACS_USERNAME": USER,
                     "PROGEMU_PACS_PASSWORD": PASSWORD, "PROGEMU_PEERS": f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"}
        stack.callback(node.stop)
        node.start()
        clients = ClientStore(Settings(database_url=database.url(a.watch_address)).resolved_database_url())
        _, token = clients.add("gpu-host-b", [Scope.WORKER])  # `progemu clients add gpu-host-b --scope worker`
        clients.dispose()
        b_data = tmp_path / "host-b-data"  # empty: B has nothing of the node's
        worker_env = {k: v for k, v in os.environ.items() if not k.startswith("PROGEMU_")} | {
            "PROGEMU_BROKER_URL": broker.url(a.address), "PROGEMU_DATABASE_URL": database.url(a.address),
            "PROGEMU_BROKER_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT), "PROGEMU_DATA_DIR": str(b_data),
            "PROGEMU_NODE_URL": f"http://{a.address}:{node.http_port}", "PROGEMU_NODE_TOKEN": token}
        first = _start_worker(b, worker_env, tmp_path / "worker-1.log")
        stack.callback(stop_process, first, 30)

        prior = fresh_prior(tmp_path / "prior.dcm")
        orthanc.upload(tmp_path / "prior.dcm")
        response = node.post({"study_instance_uid": prior.StudyInstanceUID, "requester": "radiologist",
                              "hypothesis": "The left pleural effusion worsens."})  # as the Orthanc plugin asks
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        wait_for(lambda: node.job(job_id)["state"] == "running", 180,
                 f"worker 1 on host B to take the job (log: {tmp_path / 'worker-1.log'})", interval=0.05)
        _kill_whole(first)
        killed = node.job(job_id)
        assert killed["state"] == "running" and killed["attempts"] == 1  # killed mid-job: only B generates

        # The task waits, unacknowledged, in Redis; once its visibility timeout has passed, the worker that B's
        # init system starts again takes it (and clears what the dead one left in its scratch space).
        queue = redis.Redis(host=a.watch_address, port=Redis.PORT)
        delivered_at = min(score for _, score in queue.zrange("unacked_index", 0, -1, withscores=True))
        wait_for(lambda: time.time() - delivered_at > VISIBILITY_TIMEOUT, VISIBILITY_TIMEOUT + 5,
                 "the dead worker's task to become visible again", interval=0.5)
        second = _start_worker(b, worker_env, tmp_path / "worker-2.log")
        stack.callback(stop_process, second, 30)
        job = node.wait_until(job_id, {"done", "failed"}, timeout=300)
        assert job["state"] == "done", (job, node.log_tail())
        assert job["attempts"] == 2 and [(d["kind"], d["state"]) for d in job["deliveries"]] == [("dicom", "done")]
        assert sorted(o["kind"] for o in job["results"]["outputs"]) == ["pdf", "report_page", "sc", "sr"]

        in_pacs = collections.Counter(study_sop_uids(orthanc, prior.StudyInstanceUID))
        outputs = {o["sop_instance_uid"] for o in job["results"]["outputs"]}
        assert in_pacs == collections.Counter([prior.SOPInstanceUID, *outputs])  # each output exactly once
        kept = [path for path in b_data.rglob("*") if path.is_file()]
        assert kept == []  # B keeps no patient data (no prior, no result) and no record: the node's audit has them
