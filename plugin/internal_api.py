"""The node's internal API for generation workers on other hosts (:class:`plugin.transfer.HttpTransfer`).

Only clients with the ``worker`` scope may call it (the bearer token is checked by the API's middleware before any
body is read). A worker shares nothing with the node but the broker, the job store and the network, so it:

* ``GET /internal/v1/jobs/{id}/prior``: streams the spooled image the job is to be generated from;
* ``PUT /internal/v1/jobs/{id}/results/{name}?attempt=N``: streams one result file up, written to a part file and
  renamed into the job's results directory once complete (a broken upload leaves nothing; a repeat overwrites);
* ``POST /internal/v1/jobs/{id}/results``: hands over the results record of attempt N, whose files are in place;
  the node then queues the deliveries it decided when it accepted the job;
* ``POST /internal/v1/jobs/{id}/failure``: the job failed on the worker, for the reason given: the node fails it, as
  if it had failed here (its audit trail records it; its study may leave the spool).

409 means the job no longer runs that attempt (a newer one took over, or it ended), 422 that its study holds no
usable prior or the request is malformed. None of it is in the OpenAPI schema: it is no API for integrators.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any, BinaryIO

import anyio.from_thread
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from dicom_io.errors import DicomInputError
from plugin.orchestrator import Orchestrator
from plugin.results import JobResults
from plugin.transfer import FAILURE_REASON_MAX_CHARS, Superseded

log = logging.getLogger(__name__)

HANDOVER_MAX_BYTES = 1 << 20
"""Largest results record, or failure, a worker may hand over (they are a few KiB)."""


class Handover(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attempt: int
    results: JobResults


class Failure(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=FAILURE_REASON_MAX_CHARS)


def _answer(action: Callable[[], Any]) -> Any:
    """Run a node-side step; its refusals become the statuses the worker acts on."""
    try:
        return action()
    except LookupError:
        raise HTTPException(404, "no such job") from None
    except Superseded as exc:
        raise HTTPException(409, str(exc)) from None
    except (DicomInputError, ValueError) as exc:
        raise HTTPException(422, str(exc)) from None


def internal_routes(node: Orchestrator, worker_scope: Callable[..., Any]) -> APIRouter:
    """The routes, each behind ``worker_scope`` (the API's dependency that demands the worker scope)."""
    router = APIRouter(prefix="/internal/v1/jobs/{job_id}", dependencies=[Depends(worker_scope)],
                       include_in_schema=False)

    @router.get("/prior")
    def prior(job_id: str) -> FileResponse:
        return FileResponse(_answer(lambda: node.prior_path(job_id)), media_type="application/dicom")

    @router.put("/results/{name}", status_code=204, max_body_size=node.config.result_max_bytes)
    async def upload(job_id: str, name: str, attempt: Annotated[int, Query(ge=1)], request: Request) -> Response:
        chunks = request.stream()

        async def next_chunk() -> bytes | None:
            return await anext(chunks, None)

        def write(stream: BinaryIO) -> None:  # in a worker thread: the body is read from the event loop
            while (chunk := anyio.from_thread.run(next_chunk)) is not None:
                stream.write(chunk)

        try:
            await run_in_threadpool(_answer, lambda: node.store_result(job_id, attempt, name, write))
        except ClientDisconnect:  # the worker died or lost the node halfway: its part file went with it
            log.info("upload of %s for job %s broken off", name, job_id)
            return Response(status_code=400)
        return Response(status_code=204)

    @router.post("/results", status_code=204, max_body_size=HANDOVER_MAX_BYTES)
    def handover(job_id: str, body: Handover) -> Response:
        _answer(lambda: node.accept_results(job_id, body.attempt, body.results))
        return Response(status_code=204)

    @router.post("/failure", status_code=204, max_body_size=HANDOVER_MAX_BYTES)
    def failure(job_id: str, body: Failure) -> Response:
        _answer(lambda: node.record_failure(job_id, body.reason))
        return Response(status_code=204)

    return router
