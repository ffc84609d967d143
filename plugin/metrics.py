"""Prometheus metrics: what IT watches and alerts on (the names and labels are listed in docs/node.md).

Two kinds. Counts that happen in a process (generations, model loads, retrieval and delivery attempts) are
prometheus-client metrics defined here and touched by one call where they happen. Facts that live outside any one
process (jobs by state in the job store, tasks waiting in the broker, the spool and the data disk) are read when
Prometheus scrapes, by collectors, so that every process that serves them tells the same truth.

The node serves :func:`node_registry` at ``GET /metrics`` on its API port; ``progemu worker`` serves
:func:`serve_worker_metrics` on a port of its own. A worker's tasks run in prefork children, so its counts go through
prometheus-client's multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` must be set before this module is imported
(``progemu worker`` does that), and its port then adds up every child's files.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from celery import Celery

    from dicom_io.spool import Spool
    from inference.pipeline import Counterfactual, GenerativeModel
    from plugin.config import Settings
    from plugin.jobs import JobStore

log = logging.getLogger(__name__)

GENERATION_SECONDS = Histogram(
    "progemu_generation_seconds", "seconds one generation took (encode, sample every token, decode)",
    buckets=(1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800))
GENERATED_TOKENS = Counter("progemu_generated_tokens", "tokens generated (image and interpretation)")
TOKENS_PER_SECOND = Gauge("progemu_generation_tokens_per_second", "tokens per second of the latest generation",
                          multiprocess_mode="mostrecent")
MODEL_LOAD_SECONDS = Gauge("progemu_model_load_seconds", "seconds the model took to load in this process, "
                           "labelled with the checkpoint it loaded", ["model", "version", "checkpoint_sha256"],
                           multiprocess_mode="mostrecent")


class Attempts:
    """Attempts and failures of one kind of outward call (retrieval, delivery), by kind of target."""

    def __init__(self, what: str) -> None:
        self.attempts = Counter(f"progemu_{what}_attempts", f"{what} attempts, by kind of target", ["kind"])
        self.failures = Counter(f"progemu_{what}_failures", f"{what} attempts that failed, by kind of target",
                                ["kind"])

    def track(self, kind: str) -> None:
        """Start the kind's series at 0, so that rates and failure ratios exist before its first attempt."""
        self.attempts.labels(kind)
        self.failures.labels(kind)

    def attempt(self, kind: str) -> _Attempt:
        """Count one attempt, and a failure if it raises; also a decorator (which tracks the kind at once)."""
        self.track(kind)
        return _Attempt(self, kind)


class _Attempt(contextlib.ContextDecorator):
    def __init__(self, counts: Attempts, kind: str) -> None:
        self.attempts, self.failures = counts.attempts.labels(kind), counts.failures.labels(kind)

    def __enter__(self) -> None:
        self.attempts.inc()

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None and issubclass(kind, Exception):
            self.failures.inc()


RETRIEVALS = Attempts("retrieval")
"""kind: orthanc (its REST API) or dicom (C-MOVE)."""
DELIVERIES = Attempts("delivery")
"""kind: a delivery target's kind (dicom, fhir)."""


def generated(result: Counterfactual) -> None:
    GENERATION_SECONDS.observe(result.seconds)
    GENERATED_TOKENS.inc(result.generated_tokens)
    TOKENS_PER_SECOND.set(result.generated_tokens / result.seconds if result.seconds > 0 else 0.0)


def model_loaded(model: GenerativeModel, seconds: float) -> None:
    MODEL_LOAD_SECONDS.labels(model.spec.name, model.spec.version, model.checkpoint_sha256).set(seconds)


def loaded_models() -> list[dict[str, str]]:
    """The checkpoints this process has loaded (name, version, sha256): what /readyz reports of the model."""
    return [dict(sample.labels) for family in MODEL_LOAD_SECONDS.collect() for sample in family.samples]


# --- read when scraped -------------------------------------------------------------------------------------------

class JobStates:
    """``progemu_jobs{state}``: jobs in the job store by state, counted at each scrape."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        from sqlalchemy import func, select  # here: `progemu counterfactual` imports this module, not the job store

        from plugin.jobs import Job, JobState

        try:
            with self.store.engine.connect() as connection:
                counts = {state: count for state, count in connection.execute(
                    select(Job.state, func.count()).group_by(Job.state))}
        except Exception as exc:  # noqa: BLE001 - the scrape still answers; /readyz names the job store
            log.warning("metrics: the job store could not be read (%s)", type(exc).__name__)
            return
        family = GaugeMetricFamily("progemu_jobs", "jobs in the job store, by state", labels=["state"])
        for state in JobState:
            family.add_metric([state.value], counts.get(state.value, 0))
        yield family


class QueueDepths:
    """``progemu_queue_depth{queue}``: tasks waiting in each broker queue (not those a worker already holds), asked
    of the broker at each scrape: Redis's list length, RabbitMQ's ready count, the embedded queue's size."""

    def __init__(self, broker: Celery, queues: Sequence[str]) -> None:
        self.broker = broker
        self.queues = tuple(queues)

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("progemu_queue_depth", "tasks waiting in each broker queue", labels=["queue"])
        try:
            with self.broker.connection_for_read() as connection:
                connection.ensure_connection(max_retries=1, timeout=2)
                for queue in self.queues:
                    family.add_metric([queue], _depth(connection, queue))
        except Exception as exc:  # noqa: BLE001 - the scrape still answers; /readyz names the broker
            log.warning("metrics: the broker could not be asked (%s)", type(exc).__name__)
            return
        yield family


def _depth(connection: Any, queue: str) -> int:
    with connection.channel() as channel:  # one each: AMQP closes a channel that asked for a missing queue
        try:
            return channel.queue_declare(queue=queue, passive=True).message_count
        except connection.channel_errors:  # never declared: nothing was ever queued there
            return 0


class DataDisk:
    """The data directory's disk, and the spool's bytes against its limit where this process has the spool."""

    def __init__(self, data_dir: Path, spool: Spool | None = None) -> None:
        self.data_dir = data_dir
        self.spool = spool

    def collect(self) -> Iterator[Metric]:
        usage = shutil.disk_usage(self.data_dir)
        yield GaugeMetricFamily("progemu_data_disk_free_bytes", "free bytes on the data directory's disk",
                                value=usage.free)
        yield GaugeMetricFamily("progemu_data_disk_total_bytes", "size of the data directory's disk",
                                value=usage.total)
        if self.spool is not None:
            yield GaugeMetricFamily("progemu_spool_bytes", "bytes of received studies in the spool",
                                    value=self.spool.used_bytes)
            yield GaugeMetricFamily("progemu_spool_limit_bytes", "the spool's limit (spool_max_bytes)",
                                    value=self.spool.max_bytes)


class _Everything:
    """This process's own metrics (the default registry: the ones above, and the process's CPU and memory)."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def node_registry(store: JobStore, spool: Spool, data_dir: Path, *, broker: Celery | None = None,
                  queues: Sequence[str] = ()) -> CollectorRegistry:
    """What the node's ``/metrics`` serves: this process's metrics, the job store, the broker's queues, the disk."""
    registry = CollectorRegistry()
    for collector in (_Everything(), JobStates(store), DataDisk(data_dir, spool)):
        registry.register(collector)
    if broker is not None:
        registry.register(QueueDepths(broker, queues))
    return registry


def serve_worker_metrics(config: Settings) -> None:
    """``progemu worker``'s metrics on ``metrics_port``: every prefork child's counts, and the data disk."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        raise RuntimeError("set PROMETHEUS_MULTIPROC_DIR before plugin.metrics is imported")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(DataDisk(config.data_dir))
    start_http_server(config.metrics_port, addr=config.bind_host, registry=registry)
    log.info("metrics on %s:%d", config.bind_host, config.metrics_port)
