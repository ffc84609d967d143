"""Celery with a real broker (the Redis server running here): `progemu worker` survives losing a process.

Tasks are acks_late and reject_on_worker_lost, so when the worker process running a job
is killed, the job goes back to the queue and another process finishes it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from plugin.config import DEMO_PRIOR, Settings
from plugin.jobs import NO_DESTINATION, JobState, NewJob
from plugin.orchestrator import Orchestrator
from plugin.tasks import CeleryDispatcher, configure
from tests.support.net import stop_process, wait_for


@pytest.mark.integration
def test_a_job_whose_worker_process_is_killed_finishes_after_redelivery(redis_broker: str, tmp_path: Path) -> None:
    config = Settings(data_dir=tmp_path / "data", broker_url=redis_broker)
    configure(config)
    node = Orchestrator(config, CeleryDispatcher())
    prior = pydicom.dcmread(DEMO_PRIOR)
    node.spool.write(prior.StudyInstanceUID, prior.SeriesInstanceUID, prior.SOPInstanceUID, DEMO_PRIOR.read_bytes())
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROGEMU_")}
    env |= {"PROGEMU_BROKER_URL": redis_broker, "PROGEMU_DATA_DIR": str(config.data_dir)}
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen([str(Path(sys.executable).parent / "progemu"), "-v", "worker", "--queues", "gpu,io",
                               "--concurrency", "1"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        job, _ = node.submit(NewJob(request_id="kill-me", study_instance_uid=prior.StudyInstanceUID,
                                    hypothesis="The left pleural effusion worsens.", sampler=node.default_sampler(),
                                    source="test"))
        running = wait_for(lambda: (j := node.store.get(job.id)).state == JobState.RUNNING and j.worker and j, 120,
                           "the worker to start the job", interval=0.01)
        victim = int(running.worker.rsplit(":", 1)[1])
        assert victim != worker.pid  # the prefork child that runs the task, not the supervising process
        os.kill(victim, signal.SIGKILL)
        done = wait_for(lambda: (j := node.store.get(job.id)).state in (JobState.DONE, JobState.FAILED) and j, 120,
                        f"the redelivered job to finish (log {tmp_path / 'worker.log'})", interval=0.2)
        assert done.state == JobState.FAILED and done.reason == NO_DESTINATION  # generated; no peer to return to
        assert done.attempts == 2
        assert int(done.worker.rsplit(":", 1)[1]) != victim
        assert done.results.interpretation
        # The study left the spool when its job ended (retention); with no PACS here, it is sent again.
        node.spool.write(prior.StudyInstanceUID, prior.SeriesInstanceUID, prior.SOPInstanceUID,
                         DEMO_PRIOR.read_bytes())
        second, _ = node.submit(NewJob(request_id="after", study_instance_uid=prior.StudyInstanceUID,
                                       hypothesis="The cardiomegaly improves.", sampler=node.default_sampler(),
                                       source="test"))
        wait_for(lambda: node.store.get(second.id).results, 120, "a second job on the same process")
        assert node.store.get(second.id).worker == done.worker
        after_kill = (tmp_path / "worker.log").read_text().split("WorkerLostError", 1)[1]
        assert after_kill.count("model loaded once for this process") == 1  # two jobs, one load
    finally:
        stop_process(worker, timeout=30)
        log.close()


def test_worker_without_a_broker_says_what_to_set(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROGEMU_")}
    result = subprocess.run([str(Path(sys.executable).parent / "progemu"), "worker"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "PROGEMU_BROKER_URL" in result.stderr
