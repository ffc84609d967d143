"""`progemu serve` and `progemu listen`: the listener, the API and an embedded worker in one process."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dicom_io.listener import Listener, ListenerConfig
from plugin.config import Settings
from plugin.errors import UsageError
from plugin.metrics import loaded_models, node_registry
from plugin.orchestrator import Orchestrator
from plugin.tasks import EMBEDDED_BROKER, GPU, IO, CeleryDispatcher, app, configure, embedded_workers, use_node

log = logging.getLogger(__name__)


def build_listener(node: Orchestrator) -> Listener:
    config = node.config
    listener = Listener(ListenerConfig(ae_title=config.ae_title, host=config.bind_host, port=config.dicom_port,
                                       peers=config.peers, max_associations=config.max_associations,
                                       max_pdu_bytes=config.max_pdu_bytes, quiet_seconds=config.study_quiet_seconds,
                                       tls_cert=config.tls_cert, tls_key=config.tls_key, tls_ca=config.tls_ca,
                                       acse_timeout=config.acse_timeout, network_timeout=config.network_timeout,
                                       max_pending_per_host=config.max_pending_per_host),
                        node.spool, on_complete=node.on_study_complete, on_association=node.on_association,
                        is_own_output=node.is_own_output)
    node.listener = listener
    return listener


class Periodic(threading.Thread):
    """Runs one housekeeping step every ``interval`` seconds (the outbox, retention), until stopped."""

    def __init__(self, name: str, action: Callable[[], object], interval: float) -> None:
        super().__init__(name=name, daemon=True)
        self.action, self.interval = action, interval
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                self.action()
            except Exception:  # noqa: BLE001 - e.g. the database is briefly away; try again next round
                log.exception("%s failed", self.name)

    def stop(self) -> None:
        self._halt.set()


def housekeeping(node: Orchestrator) -> list[Periodic]:
    """The outbox sweep (due deliveries to the io queue: it retries whatever a down destination refused), steps
    the broker refused while it was away, and
    retention (requests whose study never came, stale studies and results: plugin.retention)."""
    return [Periodic("outbox sweep", node.sweep_outbox, min(5.0, node.config.delivery_retry_seconds)),
            Periodic("redispatch", node.redispatch, 5.0),
            Periodic("retention sweep", node.retention.sweep, node.config.sweep_interval_seconds)]


@dataclass(frozen=True)
class Dependency:
    """One thing the node relies on, as ``/readyz`` reports it (no addresses: the log has those)."""

    ok: bool
    state: str
    required: bool = True
    """Whether the node is not ready without it (503). The PACS and the model are reported, not required: pushed
    studies need no PACS, and the model loads with the first generation (in whichever process runs the gpu queue)."""
    details: dict[str, Any] = field(default_factory=dict)


def readiness(node: Orchestrator) -> dict[str, Dependency]:
    """The state of each dependency: job store, broker, spool disk and listener (required), PACS and model."""
    listening = node.listener is not None and node.listener.running
    return {"job_store": _job_store(node), "broker": _broker(node), "spool": _spool(node),
            "listener": Dependency(listening, "running" if listening else "not running"),
            "pacs": _pacs(node), "model": _model()}


def _job_store(node: Orchestrator) -> Dependency:
    try:
        node.store.ping()
    except Exception as exc:  # noqa: BLE001 - whatever the driver raises, the store is not usable
        return Dependency(False, f"unreachable ({type(exc).__name__})")
    return Dependency(True, "ok")


def _broker(node: Orchestrator) -> Dependency:
    if not node.config.broker_url:
        return Dependency(True, "embedded")
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:  # noqa: BLE001 - kombu's OperationalError, a refused connection, a timeout...
        return Dependency(False, f"unreachable ({type(exc).__name__})")
    return Dependency(True, "ok")


def _spool(node: Orchestrator) -> Dependency:
    spool = node.spool
    details = {"spool_bytes": spool.used_bytes, "limit_bytes": spool.max_bytes}
    try:
        with tempfile.NamedTemporaryFile(dir=spool.root):
            pass
        details["disk_free_bytes"] = shutil.disk_usage(spool.root).free
    except OSError as exc:
        return Dependency(False, f"not writable ({exc.strerror})", details=details)
    if spool.room_bytes() == 0:
        return Dependency(False, "full", details=details)
    return Dependency(True, "writable", details=details)


def _pacs(node: Orchestrator) -> Dependency:
    reachable = node.retriever.reachable()
    if reachable is None:
        return Dependency(True, "not configured", required=False)
    return Dependency(reachable, "reachable" if reachable else "unreachable", required=False)


def _model() -> Dependency:
    loaded = loaded_models()
    return Dependency(bool(loaded), "loaded" if loaded else "not loaded in this process", required=False,
                      details={"checkpoints": loaded} if loaded else {})


def serve(config: Settings, *, with_api: bool = True) -> None:
    """Run until SIGINT/SIGTERM. Without a broker URL the queue is in memory and a worker runs here."""
    configure(config)
    node = Orchestrator(config, CeleryDispatcher())
    use_node(node)
    listener = build_listener(node)
    api = None
    if with_api:
        from plugin.api import create_app

        api = create_app(node, readiness=lambda: readiness(node),  # refuses to start without a client or token
                         metrics=node_registry(node.store, node.spool, config.data_dir, broker=app, queues=(GPU, IO)))
    try:
        listener.start()
    except RuntimeError as exc:  # a peer's host does not resolve: every call from it would be refused
        raise UsageError(str(exc)) from None
    node.audit.application_started()
    embedded = app.conf.broker_url == EMBEDDED_BROKER
    workers = []
    if embedded or with_api:
        # serve always runs the io queue (delivery, retrieval); the gpu queue too unless told otherwise
        workers = embedded_workers(tuple(config.worker_queues) if not embedded else ("gpu", "io"))
        for worker in workers:
            worker.start()
    if embedded:
        node.recover()
    sweepers = housekeeping(node)
    for sweeper in sweepers:
        sweeper.start()
    log.info("progemu node %s up (pid %d, broker %s)", config.ae_title, os.getpid(),
             "embedded" if embedded else "external")
    try:
        if api is not None:
            import uvicorn

            # log_config=None: uvicorn's records go through our handler, in our format (text or JSON)
            uvicorn.Server(uvicorn.Config(api, host=config.bind_host, port=config.http_port, log_level="warning",
                                          access_log=False, log_config=None)).run()
        else:
            threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        for sweeper in sweepers:
            sweeper.stop()
        listener.stop()
        for worker in workers:
            worker.stop()
        node.audit.application_stopped()
        node.audit.close()
        log.info("progemu node stopped")
