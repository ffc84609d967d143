"""The Celery tasks' classification of failures (permanent fails the job at once, transient retries with backoff),
and the embedded workers of `progemu serve`: generation never holds up retrieval and delivery."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from plugin.config import Settings
from plugin.errors import PacsNotConfigured, backoff
from plugin.jobs import JobState, NewJob
from plugin.orchestrator import Orchestrator
from plugin.tasks import (
    RETRY_CAP_SECONDS,
    RETRY_FIRST_SECONDS,
    CeleryDispatcher,
    _run_step,
    configure,
    embedded_workers,
    use_node,
)


class _Retry(Exception):
    pass


def _task(retries: int) -> SimpleNamespace:
    def retry(exc: Exception, countdown: float) -> _Retry:
        return _Retry(exc, countdown)

    return SimpleNamespace(request=SimpleNamespace(retries=retries), retry=retry)


@pytest.fixture
def job(tmp_path: Path) -> tuple[Orchestrator, str]:
    config = Settings(data_dir=tmp_path, task_retries=2)
    configure(config)
    node = Orchestrator(config, CeleryDispatcher())
    use_node(node)
    created, _ = node.store.submit(NewJob(request_id="r", study_instance_uid="1.2.3", hypothesis="h", sampler={},
                                          source="test"))
    return node, created.id


def test_a_permanent_error_fails_the_job_at_once(job: tuple[Orchestrator, str]) -> None:
    node, job_id = job

    def step() -> None:
        raise PacsNotConfigured("no PACS is configured to retrieve the study from")

    _run_step(_task(retries=0), job_id, "retrieval", step, lambda exc, n: "unused")
    stored = node.store.get(job_id)
    assert stored.state == JobState.FAILED and stored.reason == "no PACS is configured to retrieve the study from"


def test_a_transient_error_is_retried_with_backoff_then_fails_with_the_reason(job: tuple[Orchestrator, str]) -> None:
    node, job_id = job

    def step() -> None:
        raise ConnectionResetError("peer went away")

    for retries in (0, 1):
        with pytest.raises(_Retry) as raised:
            _run_step(_task(retries), job_id, "generation", step, lambda exc, n: f"failed after {n}")
        countdown = raised.value.args[1]
        assert countdown == backoff(retries + 1, first=RETRY_FIRST_SECONDS, cap=RETRY_CAP_SECONDS).total_seconds()
        assert node.store.get(job_id).state == JobState.QUEUED
    _run_step(_task(retries=2), job_id, "generation", step, lambda exc, n: f"failed after {n}: {type(exc).__name__}")
    stored = node.store.get(job_id)
    assert stored.state == JobState.FAILED and stored.reason == "failed after 3: ConnectionResetError"


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff(n, first=5, cap=300).total_seconds() for n in (1, 2, 3, 10)] == [5, 10, 20, 300]


@pytest.mark.integration
def test_deliveries_and_retrievals_go_on_while_generations_hang(tmp_path: Path) -> None:
    """`progemu serve`'s two worker threads served both queues: two hung generations stopped every delivery."""
    config = Settings(data_dir=tmp_path)
    configure(config)  # the embedded in-memory broker, as `progemu serve` runs without a broker URL
    node = Orchestrator(config, CeleryDispatcher())
    use_node(node)
    release, generating = threading.Event(), threading.Semaphore(0)
    delivered, retrieved = threading.Event(), threading.Event()

    def hung_generation(job_id: str, worker: str) -> None:
        generating.release()
        release.wait(30)

    node.generate = hung_generation  # type: ignore[method-assign]
    # only these: the in-memory queue may still hold other tests' tasks
    node.deliver = lambda delivery_id: delivery_id == 4242 and delivered.set()  # type: ignore[method-assign]
    node.retrieve = lambda job_id: job_id == "job-9" and retrieved.set()  # type: ignore[method-assign]
    workers = embedded_workers(("gpu", "io"))
    for worker in workers:
        worker.start()
    try:
        for n in range(3):
            node.dispatcher.generate(f"job-{n}")
        assert generating.acquire(timeout=20)  # one generation runs (and hangs), the others wait their turn
        node.dispatcher.deliver(4242)
        node.dispatcher.retrieve("job-9")
        assert delivered.wait(20) and retrieved.wait(20)
    finally:
        release.set()
        for worker in workers:
            worker.stop()
