"""The job store (SQLAlchemy): requests, their states, outputs and the delivery outbox.

SQLite by default, PostgreSQL by URL. State changes are conditional updates, so two
workers (or a redelivered task) never move one job backwards. The schema is Alembic's
(:mod:`plugin.migrations`): a store brings its database to the newest revision when it opens it.
"""

from __future__ import annotations

import builtins
import datetime as dt
import enum
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast, overload

from sqlalchemy import (
    JSON,
    Boolean,
    CursorResult,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    false,
    select,
)
from sqlalchemy import update as sql_update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from plugin import migrations
from plugin.results import JobResults


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RECEIVING = "receiving"
    RUNNING = "running"
    DELIVERING = "delivering"
    DONE = "done"
    FAILED = "failed"


ACTIVE_STATES = (JobState.QUEUED, JobState.RECEIVING, JobState.RUNNING, JobState.DELIVERING)
NEEDS_STUDY = (JobState.QUEUED, JobState.RECEIVING, JobState.RUNNING)
"""States of a job that will still read its study from the spool (a delivering job reads only its results)."""
FINISHED = (JobState.DONE, JobState.FAILED)
WAITING_PAGE = 500
"""Waiting jobs are read this many at a time."""
NO_DESTINATION = ("no destination configured: the results stay on the node until results retention removes them "
                  "(set PROGEMU_DESTINATION, send the study from a configured peer, or set PROGEMU_FHIR_URL)")
"""Why a job whose results had nowhere to go failed."""


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(128), unique=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_instance_uids: Mapped[list] = mapped_column(JSON, default=list)
    hypothesis: Mapped[str] = mapped_column(Text)
    sampler: Mapped[dict] = mapped_column(JSON)
    requester: Mapped[str | None] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(64))
    destination: Mapped[str | None] = mapped_column(String(200))
    # the FHIR server for the results, fixed when the node accepts the job (revision 0004)
    fhir_url: Mapped[str | None] = mapped_column(String(500))
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(200))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    results: Mapped[dict | None] = mapped_column(JSON)
    # a research override of the input gate (revision 0002)
    allow_out_of_distribution: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)
    deliveries: Mapped[list[Delivery]] = relationship(back_populates="job", order_by="Delivery.id")


class Delivery(Base):
    """One result bundle to one target; pending rows are the durable outbox."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("job_id", "kind", "target"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "dicom" or "fhir"
    target: Mapped[str] = mapped_column(String(500))
    state: Mapped[str] = mapped_column(String(16), default=DeliveryState.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    job: Mapped[Job] = relationship(back_populates="deliveries")


class OutputSeries(Base):
    """Series we produced: the listener must recognise them and never process them again."""

    __tablename__ = "output_series"

    series_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))


@dataclass(frozen=True)
class NewJob:
    request_id: str
    study_instance_uid: str
    hypothesis: str
    sampler: dict[str, Any]
    source: str
    series_instance_uids: tuple[str, ...] = ()
    requester: str | None = None
    destination: str | None = None
    fhir_url: str | None = None
    allow_out_of_distribution: bool = False


@dataclass(frozen=True)
class DeliveryView:
    """A detached snapshot of one delivery (an outbox row)."""

    id: int
    job_id: str
    kind: str
    target: str
    state: DeliveryState
    attempts: int
    last_error: str | None
    delivered_at: dt.datetime | None
    created_at: dt.datetime

    @classmethod
    def of(cls, item: Delivery) -> DeliveryView:
        return cls(item.id, item.job_id, item.kind, item.target, DeliveryState(item.state), item.attempts,
                   item.last_error, as_utc(item.delivered_at), as_utc(item.created_at))


@dataclass(frozen=True)
class JobView:
    """A detached snapshot of a job and its deliveries."""

    id: str
    request_id: str
    study_instance_uid: str
    series_instance_uids: tuple[str, ...]
    hypothesis: str
    sampler: dict[str, Any]
    requester: str | None
    source: str
    destination: str | None
    fhir_url: str | None
    allow_out_of_distribution: bool
    state: JobState
    reason: str | None
    worker: str | None
    attempts: int
    results: JobResults | None
    created_at: dt.datetime
    updated_at: dt.datetime
    deliveries: tuple[DeliveryView, ...]

    @classmethod
    def of(cls, job: Job) -> JobView:
        results = JobResults.from_stored(job.results) if job.results is not None else None
        return cls(job.id, job.request_id, job.study_instance_uid, tuple(job.series_instance_uids or ()),
                   job.hypothesis, dict(job.sampler), job.requester, job.source, job.destination, job.fhir_url,
                   job.allow_out_of_distribution, JobState(job.state), job.reason, job.worker, job.attempts, results,
                   as_utc(job.created_at), as_utc(job.updated_at), tuple(DeliveryView.of(d) for d in job.deliveries))


@overload
def as_utc(value: dt.datetime) -> dt.datetime: ...
@overload
def as_utc(value: None) -> None: ...


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite returns naive datetimes; everything we store is UTC."""
    return value.replace(tzinfo=dt.UTC) if value is not None and value.tzinfo is None else value


FinishedHook = Callable[["JobView", JobState, str | None], None]
"""(the job as it now is, its final state, the reason)."""


class JobStore:
    """Opening a store brings its schema to the newest revision, so every process may be the first to start."""

    def __init__(self, url: str, *, on_finished: FinishedHook | None = None) -> None:
        self.on_finished = on_finished
        """Told of every job that reaches done or failed, once, whichever path got it there (the audit trail)."""
        is_sqlite = url.startswith("sqlite")
        self.engine = create_engine(url, pool_pre_ping=True,
                                    connect_args={"check_same_thread": False, "timeout": 30} if is_sqlite else {})
        if is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        with self.engine.begin() as connection:
            self.schema_revision = migrations.upgrade(connection)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def dispose(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")

    # --- jobs -------------------------------------------------------------------------------------

    def submit(self, request: NewJob) -> tuple[JobView, bool]:
        """Create the job, or return the existing one for the same request id; the bool says created."""
        existing = self.by_request_id(request.request_id)
        if existing:
            return existing, False
        job = Job(id=uuid.uuid4().hex, request_id=request.request_id, study_instance_uid=request.study_instance_uid,
                  series_instance_uids=list(request.series_instance_uids), hypothesis=request.hypothesis,
                  sampler=request.sampler, requester=request.requester, source=request.source,
                  destination=request.destination, fhir_url=request.fhir_url,
                  allow_out_of_distribution=request.allow_out_of_distribution,
                  state=JobState.QUEUED)
        try:
            with self._session.begin() as session:
                session.add(job)
        except IntegrityError:  # the same request id arrived twice at once
            existing = self.by_request_id(request.request_id)
            if existing is None:
                raise
            return existing, False
        return self.require(job.id), True

    def by_request_id(self, request_id: str) -> JobView | None:
        with self._session() as session:
            job = session.scalar(select(Job).where(Job.request_id == request_id))
            return JobView.of(job) if job else None

    def get(self, job_id: str) -> JobView | None:
        with self._session() as session:
            job = session.get(Job, job_id)
            return JobView.of(job) if job else None

    def require(self, job_id: str) -> JobView:
        """The job, which must exist (LookupError otherwise)."""
        job = self.get(job_id)
        if job is None:
            raise LookupError(f"no job {job_id}")
        return job

    def list(self, *, study_instance_uid: str | None = None, state: str | None = None,
             requester: str | None = None, limit: int = 100) -> builtins.list[JobView]:
        query = select(Job).order_by(Job.created_at.desc()).limit(limit)
        if study_instance_uid:
            query = query.where(Job.study_instance_uid == study_instance_uid)
        if state:
            query = query.where(Job.state == state)
        if requester:
            query = query.where(Job.requester == requester)
        with self._session() as session:
            return [JobView.of(job) for job in session.scalars(query)]

    def transition(self, job_id: str, state: JobState, *, expect: Iterable[JobState],
                   reason: str | None = None, **fields: Any) -> bool:
        """Move a job to ``state`` if it is in one of ``expect``; False when it was not."""
        values = {"state": state, "updated_at": _now(), "reason": reason, **fields}
        with self._session.begin() as session:
            # an UPDATE statement executes to a CursorResult, which has the rowcount
            result = cast(CursorResult[Any], session.execute(
                sql_update(Job).where(Job.id == job_id, Job.state.in_(builtins.list(expect))).values(**values)))
            moved = result.rowcount == 1
        if moved and state in FINISHED and self.on_finished is not None:
            self.on_finished(self.require(job_id), state, reason)
        return moved

    def count_attempt(self, job_id: str, worker: str) -> int:
        with self._session.begin() as session:
            job = _required(session, Job, job_id)
            job.attempts += 1
            job.worker = worker
            return job.attempts

    def waiting_for(self, study_instance_uid: str, *, page: int = WAITING_PAGE) -> Iterator[JobView]:
        """Every job waiting for the study (receiving or queued), read a page at a time: however many there are."""
        query = select(Job).where(Job.study_instance_uid == study_instance_uid,
                                  Job.state.in_([JobState.RECEIVING, JobState.QUEUED])).order_by(Job.id).limit(page)
        after = ""
        while True:
            with self._session() as session:
                jobs = [JobView.of(job) for job in session.scalars(query.where(Job.id > after))]
            yield from jobs
            if len(jobs) < page:
                return
            after = jobs[-1].id

    def assign_destination(self, job_id: str, destination: str) -> bool:
        """Fix where a job's results go, once: False when the job already has a destination."""
        with self._session.begin() as session:
            result = cast(CursorResult[Any], session.execute(
                sql_update(Job).where(Job.id == job_id, Job.destination.is_(None))
                .values(destination=destination, updated_at=Job.updated_at)))  # not a state change: keep its time
            return result.rowcount == 1

    def needs_study(self, study_instance_uid: str) -> bool:
        """Whether any job will still read this study from the spool."""
        with self._session() as session:
            return session.scalar(select(Job.id).where(Job.study_instance_uid == study_instance_uid,
                                                       Job.state.in_(NEEDS_STUDY)).limit(1)) is not None

    def studies_needed(self) -> set[str]:
        """Every study some job will still read from the spool."""
        with self._session() as session:
            return set(session.scalars(select(Job.study_instance_uid).where(Job.state.in_(NEEDS_STUDY)).distinct()))

    def receiving_since(self, before: dt.datetime) -> builtins.list[JobView]:
        """Jobs that have been waiting for their study since before ``before``."""
        with self._session() as session:
            return [JobView.of(job) for job in session.scalars(
                select(Job).where(Job.state == JobState.RECEIVING, Job.updated_at < before))]

    def active(self) -> builtins.list[JobView]:
        with self._session() as session:
            return [JobView.of(job) for job in session.scalars(select(Job).where(Job.state.in_(ACTIVE_STATES)))]

    # --- outputs ----------------------------------------------------------------------------------

    def finish_generation(self, job_id: str, attempt: int, results: JobResults,
                          deliveries: Sequence[tuple[str, str]]) -> bool:
        """Record the results of generation attempt ``attempt`` and queue their deliveries, moving the job from
        running to delivering, in one transaction; False (and nothing recorded) when the job is no longer running
        that attempt (another attempt superseded it, or it ended)."""
        with self._session.begin() as session:
            result = cast(CursorResult[Any], session.execute(
                sql_update(Job).where(Job.id == job_id, Job.state == JobState.RUNNING, Job.attempts == attempt)
                .values(state=JobState.DELIVERING, reason=None, updated_at=_now(),
                        results=results.model_dump(mode="json"))))
            if result.rowcount != 1:
                return False
            for uid in results.output_series:  # the listener must never process them
                session.merge(OutputSeries(series_instance_uid=uid, job_id=job_id))
            for kind, target in deliveries:
                session.add(Delivery(job_id=job_id, kind=kind, target=target))
        return True

    def is_output_series(self, series_instance_uid: str) -> bool:
        with self._session() as session:
            return session.get(OutputSeries, series_instance_uid) is not None

    # --- the outbox -------------------------------------------------------------------------------

    def claim_due_deliveries(self, lease: dt.timedelta, *, job_id: str | None = None) -> builtins.list[int]:
        """Ids of pending deliveries that are due, each pushed ``lease`` into the future so it is handed out once."""
        now = _now()
        query = select(Delivery).where(Delivery.state == DeliveryState.PENDING)
        if job_id:
            query = query.where(Delivery.job_id == job_id)
        claimed: builtins.list[int] = []
        with self._session.begin() as session:
            for item in session.scalars(query.with_for_update(skip_locked=True)):
                if as_utc(item.next_attempt_at) <= now:
                    item.next_attempt_at = now + lease
                    claimed.append(item.id)
        return claimed

    def release_delivery_claims(self) -> None:
        """Make every pending delivery due now (after a restart, nothing holds the claims any more)."""
        with self._session.begin() as session:
            session.execute(sql_update(Delivery).where(Delivery.state == DeliveryState.PENDING)
                            .values(next_attempt_at=_now()))

    def delivery(self, delivery_id: int) -> tuple[DeliveryView, JobView] | None:
        """A delivery and its job, as detached snapshots."""
        with self._session() as session:
            item = session.get(Delivery, delivery_id)
            return (DeliveryView.of(item), JobView.of(item.job)) if item else None

    def delivery_attempt(self, delivery_id: int, *, error: str | None, retry_in: dt.timedelta | None) -> None:
        """Record one attempt: done when ``error`` is None, else pending again after ``retry_in`` (None: failed)."""
        with self._session.begin() as session:
            item = _required(session, Delivery, delivery_id)
            item.attempts += 1
            item.last_error = error
            if error is None:
                item.state, item.delivered_at = DeliveryState.DONE, _now()
            elif retry_in is None:
                item.state = DeliveryState.FAILED
            else:
                item.next_attempt_at = _now() + retry_in

    def abandon_deliveries(self, job_id: str, reason: str) -> int:
        """Fail a job's pending deliveries (its results are gone); return how many."""
        with self._session.begin() as session:
            result = cast(CursorResult[Any], session.execute(
                sql_update(Delivery).where(Delivery.job_id == job_id, Delivery.state == DeliveryState.PENDING)
                .values(state=DeliveryState.FAILED, last_error=reason)))
            return result.rowcount

    def settle(self, job_id: str) -> JobState | None:
        """Finish a delivering job once every delivery has settled; return its new state, if any.

        Done means every delivery succeeded: a job with none (no destination, no FHIR server) fails, saying so.
        """
        with self._session() as session:
            states = [d.state for d in session.scalars(select(Delivery).where(Delivery.job_id == job_id))]
        if any(state == DeliveryState.PENDING for state in states):
            return None
        if not states:
            moved = self.transition(job_id, JobState.FAILED, expect=[JobState.DELIVERING], reason=NO_DESTINATION)
            return JobState.FAILED if moved else None
        failed = [state for state in states if state == DeliveryState.FAILED]
        if failed:
            moved = self.transition(job_id, JobState.FAILED, expect=[JobState.DELIVERING],
                                    reason=f"{len(failed)} of {len(states)} deliveries failed")
            return JobState.FAILED if moved else None
        return JobState.DONE if self.transition(job_id, JobState.DONE, expect=[JobState.DELIVERING]) else None


RowT = TypeVar("RowT", bound=Base)


def _required(session: Session, model: type[RowT], key: object) -> RowT:
    """The row with primary key ``key``, which must exist: a missing one is a bug (LookupError)."""
    row = session.get(model, key)
    if row is None:
        raise LookupError(f"no {model.__name__.lower()} {key}")
    return row


def _sqlite_pragmas(connection, _record) -> None:
    """WAL lets the listener, the API and the worker threads read while one writes."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    deadline = time.monotonic() + 30
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            # a new database that another process is creating: the switch fails at once instead of waiting
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
