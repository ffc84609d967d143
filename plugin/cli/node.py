"""``progemu serve``, ``listen`` and ``worker``: the DICOM node, its parts and its Celery workers."""

from __future__ import annotations

import argparse
import logging
import signal

from plugin.cli.options import add_settings_options, settings
from plugin.errors import UsageError

NODE_FIELDS = ("ae_title", "bind_host", "dicom_port", "peers", "pacs_url", "destination", "fhir_url", "data_dir",
               "database_url", "broker_url", "model_path")
SERVE_FIELDS = (*NODE_FIELDS, "http_port")
WORKER_FIELDS = ("worker_queues", "worker_concurrency", "broker_url", "database_url", "data_dir", "model_path")


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


def _worker(args: argparse.Namespace) -> None:
    config = settings(args)
    if not config.broker_url:
        raise UsageError("`progemu worker` needs a broker: set PROGEMU_BROKER_URL (redis://… or amqp://…); "
                         "without one, `progemu serve` runs its own worker")
    from plugin.delivery import check_settings
    from plugin.tasks import configure

    check_settings(config)

    app = configure(config)
    app.worker_main(["worker", "--queues", ",".join(config.worker_queues), "--concurrency",
                     str(config.worker_concurrency), "--pool", "prefork", "--loglevel",
                     logging.getLevelName(logging.getLogger().getEffectiveLevel()),
                     "--hostname", f"progemu-{'-'.join(config.worker_queues)}@%h"])
