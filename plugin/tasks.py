"""Celery: the app, its two queues (gpu: generate; io: retrieve, deliver) and the tasks.

Tasks are acks_late + reject_on_worker_lost, so a worker that dies mid-job has its job
redelivered; each task is idempotent against the job store. The broker is Redis or
RabbitMQ by URL, or, with none configured, an in-process queue for `progemu serve`'s
embedded workers (no broker daemon; unfinished jobs are recovered from the job store).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable

from celery import Celery, signals
from celery.exceptions import SoftTimeLimitExceeded
from celery.worker import WorkController

from plugin import logs
from plugin.config import Settings
from plugin.errors import PermanentError, backoff
from plugin.orchestrator import Orchestrator

log = logging.getLogger(__name__)

GPU, IO = "gpu", "io"
EMBEDDED_BROKER = "memory://"

CELERY_DEFAULTS = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "task_ignore_result": True,
    "task_default_queue": IO,
    "task_routes": {"progemu.generate": {"queue": GPU}, "progemu.retrieve": {"queue": IO},
                    "progemu.deliver": {"queue": IO}},
    "worker_prefetch_multiplier": 1,
    "worker_hijack_root_logger": False,
    "broker_connection_retry_on_startup": True,
    "task_serializer": "json",
    "accept_content": ["json"],
}

app = Celery("progemu", set_as_current=False)
app.conf.update(CELERY_DEFAULTS)


_node: Orchestrator | None = None
_node_pid: int | None = None


class CeleryDispatcher:
    """Sends each step of a job to its queue."""

    def generate(self, job_id: str) -> None:
        generate.delay(job_id)

    def deliver(self, delivery_id: int) -> None:
        deliver.delay(delivery_id)

    def retrieve(self, job_id: str) -> None:
        retrieve.delay(job_id)


def configure(config: Settings) -> Celery:
    """Point the app at the configured broker and limits; the node is built lazily per process."""
    global _node, _node_pid
    settings = _configured(config)
    if app.conf.broker_url and app.conf.broker_url != settings["broker_url"]:
        app._after_fork()  # drop the connection and producer pools of the previous broker (Celery's own reset)
    app.conf.update(settings)
    _node, _node_pid = None, None
    return app


def _configured(config: Settings) -> dict[str, object]:
    """What the node's configuration sets in a Celery app (the app, and each embedded worker's own)."""
    return {"broker_url": config.broker_url or EMBEDDED_BROKER,
            "broker_transport_options": {"visibility_timeout": config.broker_visibility_timeout},
            "task_time_limit": config.task_time_limit,
            "task_soft_time_limit": max(1, config.task_time_limit - 30),
            "progemu_settings": config}


def node() -> Orchestrator:
    """This process's node (model, job store, spool); a forked worker child builds its own."""
    global _node, _node_pid
    if _node is None or _node_pid != os.getpid():
        config = app.conf.get("progemu_settings") or Settings()
        _node, _node_pid = Orchestrator(config, CeleryDispatcher()), os.getpid()
    return _node


def use_node(existing: Orchestrator) -> None:
    """Let the tasks of this process use ``existing`` (serve: the listener's and the API's node)."""
    global _node, _node_pid
    _node, _node_pid = existing, os.getpid()


def _worker_name(task) -> str:
    return f"{task.request.hostname or socket.gethostname()}:{os.getpid()}"


RETRY_FIRST_SECONDS, RETRY_CAP_SECONDS = 5.0, 300.0
"""Backoff of a generation or retrieval that failed transiently (delivery has its own, configured, in the outbox)."""


def _run_step(task, job_id: str, what: str, step: Callable[[], None],
              failure: Callable[[Exception, int], str]) -> None:
    """Run one step of a job: a PermanentError fails the job at once; anything else is retried until
    ``task_retries`` is spent, and then fails the job with ``failure(exc, attempts)`` as the reason."""
    try:
        step()
    except PermanentError as exc:
        node().fail(job_id, str(exc))
    except SoftTimeLimitExceeded:  # `progemu worker` (prefork); threads have the generation's own deadline
        node().fail(job_id, f"{what} exceeded the {node().config.task_time_limit} s time limit")
    except Exception as exc:  # noqa: BLE001 - transient until the retries run out
        attempts = task.request.retries + 1
        if task.request.retries >= node().config.task_retries:
            node().fail(job_id, failure(exc, attempts))
            log.warning("job %s failed after %d attempts", job_id, attempts, exc_info=True)
            return
        delay = backoff(attempts, first=RETRY_FIRST_SECONDS, cap=RETRY_CAP_SECONDS)
        raise task.retry(exc=exc, countdown=delay.total_seconds()) from None


@app.task(bind=True, name="progemu.generate", acks_late=True, reject_on_worker_lost=True)
def generate(self, job_id: str) -> None:
    _run_step(self, job_id, "generation", lambda: node().generate(job_id, worker=_worker_name(self)),
              lambda exc, attempts: f"generation failed after {attempts} attempts: {type(exc).__name__}")


@app.task(bind=True, name="progemu.retrieve", acks_late=True, reject_on_worker_lost=True)
def retrieve(self, job_id: str) -> None:
    _run_step(self, job_id, "retrieval", lambda: node().retrieve(job_id),
              lambda exc, attempts: f"the PACS did not send the study: {exc}")


@app.task(name="progemu.deliver", acks_late=True, reject_on_worker_lost=True)
def deliver(delivery_id: int) -> None:
    node().deliver(delivery_id)  # failures are recorded in the outbox, which schedules the retry


signals.task_prerun.connect(logs.task_started)  # the task's job or delivery id in its log lines
signals.task_postrun.connect(logs.task_finished)


@signals.worker_process_init.connect
def _fresh_connections_after_fork(**_: object) -> None:
    """A forked child must not share the parent's database connections."""
    if _node is not None:
        _node.store.engine.dispose(close=False)


class EmbeddedWorker:
    """A Celery worker in a thread of this process, on the given queues; its threads share the one model.

    Each has a Celery app of its own, configured as :data:`app` (whose shared tasks Celery registers on every app):
    Celery keeps the queues a worker consumes in its app, so two workers of one app would both consume the queues
    of whichever was made last.
    """

    def __init__(self, queues: tuple[str, ...] = (GPU, IO), concurrency: int = 2) -> None:
        self.app = Celery("progemu", set_as_current=False)
        self.app.conf.update(CELERY_DEFAULTS, **_configured(app.conf.get("progemu_settings") or Settings()))
        self.worker = WorkController(app=self.app, pool="threads", concurrency=concurrency, queues=list(queues),
                                     hostname=f"progemu-embedded-{'-'.join(queues)}@{socket.gethostname()}",
                                     without_heartbeat=True, without_mingle=True, without_gossip=True,
                                     loglevel=logging.WARNING)
        self.thread = threading.Thread(target=self.worker.start, name=f"celery-{'-'.join(queues)}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.worker.stop(in_sighandler=False)
        self.thread.join(timeout=10)


EMBEDDED_CONCURRENCY = {GPU: 1, IO: 2}
"""Threads per queue: one generation at a time (they share one model); retrievals and deliveries beside it."""


def embedded_workers(queues: Iterable[str]) -> list[EmbeddedWorker]:
    """One worker per queue, so that a long (or hung) generation never holds up retrieval and delivery.

    :data:`app` becomes Celery's default app first: a worker thread finds a task's app through ``current_app``,
    and without this ``Task.retry()`` would publish to Celery's built-in default broker (amqp://localhost) instead
    of the embedded queue, and the retried job would hang in ``running`` for ever.
    """
    app.set_default()
    return [EmbeddedWorker(queues=(queue,), concurrency=EMBEDDED_CONCURRENCY.get(queue, 1)) for queue in queues]
