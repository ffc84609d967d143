"""Clients of the REST API: named callers, each with its own revocable token and scopes.

A token is random (``secrets.token_urlsafe``), shown once when its client is added and stored only as its SHA-256:
a high-entropy secret needs no slow password hash, and a copy of the database holds no usable token. Revoking keeps
the row, so a name is never given to a second client and every job's ``requester`` keeps meaning one caller. The
table (``api_clients``, revision 0003) lives in the job store's database; opening a :class:`ClientStore` brings that
database to the newest revision, as :class:`plugin.jobs.JobStore` does, so ``progemu clients add`` works before the
node has ever started.

The single ``api_token`` (PROGEMU_API_TOKEN) still authenticates, as the client ``default`` with every scope. It is
deprecated: one shared token cannot be revoked for one caller or tell callers apart in the audit trail.
"""

from __future__ import annotations

import builtins
import datetime as dt
import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import DateTime, String, create_engine, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from plugin import migrations
from plugin.errors import UsageError
from plugin.jobs import Base, Job, JobState, as_utc


class Scope(enum.StrEnum):
    """What a client may do."""

    SUBMIT = "submit"  # create counterfactual requests
    READ = "read"  # read and list requests
    ON_BEHALF = "on-behalf"  # name the end user a request is for (the Orthanc plugin names the Orthanc user)
    WORKER = "worker"  # a generation worker on another host: fetch a running job's prior, upload its results
    METRICS = "metrics"  # read GET /metrics (Prometheus), nothing else


LEGACY_NAME = "default"
"""The client that the deprecated single ``api_token`` stands for; no stored client may take this name."""
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
"""Client names: no ``:``, which separates the client from the user it names in a job's requester."""
MAX_USER_CHARS = 64
"""Longest end-user name an on-behalf client may give: ``<client>:<user>`` fits the job's 128-character requester."""
WAITING_OR_RUNNING = (JobState.QUEUED, JobState.RECEIVING, JobState.RUNNING)
"""The jobs a quota counts: a delivering job has its results and only waits on its destination."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ApiClientRow(Base):
    """One client as stored (revision 0003); on the job store's ``Base`` so that its metadata is the whole schema."""

    __tablename__ = "api_clients"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[str] = mapped_column(String(200))  # space-separated, as in OAuth
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class ApiClient:
    """An authenticated caller of the API (a detached snapshot of its row)."""

    name: str
    scopes: frozenset[Scope]
    created_at: dt.datetime | None = None
    revoked_at: dt.datetime | None = None

    @classmethod
    def of(cls, row: ApiClientRow) -> ApiClient:
        return cls(row.name, frozenset(Scope(s) for s in row.scopes.split()), as_utc(row.created_at),
                   as_utc(row.revoked_at))

    def requester(self, user: str | None = None) -> str:
        """What a job records as its requester: the client, or ``<client>:<user>`` for a user it acts for."""
        return f"{self.name}:{user}" if user else self.name


LEGACY_CLIENT = ApiClient(LEGACY_NAME, frozenset(Scope))


class ClientStore:
    """The API's clients in the job store's database, and the counts its quotas need."""

    def __init__(self, url: str, *, legacy_token: str | None = None) -> None:
        is_sqlite = url.startswith("sqlite")
        self.engine = create_engine(url, pool_pre_ping=True,
                                    connect_args={"check_same_thread": False, "timeout": 30} if is_sqlite else {})
        with self.engine.begin() as connection:
            migrations.upgrade(connection)  # the table is revision 0003: a store opened first creates it
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._legacy = legacy_token.encode() if legacy_token else None

    def dispose(self) -> None:
        self.engine.dispose()

    def add(self, name: str, scopes: Iterable[Scope | str]) -> tuple[ApiClient, str]:
        """Add a client; return it and its token, which exists nowhere else afterwards."""
        if not NAME_PATTERN.match(name):
            raise UsageError(f"invalid client name {name!r}: 1-63 letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit")
        if name == LEGACY_NAME:
            raise UsageError(f"the name {LEGACY_NAME!r} is the deprecated PROGEMU_API_TOKEN's; choose another")
        try:
            chosen = sorted({Scope(scope) for scope in scopes})
        except ValueError:
            raise UsageError(f"unknown scope; the scopes are {', '.join(Scope)}") from None
        if not chosen:
            raise UsageError("a client needs at least one scope")
        token = secrets.token_urlsafe(32)
        row = ApiClientRow(name=name, token_hash=_digest(token), scopes=" ".join(chosen))
        try:
            with self._session.begin() as session:
                session.add(row)
        except IntegrityError:
            raise UsageError(f"a client named {name!r} exists or existed (the names of revoked clients are not "
                             "given again, so that job records keep naming one caller)") from None
        return ApiClient.of(row), token

    def revoke(self, name: str) -> ApiClient:
        """Revoke a client: its token stops working at once (every request is checked against the store)."""
        with self._session.begin() as session:
            row = session.get(ApiClientRow, name)
            if row is None:
                raise UsageError(f"no client named {name!r}")
            if row.revoked_at is None:
                row.revoked_at = _now()
            return ApiClient.of(row)

    def list(self) -> builtins.list[ApiClient]:
        with self._session() as session:
            return [ApiClient.of(row) for row in session.scalars(select(ApiClientRow).order_by(ApiClientRow.name))]

    def has_active(self) -> bool:
        query = select(ApiClientRow.name).where(ApiClientRow.revoked_at.is_(None)).limit(1)
        with self._session() as session:
            return session.scalar(query) is not None

    def authenticate(self, token: str) -> ApiClient | None:
        """The client whose token this is, if it is not revoked (None otherwise)."""
        if self._legacy is not None and hmac.compare_digest(token.encode(), self._legacy):
            return LEGACY_CLIENT
        digest = _digest(token)
        with self._session() as session:
            row = session.scalar(select(ApiClientRow).where(ApiClientRow.token_hash == digest,
                                                            ApiClientRow.revoked_at.is_(None)))
            if row is None or not hmac.compare_digest(row.token_hash, digest):
                return None
            return ApiClient.of(row)

    def active_jobs(self, client: str | None = None) -> int:
        """Jobs waiting or running: all of them, or those of one client (its own and those it made for users)."""
        query = select(func.count()).select_from(Job).where(Job.state.in_(WAITING_OR_RUNNING))
        if client is not None:
            query = query.where(or_(Job.requester == client, Job.requester.startswith(f"{client}:", autoescape=True)))
        with self._session() as session:
            return session.scalar(query) or 0
