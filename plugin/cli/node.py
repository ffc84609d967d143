"""``progemu serve``, ``listen`` and ``worker``: the DICOM node, its parts and its Celery workers."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import tempfile
from typing import TYPE_CHECKING

from plugin.cli.options import add_settings_options, settings
from plugin.errors import UsageError

if TYPE_CHECKING:
    from plugin.config import Settings

NODE_FIELDS = ("ae_title", "bind_host", "dicom_port", "peers", "pacs_url", "destination", "fhir_url", "data_dir",
               "database_url", "broker_url", "model_path")
SERVE_FIELDS = (*NODE_FIELDS, "http_port")
WORKER_FIELDS = ("worker_queues", "worker_concurrency", "broker_url", "database_url", "data_dir", "model_path",
                 "node_url")
GPU, IO = "gpu", "io"
"""plugin.tasks' queues, spelled out so that a refusal needs no Celery."""


def register(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="run the DICOM node: listener, REST API and an embedded worker")
    add_settings_options(serve, SERVE_FIELDS)
    serve.set_defaults(handler=_serve, with_api=True)

    listen = commands.add_parser("listen",
                                 help="run only the DICOM listener (studies are spooled and handed to workers)")
    add_settings_options(listen, NODE_FIELDS)
    listen.set_defaults(handler=_serve, with_api=False)

    worker = commands.add_parser("worker", help="run a Celery worker (needs PROGEMU_BROKER_URL)")
    add_settings_options(worker, WORKER_FIELDS)
    worker.set_defaults(handler=_worker)


def _serve(args: argparse.Namespace) -> None:
    config = settings(args)
    from plugin.delivery import check_settings
    from plugin.server import serve

    check_settings(config)  # a node that could deliver nothing refuses to start

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop cleanly, as on Ctrl-C
    serve(config, with_api=args.with_api)


def worker_problem(config: Settings) -> str | None:
    """Why a worker with this configuration could not serve its queues (one line), or None."""
    if not config.broker_url:
        return ("`progemu worker` needs a broker: set PROGEMU_BROKER_URL (redis://… or amqp://…); "
                "without one, `progemu serve` runs its own worker")
    if GPU in config.worker_queues and (problem := model_problem(config)):
        return problem
    if config.node_url:
        if config.node_token is None:
            return "PROGEMU_NODE_URL is set without PROGEMU_NODE_TOKEN: add a client with `progemu clients add " \
                   "NAME --scope worker` on the node and give its token"
        if not config.database_url:
            return "a worker on another host needs the node's job store: set PROGEMU_DATABASE_URL (postgresql://…)"
        if IO in config.worker_queues:
            return "the io queue (retrieval, delivery) runs beside the node's data directory (`progemu serve` runs " \
                   "it); a worker with PROGEMU_NODE_URL serves --queues gpu only"
    elif GPU in config.worker_queues and not (config.data_dir / "spool").is_dir():
        return (f"no node's spool in {config.data_dir}: on another host than the node set PROGEMU_NODE_URL and "
                "PROGEMU_NODE_TOKEN; on the node's host, its PROGEMU_DATA_DIR")
    return None


def model_problem(config: Settings) -> str | None:
    """Why the configured model cannot be loaded, found cheaply (files and headers, no weights read), or None."""
    from inference.checkpoint import check_safetensors, weight_files
    from inference.errors import CheckpointError
    from inference.loading import choose_engine, onnx_export_for

    path = config.model_path
    if not path.is_dir():
        return f"no model at {path}: set PROGEMU_MODEL_PATH (--model) to a checkpoint directory"
    try:
        if choose_engine(path, config.engine) == "onnx":
            if onnx_export_for(path) is None:
                return f"the model at {path} has no ONNX export (progemu export-onnx), which engine onnx needs"
        else:
            for weights in weight_files(path):
                check_safetensors(weights)
    except CheckpointError as exc:
        return f"the model cannot be loaded: {exc}"
    return None


def _worker(args: argparse.Namespace) -> None:
    config = settings(args)
    if problem := worker_problem(config):
        raise UsageError(problem)
    if config.metrics_port:  # set before prometheus_client loads: each prefork child then counts into that folder
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="progemu-metrics-")
        from plugin.metrics import serve_worker_metrics

        serve_worker_metrics(config)
    from plugin.delivery import check_settings
    from plugin.tasks import configure

    check_settings(config)

    app = configure(config)
    app.worker_main(["worker", "--queues", ",".join(config.worker_queues), "--concurrency",
                     str(config.worker_concurrency), "--pool", "prefork", "--loglevel",
                     logging.getLevelName(logging.getLogger().getEffectiveLevel()),
                     "--hostname", f"progemu-{'-'.join(config.worker_queues)}@%h"])
