"""Container healthcheck of the progemu images (HEALTHCHECK in docker/Dockerfile): exit 0 when healthy.

``node``: the node's REST API answers /healthz. ``worker``: this host's `progemu worker` answers a Celery ping
over the broker, so a worker that lost its broker or hangs turns unhealthy. Both read the service's own settings
(PROGEMU_* variables, PROGEMU_CONFIG), so a port or queue set there is the one checked.
"""

from __future__ import annotations

import socket
import sys
import urllib.request

from plugin.config import Settings

TIMEOUT_SECONDS = 4.0
"""Under the HEALTHCHECK's own --timeout, so that a hung service is reported as unhealthy, not as a timeout."""
ANY_ADDRESS = {"0.0.0.0", "::", ""}


def node_healthy(settings: Settings) -> bool:
    host = "127.0.0.1" if settings.bind_host in ANY_ADDRESS else settings.bind_host
    host = f"[{host}]" if ":" in host else host
    with urllib.request.urlopen(f"http://{host}:{settings.http_port}/healthz", timeout=TIMEOUT_SECONDS) as response:
        return response.status == 200


def worker_healthy(settings: Settings) -> bool:
    from celery import Celery

    if not settings.broker_url:
        return False
    # the name `progemu worker` gives itself (plugin/cli/node.py): its queues and this host
    name = f"progemu-{'-'.join(settings.worker_queues)}@{socket.gethostname()}"
    replies = Celery(broker=settings.broker_url).control.ping(destination=[name], timeout=TIMEOUT_SECONDS)
    return any(name in reply for reply in replies)


CHECKS = {"node": node_healthy, "worker": worker_healthy}


def main(argv: list[str]) -> int:
    [role] = argv
    try:
        healthy = CHECKS[role](Settings())
    except Exception as exc:  # noqa: BLE001 - any failure to get an answer is unhealthy; docker keeps this line
        print(f"{role} unhealthy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if not healthy:
        print(f"{role} unhealthy: no answer", file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
