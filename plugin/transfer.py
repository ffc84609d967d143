"""How a generation worker gets a job's prior and hands its results back to the node: one interface, two channels.

* :class:`LocalTransfer`: the worker runs beside the node's data directory (``progemu serve``'s embedded worker, or
  ``progemu worker`` on the node's host): it reads the prior from the spool and the results are written into the
  node's results directory, both through the node's own methods (:class:`NodeSide`).
* :class:`HttpTransfer`: the worker runs on another host (``PROGEMU_NODE_URL``, ``PROGEMU_NODE_TOKEN``) and shares
  only the broker, the job store and the network with the node. It streams the prior from the node's internal API
  into its scratch directory and streams each result file up (:mod:`plugin.internal_api`), then hands the results
  record over; the node decides what happens next (deliveries, retention), as it does for a local worker. A job
  that fails on such a worker is failed by the node too (the failure is handed over with its reason): the node's
  audit trail stays the one record of how every job ended.

Every upload names the worker's attempt at the job: the node takes files and results only from the attempt the job
store says is running, written to a part file and renamed into place. A worker that dies halfway leaves nothing
visible; the redelivered task is a new attempt, which starts over and overwrites whatever the old one left.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO, Protocol

import httpx

from plugin.config import Settings
from plugin.errors import PermanentError, PermanentJobError, TransientError
from plugin.jobs import JobView
from plugin.results import FileKind, JobResults

log = logging.getLogger(__name__)

FAILURE_REASON_MAX_CHARS = 2000
"""Longest reason a worker hands over with a failure (longer ones are cut)."""
CHUNK_BYTES = 1 << 20
"""What a stream is read and written in: large objects never sit whole in memory."""
TIMEOUT = httpx.Timeout(60.0, connect=10.0)
"""Per read or write of a chunk, not for a whole file."""


class Superseded(PermanentError):
    """The job no longer runs this attempt (a newer one took over, or it ended): this worker stops, quietly."""


class NodeSide(Protocol):
    """What the node does for a generation worker (:class:`plugin.orchestrator.Orchestrator`)."""

    def prior_path(self, job_id: str) -> Path: ...
    def store_result(self, job_id: str, attempt: int, name: str, write: Callable[[BinaryIO], object]) -> None: ...
    def accept_results(self, job_id: str, attempt: int, results: JobResults) -> None: ...
    def record_failure(self, job_id: str, reason: str) -> None: ...


class Transfer(Protocol):
    """A worker's channel to the node."""

    def prior(self, job: JobView, scratch: Path) -> Path:
        """A readable file of the job's prior (in ``scratch`` if it had to be fetched)."""
        ...

    def publish(self, job_id: str, attempt: int, files: Mapping[FileKind, Path], results: JobResults) -> None:
        """Put every file into the job's results directory on the node, then hand over the results record."""
        ...

    def fail(self, job_id: str, reason: str) -> None:
        """Have the node fail the job (it ended without results) and record it; TransientError when the node
        cannot be told."""
        ...


def _copy(source: Path) -> Callable[[BinaryIO], object]:
    def write(stream: BinaryIO) -> None:
        with source.open("rb") as reading:
            shutil.copyfileobj(reading, stream, CHUNK_BYTES)

    return write


class LocalTransfer:
    """The node's own data directory, on this host."""

    def __init__(self, node: NodeSide) -> None:
        self.node = node

    def prior(self, job: JobView, scratch: Path) -> Path:
        return self.node.prior_path(job.id)

    def publish(self, job_id: str, attempt: int, files: Mapping[FileKind, Path], results: JobResults) -> None:
        for path in files.values():
            self.node.store_result(job_id, attempt, path.name, _copy(path))
        self.node.accept_results(job_id, attempt, results)

    def fail(self, job_id: str, reason: str) -> None:
        self.node.record_failure(job_id, reason)


class HttpTransfer:
    """The node's internal API, over the network (:mod:`plugin.internal_api`), as a client with the worker scope."""

    def __init__(self, node_url: str, token: str) -> None:
        self.client = httpx.Client(base_url=node_url.rstrip("/") + "/internal/v1/jobs",
                                   headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT)

    def prior(self, job: JobView, scratch: Path) -> Path:
        target = scratch / "prior.dcm"
        scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            with self.client.stream("GET", f"/{job.id}/prior") as response:
                _check(response, "fetching the prior")
                with target.open("wb") as stream:
                    for chunk in response.iter_bytes(CHUNK_BYTES):
                        stream.write(chunk)
        except httpx.HTTPError as exc:
            raise TransientError(f"fetching the prior from the node failed ({type(exc).__name__})") from None
        return target

    def publish(self, job_id: str, attempt: int, files: Mapping[FileKind, Path], results: JobResults) -> None:
        try:
            for path in files.values():
                with path.open("rb") as stream:  # httpx streams a file in chunks, with its Content-Length
                    _check(self.client.put(f"/{job_id}/results/{path.name}", params={"attempt": attempt},
                                           content=stream), f"uploading {path.name}")
            _check(self.client.post(f"/{job_id}/results", json={"attempt": attempt,
                                                                "results": results.model_dump(mode="json")}),
                   "handing over the results")
        except httpx.HTTPError as exc:
            raise TransientError(f"uploading the results to the node failed ({type(exc).__name__})") from None

    def fail(self, job_id: str, reason: str) -> None:
        try:
            _check(self.client.post(f"/{job_id}/failure", json={"reason": reason[:FAILURE_REASON_MAX_CHARS]}),
                   "handing over the failure")
        except httpx.HTTPError as exc:
            raise TransientError(f"handing over the failure to the node failed ({type(exc).__name__})") from None
        except PermanentError as exc:  # refused (422): the node could not take it, as if it could not be reached
            raise TransientError(str(exc)) from None


def _check(response: httpx.Response, what: str) -> None:
    """409: the attempt was superseded; 422: the job's input can never work; anything else not 2xx is retried."""
    if response.is_success:
        return
    response.read()  # a streamed response's body, for its detail
    try:
        detail = str(response.json().get("detail", ""))
    except (ValueError, AttributeError):  # not JSON, or not an object (a proxy's page)
        detail = ""
    if response.status_code == 409:
        raise Superseded(detail or f"{what}: the node no longer runs this attempt")
    if response.status_code == 422:
        raise PermanentJobError(detail or f"{what}: the node refused it")
    raise TransientError(f"{what}: the node answered {response.status_code}" + (f" ({detail})" if detail else ""))


def transfer_for(config: Settings, node: NodeSide) -> Transfer:
    """The node's internal API when ``node_url`` is set (a worker on another host), else the local data directory."""
    if config.node_url:
        if config.node_token is None:
            raise PermanentError("PROGEMU_NODE_URL is set without PROGEMU_NODE_TOKEN (a client with the worker scope)")
        return HttpTransfer(config.node_url, config.node_token.get_secret_value())
    return LocalTransfer(node)
