"""The job store's schema migrations on SQLite and PostgreSQL: 0.1 databases keep their jobs, head matches the model."""

from __future__ import annotations

import datetime as dt
import itertools
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, create_engine, inspect

from plugin import migrations
from plugin.cli import main
from plugin.config import Settings
from plugin.jobs import Base, JobStore, NewJob
from tests.support.databases import postgres_database

HEAD = ScriptDirectory.from_config(migrations.config()).get_current_head()

# What `Base.metadata.create_all` of release 0.1 ran (the dialects differ in two types).
RELEASE_0_1_DDL = """
CREATE TABLE jobs (
    id VARCHAR(32) NOT NULL, request_id VARCHAR(128) NOT NULL, study_instance_uid VARCHAR(64) NOT NULL,
    series_instance_uids JSON NOT NULL, hypothesis TEXT NOT NULL, sampler JSON NOT NULL, requester VARCHAR(128),
    source VARCHAR(64) NOT NULL, destination VARCHAR(200), state VARCHAR(16) NOT NULL, reason TEXT,
    worker VARCHAR(200), attempts INTEGER NOT NULL, results JSON, created_at {timestamp} NOT NULL,
    updated_at {timestamp} NOT NULL, PRIMARY KEY (id), UNIQUE (request_id));
CREATE INDEX ix_jobs_state ON jobs (state);
CREATE INDEX ix_jobs_study_instance_uid ON jobs (study_instance_uid);
CREATE TABLE deliveries (
    id {serial} NOT NULL, job_id VARCHAR(32) NOT NULL, kind VARCHAR(16) NOT NULL, target VARCHAR(500) NOT NULL,
    state VARCHAR(16) NOT NULL, attempts INTEGER NOT NULL, last_error TEXT, next_attempt_at {timestamp} NOT NULL,
    delivered_at {timestamp}, created_at {timestamp} NOT NULL, PRIMARY KEY (id), UNIQUE (job_id, kind, target),
    FOREIGN KEY(job_id) REFERENCES jobs (id));
CREATE INDEX ix_deliveries_job_id ON deliveries (job_id);
CREATE INDEX ix_deliveries_state ON deliveries (state);
CREATE TABLE output_series (
    series_instance_uid VARCHAR(64) NOT NULL, job_id VARCHAR(32) NOT NULL, PRIMARY KEY (series_instance_uid),
    FOREIGN KEY(job_id) REFERENCES jobs (id));
"""
TYPES_0_1 = {"sqlite": {"timestamp": "DATETIME", "serial": "INTEGER"},
             "postgresql": {"timestamp": "TIMESTAMP WITH TIME ZONE", "serial": "SERIAL"}}
CREATED = dt.datetime(2026, 3, 1, 9, 30, tzinfo=dt.UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def new_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Makes empty databases of one kind, as job-store URLs."""
    numbers = itertools.count()
    with ExitStack() as databases:
        def make() -> str:
            if request.param == "sqlite":
                data_dir = tmp_path / f"db{next(numbers)}"
                data_dir.mkdir()
                return Settings(data_dir=data_dir).resolved_database_url()
            return Settings(database_url=databases.enter_context(postgres_database())).resolved_database_url()

        yield make


@pytest.fixture
def url(new_database: Callable[[], str]) -> str:
    return new_database()


def _release_0_1_database(url: str) -> None:
    """A job store as 0.1 left it: its DDL, one job, one pending delivery and one output series."""
    engine = create_engine(url)
    with engine.begin() as connection:
        for statement in RELEASE_0_1_DDL.format(**TYPES_0_1[engine.dialect.name]).split(";"):
            if statement.strip():
                connection.exec_driver_sql(statement)
        tables = MetaData()
        tables.reflect(connection)
        connection.execute(tables.tables["jobs"].insert().values(
            id="a" * 32, request_id="old-request", study_instance_uid="1.2.3", series_instance_uids=["1.2.3.4"],
            hypothesis="The effusion worsens.", sampler={"seed": 7}, requester="dr-a", source="api",
            destination="PACS", state="delivering", attempts=1, created_at=CREATED, updated_at=CREATED))
        connection.execute(tables.tables["deliveries"].insert().values(
            job_id="a" * 32, kind="dicom", target="PACS", state="pending", attempts=0, next_attempt_at=CREATED,
            created_at=CREATED))
        connection.execute(tables.tables["output_series"].insert().values(series_instance_uid="1.2.3.9",
                                                                           job_id="a" * 32))
    engine.dispose()


def _schema(url: str) -> dict[str, Any]:
    """The reflected schema, per table: columns, keys, indexes, unique constraints; and the revision."""
    engine = create_engine(url)
    with engine.connect() as connection:
        inspector = inspect(connection)
        schema: dict[str, Any] = {"revision": migrations.revision(connection)}
        for table in sorted(set(inspector.get_table_names()) - {"alembic_version"}):
            schema[table] = (
                [(c["name"], str(c["type"]), c["nullable"], c.get("default")) for c in inspector.get_columns(table)],
                inspector.get_pk_constraint(table)["constrained_columns"],
                sorted((fk["constrained_columns"], fk["referred_table"], fk["referred_columns"])
                       for fk in inspector.get_foreign_keys(table)),
                sorted((i["name"], i["column_names"], i["unique"]) for i in inspector.get_indexes(table)),
                sorted((u["name"], u["column_names"]) for u in inspector.get_unique_constraints(table)))
    engine.dispose()
    return schema


def _request(request_id: str, **overrides: Any) -> NewJob:
    return NewJob(request_id=request_id, study_instance_uid="1.2.3", hypothesis="The effusion resolves.",
                  sampler={"seed": 1}, source="api", **overrides)


def test_a_0_1_database_is_stamped_upgraded_and_keeps_its_jobs(url: str) -> None:
    _release_0_1_database(url)
    store = JobStore(url)
    try:
        assert store.schema_revision == HEAD
        old = store.require("a" * 32)
        assert (old.request_id, old.series_instance_uids, old.sampler, old.requester, old.state, old.created_at) == (
            "old-request", ("1.2.3.4",), {"seed": 7}, "dr-a", "delivering", CREATED)
        assert old.allow_out_of_distribution is False
        assert [(d.kind, d.target, d.state) for d in old.deliveries] == [("dicom", "PACS", "pending")]
        assert store.claim_due_deliveries(dt.timedelta(minutes=1)) == [old.deliveries[0].id]
        assert store.is_output_series("1.2.3.9")

        new, created = store.submit(_request("new-request", allow_out_of_distribution=True))
        assert created and new.allow_out_of_distribution is True
        assert store.require(new.id).allow_out_of_distribution is True
        assert store.submit(_request("default-request"))[0].allow_out_of_distribution is False
    finally:
        store.dispose()


def test_opening_an_upgraded_store_again_changes_nothing(url: str) -> None:
    _release_0_1_database(url)
    JobStore(url).dispose()
    before = _schema(url)
    store = JobStore(url)
    try:
        assert store.schema_revision == HEAD
        assert [job.request_id for job in store.list()] == ["old-request"]
    finally:
        store.dispose()
    assert _schema(url) == before


def test_revision_1_is_the_0_1_schema(new_database: Callable[[], str]) -> None:
    released, migrated = new_database(), new_database()
    _release_0_1_database(released)
    engine = create_engine(migrated)
    with engine.begin() as connection:
        command.upgrade(migrations.config(connection), migrations.BASELINE)
    engine.dispose()
    assert _schema(migrated) == {**_schema(released), "revision": migrations.BASELINE}


def test_a_fresh_database_gets_head_which_is_the_model(url: str) -> None:
    store = JobStore(url)
    store.dispose()
    assert store.schema_revision == HEAD
    engine = create_engine(url)
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    engine.dispose()


def test_every_revision_downgrades(url: str) -> None:
    JobStore(url).dispose()
    engine = create_engine(url)
    with engine.begin() as connection:
        command.downgrade(migrations.config(connection), "base")
    with engine.connect() as connection:
        assert set(inspect(connection).get_table_names()) == {"alembic_version"}
    engine.dispose()
    JobStore(url).dispose()
    assert _schema(url)["revision"] == HEAD


def test_stores_opened_at_once_upgrade_once(url: str) -> None:
    """Processes starting together (here: threads, each with its own engine) must not both create the tables."""
    starting = threading.Barrier(4)
    revisions: list[str] = []
    errors: list[BaseException] = []

    def open_store() -> None:
        starting.wait()
        try:
            store = JobStore(url)
            revisions.append(store.schema_revision)
            store.dispose()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert revisions == [HEAD] * 4


def test_db_upgrade_prints_the_revision(url: str, capsys: pytest.CaptureFixture) -> None:
    _release_0_1_database(url)
    assert main(["db", "upgrade", "--database-url", url]) == 0
    assert capsys.readouterr().out.strip() == HEAD
    assert _schema(url)["revision"] == HEAD


def test_db_upgrade_defaults_to_sqlite_in_the_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROGEMU_DATABASE_URL", raising=False)
    monkeypatch.delenv("PROGEMU_CONFIG", raising=False)
    assert main(["db", "upgrade", "--data-dir", str(tmp_path / "data")]) == 0
    assert capsys.readouterr().out.strip() == HEAD
    assert (tmp_path / "data" / "jobs.sqlite").is_file()
