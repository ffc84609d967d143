"""`progemu serve` and `progemu listen`: the listener, the API and an embedded worker in one process."""

from __future__ import annotations

import logging
import os
import tempfile
import threading

from dicom_io.listener import Listener, ListenerConfig
from plugin.config import Settings
from plugin.orchestrator import Orchestrator
from plugin.tasks import EMBEDDED_BROKER, CeleryDispatcher, EmbeddedWorker, app, configure, use_node

log = logging.getLogger(__name__)


def build_listener(node: Orchestrator) -> Listener:
    config = node.config
    listener = Listener(ListenerConfig(ae_title=config.ae_title, host=config.bind_host, port=config.dicom_port,
                                       peers=config.peers, max_associations=config.max_associations,
                                       max_pdu_bytes=config.max_pdu_bytes, quiet_seconds=config.study_quiet_seconds,
                                       tls_cert=config.tls_cert, tls_key=config.tls_key, tls_ca=config.tls_ca),
                        node.spool, on_complete=node.on_study_complete, is_own_output=node.is_own_output)
    node.listener = listener
    return listener


class OutboxSweeper(threading.Thread):
    """Hands due deliveries to the io queue: the outbox retries whatever a down destination refused."""

    def __init__(self, node: Orchestrator, interval: float) -> None:
        super().__init__(name="outbox", daemon=True)
        self.node, self.interval = node, interval
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.node.sweep_outbox()
            except Exception:  # noqa: BLE001 - e.g. the database is briefly away; try again next round
                log.exception("outbox sweep failed")

    def stop(self) -> None:
        self._stop.set()


def readiness(node: Orchestrator) -> list[str]:
    problems = []
    try:
        node.store.ping()
    except Exception as exc:  # noqa: BLE001
        problems.append(f"job store: {type(exc).__name__}")
    try:
        with tempfile.NamedTemporaryFile(dir=node.spool.root):
            pass
    except OSError as exc:
        problems.append(f"spool not writable: {exc.strerror}")
    if node.config.broker_url:
        try:
            with app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=2)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"broker: {type(exc).__name__}")
    if node.listener is None or not node.listener.running:
        problems.append("DICOM listener not running")
    return problems


def serve(config: Settings, *, with_api: bool = True) -> None:
    """Run until SIGINT/SIGTERM. Without a broker URL the queue is in memory and a worker runs here."""
    configure(config)
    node = Orchestrator(config, CeleryDispatcher())
    use_node(node)
    listener = build_listener(node)
    api = None
    if with_api:
        from plugin.api import create_app

        api = create_app(node, readiness=lambda: readiness(node))  # refuses to start without a token
    listener.start()
    embedded = app.conf.broker_url == EMBEDDED_BROKER
    worker = None
    if embedded or with_api:
        # serve always runs the io queue (delivery, retrieval); the gpu queue too unless told otherwise
        queues = tuple(config.worker_queues) if not embedded else ("gpu", "io")
        worker = EmbeddedWorker(queues=queues)
        worker.start()
    if embedded:
        node.recover()
    sweeper = OutboxSweeper(node, interval=min(5.0, config.delivery_retry_seconds))
    sweeper.start()
    log.info("progemu node %s up (pid %d, broker %s)", config.ae_title, os.getpid(),
             "embedded" if embedded else "external")
    try:
        if api is not None:
            import uvicorn

            uvicorn.Server(uvicorn.Config(api, host=config.bind_host, port=config.http_port, log_level="warning",
                                          access_log=False)).run()
        else:
            threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        sweeper.stop()
        listener.stop()
        if worker is not None:
            worker.stop()
        log.info("progemu node stopped")
