"""The REST API (FastAPI): create and follow counterfactual requests; health and readiness.

Every /v1 route needs the bearer token. Bad input gets a 4xx whose ``detail`` is one
sentence a user can act on; nothing about the patient goes into it or into the logs.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import uuid
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from dicom_io.spool import UID_PATTERN as SPOOL_UID_PATTERN
from inference.errors import HypothesisError, SamplerSettingsError
from inference.hypothesis import normalise_hypothesis
from inference.sampler import SamplerSettings
from plugin import __version__
from plugin.errors import RetrievalError
from plugin.jobs import DeliveryState, JobState, JobView, NewJob
from plugin.orchestrator import Orchestrator
from plugin.results import PublicResults

log = logging.getLogger(__name__)

UID_PATTERN = f"^{SPOOL_UID_PATTERN}$"


class CounterfactualRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    study_instance_uid: str = Field(pattern=UID_PATTERN, max_length=64, description="the prior's study")
    hypothesis: str = Field(description='e.g. "the left pleural effusion worsens"')
    request_id: str | None = Field(None, pattern=r"^[A-Za-z0-9._:-]{1,128}$",
                                   description="idempotency key: the same id twice makes one job")
    series_instance_uids: list[Annotated[str, Field(pattern=UID_PATTERN, max_length=64)]] = Field(
        default_factory=list, max_length=100, description="only these series (default: the study's CR/DX/SC)")
    requester: str | None = Field(None, max_length=128, description="who asked (kept for audit, never logged)")
    allow_out_of_distribution: bool = Field(False, description="research only: generate even for a prior outside "
                                            "what the model was trained on; recorded in every output")
    seed: int | None = Field(None, description="sampling seed: the same seed gives the same output")
    cfg_scale: float | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None


class DeliveryOut(BaseModel):
    """One delivery of the results, as API callers see it."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    kind: str
    target: str
    state: DeliveryState
    attempts: int
    last_error: str | None
    delivered_at: dt.datetime | None


class CounterfactualOut(BaseModel):
    """A request as API callers see it: every field listed here, nothing else from the job store."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    request_id: str
    study_instance_uid: str
    series_instance_uids: list[str]
    hypothesis: str
    sampler: dict[str, Any]
    requester: str | None
    source: str
    allow_out_of_distribution: bool
    state: JobState
    reason: str | None
    attempts: int
    results: PublicResults | None
    deliveries: list[DeliveryOut]
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, job: JobView) -> CounterfactualOut:
        out = cls.model_validate(job)  # its JobResults pass as PublicResults: replaced by the public part below
        out.results = job.results.public() if job.results else None  # never the internal file paths
        return out


class CounterfactualList(BaseModel):
    items: list[CounterfactualOut]


def create_app(node: Orchestrator, *, readiness: Callable[[], list[str]] | None = None) -> FastAPI:
    """The API over ``node``; ``readiness`` returns what is not ready (empty: ready)."""
    config = node.config
    if config.api_token is None:
        raise ValueError("the API needs a bearer token: set PROGEMU_API_TOKEN (e.g. openssl rand -hex 32)")
    token = config.api_token.get_secret_value().encode()
    bearer = HTTPBearer(auto_error=False)
    api = FastAPI(title="progemu-pacs", version=__version__,
                  description="Counterfactual chest X-ray requests (ProgEmu). Synthetic images, not for diagnosis.")

    def authorised(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), token):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    @api.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'] if p != 'body')}: {e['msg']}"
                             for e in exc.errors())
        return JSONResponse({"detail": problems}, status_code=422)

    @api.post("/v1/counterfactuals", response_model=CounterfactualOut, status_code=201,
              dependencies=[Depends(authorised)], responses={200: {"description": "an existing request (same id)"}})
    def create(body: CounterfactualRequest) -> Any:
        try:
            hypothesis = normalise_hypothesis(body.hypothesis, max_chars=config.max_hypothesis_chars)
            sampler = node.default_sampler(seed=body.seed, cfg_scale=body.cfg_scale, temperature=body.temperature,
                                           top_k=body.top_k, top_p=body.top_p)
            SamplerSettings(**sampler)
        except (HypothesisError, SamplerSettingsError) as exc:
            raise HTTPException(422, str(exc)) from None
        except TypeError:
            raise HTTPException(422, "sampler settings must be numbers") from None
        request_id = body.request_id or uuid.uuid4().hex
        existing = node.store.by_request_id(request_id)
        if existing:
            return JSONResponse(CounterfactualOut.of(existing).model_dump(mode="json"), status_code=200)
        _check_study(node, body.study_instance_uid)
        job, created = node.submit(NewJob(request_id=request_id, study_instance_uid=body.study_instance_uid,
                                          hypothesis=hypothesis, sampler=sampler, source="api",
                                          series_instance_uids=tuple(body.series_instance_uids),
                                          requester=body.requester,
                                          allow_out_of_distribution=body.allow_out_of_distribution))
        log.info("request %s -> job %s (%s)", request_id, job.id, "new" if created else "existing")
        return JSONResponse(CounterfactualOut.of(job).model_dump(mode="json"), status_code=201 if created else 200)

    @api.get("/v1/counterfactuals/{job_id}", response_model=CounterfactualOut, dependencies=[Depends(authorised)])
    def read(job_id: str) -> Any:
        job = node.store.get(job_id)
        if job is None:
            raise HTTPException(404, "no counterfactual request with this id")
        return CounterfactualOut.of(job)

    @api.get("/v1/counterfactuals", response_model=CounterfactualList, dependencies=[Depends(authorised)])
    def list_(study_instance_uid: Annotated[str | None, Query(pattern=UID_PATTERN, max_length=64)] = None,
              state: JobState | None = None, requester: Annotated[str | None, Query(max_length=128)] = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Any:
        jobs = node.store.list(study_instance_uid=study_instance_uid, state=state, requester=requester, limit=limit)
        return CounterfactualList(items=[CounterfactualOut.of(job) for job in jobs])

    @api.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "version": __version__}

    @api.get("/readyz")
    def readyz() -> JSONResponse:
        problems = readiness() if readiness else []
        return JSONResponse({"status": "not ready" if problems else "ready", "problems": problems},
                            status_code=503 if problems else 200)

    return api


def _check_study(node: Orchestrator, study_uid: str) -> None:
    """404 for a study that neither the node nor the PACS holds; 502 when the PACS cannot be asked."""
    if node.spool.has_study(study_uid):
        return
    retriever = node.retriever
    if not retriever.configured:
        raise HTTPException(404, "the study has not been received and no PACS is configured to retrieve it from")
    try:
        found = retriever.exists(study_uid)
    except RetrievalError as exc:
        raise HTTPException(502, str(exc)) from None
    if found is False:
        raise HTTPException(404, "the study is not in the PACS")
