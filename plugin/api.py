"""The REST API (FastAPI): create and follow counterfactual requests; health and readiness.

Every route but /healthz and /readyz needs a client's bearer token (:mod:`plugin.clients`), and each /v1 route a
scope: ``submit`` to create requests, ``read`` to read and list them; /metrics (Prometheus) needs ``metrics``.
A request meets the checks cheapest and least trusting first: the body limit (``api_max_body_bytes``: 413 by
Content-Length before anything else, or as a body without one streams past it), the token (401, before a byte of the
body is read or parsed), the scope (403), the schema (422), the quotas (429 with Retry-After).

The job's requester is the authenticated client's name. A client with the ``on-behalf`` scope (the Orthanc plugin)
may name the end user it acts for in ``requester``; the job records ``<client>:<user>``. Any other client that sends
``requester`` is refused (403) rather than ignored, so that no caller believes a name was recorded that was not.

Bad input gets a 4xx whose ``detail`` is one sentence a user can act on. Nothing about the patient goes into it or
into the logs, and no server address or path either: the caller reads "the PACS could not be reached", the log has
the rest; job reasons and delivery errors are shown with URLs, hosts and paths taken out.

The interactive docs (/docs, /redoc) are off: they load scripts from a CDN into the API's origin. The OpenAPI schema
stays at /openapi.json, behind authentication like the API it describes: client generators and schema-based fuzzers
(e.g. schemathesis) given a token can use it; an anonymous caller learns nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator
from starlette import types as asgi
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers

from dicom_io.spool import UID_PATTERN as SPOOL_UID_PATTERN
from inference.errors import HypothesisError, SamplerSettingsError
from inference.hypothesis import MAX_HYPOTHESIS_CHARS, normalise_hypothesis
from inference.sampler import SamplerSettings
from plugin import __version__
from plugin.clients import MAX_USER_CHARS, ApiClient, ClientStore, Scope
from plugin.config import Settings
from plugin.errors import RetrievalError, UsageError
from plugin.internal_api import internal_routes
from plugin.jobs import DeliveryState, JobState, JobView, NewJob
from plugin.logs import RequestIds
from plugin.metrics import node_registry
from plugin.orchestrator import Orchestrator
from plugin.results import PublicResults

if TYPE_CHECKING:
    from plugin.server import Dependency

log = logging.getLogger(__name__)

UID_PATTERN = f"^{SPOOL_UID_PATTERN}$"
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
"""The only routes without a token: status and reasons, no data."""
MIN_TOKEN_CHARS = 32
"""Shortest PROGEMU_API_TOKEN accepted (``openssl rand -hex 32`` gives 64); the clients' own tokens are 43."""
RETRY_AFTER_SECONDS = 60
"""What a 429 tells a caller to wait: about one generation on a GPU."""
CLIENT_KEY = "progemu.client"
"""Where the authentication middleware leaves the ApiClient in the request's state."""


class CounterfactualRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    study_instance_uid: str = Field(pattern=UID_PATTERN, max_length=64, description="the prior's study")
    hypothesis: str = Field(max_length=MAX_HYPOTHESIS_CHARS, description='e.g. "the left pleural effusion worsens"')
    request_id: str | None = Field(None, pattern=r"^[A-Za-z0-9._:-]{1,128}$",
                                   description="idempotency key: the same id twice makes one job")
    series_instance_uids: list[Annotated[str, Field(pattern=UID_PATTERN, max_length=64)]] = Field(
        default_factory=list, max_length=100, description="only these series (default: the study's CR/DX/SC)")
    requester: str | None = Field(None, min_length=1, max_length=MAX_USER_CHARS, pattern=r"^[^\x00-\x1f\x7f]+$",
                                  description="the end user a client with the on-behalf scope acts for; recorded "
                                  "as <client>:<user> (kept for audit, never logged)")
    allow_out_of_distribution: bool = Field(False, description="research only: generate even for a prior outside "
                                            "what the model was trained on; recorded in every output")
    seed: int | None = Field(None, description="sampling seed: the same seed gives the same output")
    cfg_scale: float | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None


def request_model(max_hypothesis_chars: int) -> type[CounterfactualRequest]:
    """The request schema with this node's hypothesis limit, so that validation and the OpenAPI schema state it."""
    return create_model("CounterfactualRequest", __base__=CounterfactualRequest, hypothesis=(
        str, Field(max_length=max_hypothesis_chars, description='e.g. "the left pleural effusion worsens"')))


# What callers may see of a stored message: URLs, the address of AET@HOST:PORT, host:port and paths are internal.
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()]+")
_PEER_ADDRESS = re.compile(r"@(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}\b")
_HOST_PORT = re.compile(r"\[[0-9A-Fa-f:.]+\](?::\d{1,5})?|(?<![\w.-])(?:localhost|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)"
                        r":\d{1,5}\b")
_PATH = re.compile(r"(?<![\w.])/(?:[\w.-]+/)+[\w.-]*")


def public_text(text: str | None) -> str | None:
    """``text`` without server addresses or paths: "association with PACS@10.0.0.5:104 failed" keeps "PACS"."""
    if text is None:
        return None
    text = _URL.sub("[address]", text)
    text = _PEER_ADDRESS.sub("", text)
    text = _HOST_PORT.sub("[address]", text)
    return _PATH.sub("[path]", text)


class DeliveryOut(BaseModel):
    """One delivery of the results, as API callers see it: the target's AE title or kind, not its address."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    kind: str
    target: str
    state: DeliveryState
    attempts: int
    last_error: str | None
    delivered_at: dt.datetime | None

    @field_validator("target", "last_error")
    @classmethod
    def _public(cls, value: str | None) -> str | None:
        return public_text(value)


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

    @field_validator("reason")
    @classmethod
    def _public(cls, value: str | None) -> str | None:
        return public_text(value)

    @classmethod
    def of(cls, job: JobView) -> CounterfactualOut:
        out = cls.model_validate(job)  # its JobResults pass as PublicResults: replaced by the public part below
        out.results = job.results.public() if job.results else None  # never the internal file paths
        return out


class CounterfactualList(BaseModel):
    items: list[CounterfactualOut]


class BearerAuthentication:
    """Finds the API client of a request's bearer token before anything reads its body; 401 without one.

    ASGI middleware, not a route dependency: FastAPI reads and parses a route's body before its dependencies run,
    so a dependency would have the node parse (and answer 422 to) anyone's JSON.
    """

    def __init__(self, app: asgi.ASGIApp, clients: ClientStore) -> None:
        self.app = app
        self.clients = clients

    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        scheme, token = get_authorization_scheme_param(Headers(scope=scope).get("authorization"))
        client = await run_in_threadpool(self.clients.authenticate, token) \
            if scheme.lower() == "bearer" and token else None
        if client is None:
            response = JSONResponse({"detail": "missing or wrong bearer token"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})[CLIENT_KEY] = client
        await self.app(scope, receive, send)


_bearer = HTTPBearer(auto_error=False)  # declares the scheme in the OpenAPI schema; BearerAuthentication checks it


def needs(scope: Scope) -> Callable[..., ApiClient]:
    """A dependency: the request's client, which must hold ``scope`` (403 otherwise)."""

    def client_with_scope(request: Request,
                          _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> ApiClient:
        client: ApiClient = request.scope["state"][CLIENT_KEY]
        if scope not in client.scopes:
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this client lacks the {scope} scope")
        return client

    return client_with_scope


Submitter = Annotated[ApiClient, Depends(needs(Scope.SUBMIT))]
Reader = Annotated[ApiClient, Depends(needs(Scope.READ))]
MetricsReader = Annotated[ApiClient, Depends(needs(Scope.METRICS))]


def legacy_token(config: Settings) -> str | None:
    """The deprecated single token, refused at start-up when it is short enough to guess."""
    if config.api_token is None:
        return None
    token = config.api_token.get_secret_value()
    if len(token) < MIN_TOKEN_CHARS:
        raise UsageError(f"PROGEMU_API_TOKEN has {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
                         "(e.g. openssl rand -hex 32), or named clients: progemu clients add")
    return token


def create_app(node: Orchestrator, *, readiness: Callable[[], Mapping[str, Dependency]] | None = None,
               clients: ClientStore | None = None, metrics: CollectorRegistry | None = None) -> FastAPI:
    """The API over ``node``; ``readiness`` reports each dependency (the node is ready when every required one is
    ok); ``metrics`` is what /metrics serves (default: the node's job store and disk, no broker).

    Refuses to build (UsageError) with a weak PROGEMU_API_TOKEN, or with neither that token nor an active client.
    """
    config = node.config
    token = legacy_token(config)
    own_store = clients is None
    if clients is None:
        clients = ClientStore(config.resolved_database_url(), legacy_token=token)
    if token is None and not clients.has_active():
        if own_store:
            clients.dispose()
        raise UsageError("the REST API has no client to accept: add one (progemu clients add NAME --scope submit "
                         "--scope read) or set PROGEMU_API_TOKEN (deprecated; e.g. openssl rand -hex 32)")
    store = clients

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if own_store:
            store.dispose()

    api = FastAPI(title="progemu-pacs", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
                  max_body_size=config.api_max_body_bytes,
                  description="Counterfactual chest X-ray requests (ProgEmu). Synthetic images, not for diagnosis.")
    api.add_middleware(BearerAuthentication, clients=clients)
    api.add_middleware(RequestIds)  # outermost: a request refused by the token check has its id too
    registry = metrics if metrics is not None else node_registry(node.store, node.spool, config.data_dir)
    api.include_router(internal_routes(node, needs(Scope.WORKER)))  # generation workers on other hosts
    submitting = threading.Lock()  # a quota check and the submission it allows, one request at a time

    @api.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'] if p != 'body')}: {e['msg']}"
                             for e in exc.errors())
        return JSONResponse({"detail": problems}, status_code=422)

    @api.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        route = getattr(request.scope.get("route"), "path", "?")  # the template: no ids or UIDs from the URL
        log.error("%s %s failed: %s", request.method, route, type(exc).__name__)
        return JSONResponse({"detail": "internal error; the node's log has the details"}, status_code=500)

    def within_quotas(client: ApiClient) -> None:
        mine = clients.active_jobs(client.name)
        if mine >= config.max_jobs_per_client:
            raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                                f"this client has {mine} requests waiting or running, its limit; "
                                "try again when one has finished", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        if clients.active_jobs() >= config.max_queued_jobs:
            raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                                "the node has as many requests waiting or running as it takes; try again later",
                                headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    def create(body: CounterfactualRequest, client: Submitter) -> Any:
        if body.requester is not None and Scope.ON_BEHALF not in client.scopes:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "this client may not name a requester: that needs the "
                                "on-behalf scope (without requester, a request is recorded under the client's name)")
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
        if existing:  # a retry is answered even over quota: it adds nothing
            return JSONResponse(CounterfactualOut.of(existing).model_dump(mode="json"), status_code=200)
        within_quotas(client)  # before asking the PACS, which a client over its quota should not make us do
        _check_study(node, body.study_instance_uid)
        with submitting:
            within_quotas(client)
            job, created = node.submit(NewJob(request_id=request_id, study_instance_uid=body.study_instance_uid,
                                              hypothesis=hypothesis, sampler=sampler, source="api",
                                              series_instance_uids=tuple(body.series_instance_uids),
                                              requester=client.requester(body.requester),
                                              allow_out_of_distribution=body.allow_out_of_distribution))
        log.info("request %s -> job %s (%s)", request_id, job.id, "new" if created else "existing")
        return JSONResponse(CounterfactualOut.of(job).model_dump(mode="json"), status_code=201 if created else 200)

    # validated against this node's hypothesis limit (the static type stays the base class)
    create.__annotations__["body"] = request_model(config.max_hypothesis_chars)
    api.post("/v1/counterfactuals", response_model=CounterfactualOut, status_code=201,
             responses={200: {"description": "an existing request (same id)"}})(create)

    @api.get("/v1/counterfactuals/{job_id}", response_model=CounterfactualOut)
    def read(job_id: str, client: Reader) -> Any:
        job = node.store.get(job_id)
        if job is None:
            raise HTTPException(404, "no counterfactual request with this id")
        if job.results is not None:
            node.audit.results_read(job.id, job.study_instance_uid, client=client.name)
        return CounterfactualOut.of(job)

    @api.get("/v1/counterfactuals", response_model=CounterfactualList)
    def list_(client: Reader,
              study_instance_uid: Annotated[str | None, Query(pattern=UID_PATTERN, max_length=64)] = None,
              state: JobState | None = None, requester: Annotated[str | None, Query(max_length=128)] = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Any:
        jobs = node.store.list(study_instance_uid=study_instance_uid, state=state, requester=requester, limit=limit)
        for job in jobs:
            if job.results is not None:
                node.audit.results_read(job.id, job.study_instance_uid, client=client.name)
        return CounterfactualList(items=[CounterfactualOut.of(job) for job in jobs])

    @api.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "version": __version__}

    @api.get("/readyz")
    def readyz() -> JSONResponse:
        dependencies = readiness() if readiness else {}
        problems = [f"{name}: {d.state}" for name, d in dependencies.items() if d.required and not d.ok]
        return JSONResponse({"status": "not ready" if problems else "ready", "problems": problems,
                             "dependencies": {name: asdict(d) for name, d in dependencies.items()}},
                            status_code=503 if problems else 200)

    @api.get("/metrics", include_in_schema=False)
    def metrics_(_: MetricsReader) -> Response:
        """Prometheus's text format; read when scraped (plugin.metrics)."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

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
        log.warning("asking the PACS for a study failed: %s", exc)  # the PACS's address, for the operator
        raise HTTPException(502, "the PACS could not be reached; try again later") from None
    if found is False:
        raise HTTPException(404, "the study is not in the PACS")
