"""API clients: hashed revocable tokens, scopes, the requester they record, their quotas, their CLI and table."""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect, text

from plugin import migrations
from plugin.api import RETRY_AFTER_SECONDS, create_app
from plugin.cli import clients as clients_cli
from plugin.clients import LEGACY_CLIENT, ClientStore, Scope
from plugin.config import DEMO_PRIOR, Settings
from plugin.errors import UsageError
from plugin.jobs import Base, JobState, JobStore
from plugin.orchestrator import Orchestrator
from plugin.tasks import CeleryDispatcher, configure
from tests.support.databases import postgres_database

LEGACY_TOKEN = "legacy-token-0123456789abcdefghijklmnop"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield Settings(data_dir=tmp_path).resolved_database_url()
    else:
        with postgres_database() as database:
            yield Settings(database_url=database).resolved_database_url()


@pytest.fixture
def store(url: str) -> Iterator[ClientStore]:
    store = ClientStore(url, legacy_token=LEGACY_TOKEN)
    yield store
    store.dispose()


# --- the store ------------------------------------------------------------------------------------------------------

def test_a_token_is_shown_once_and_stored_only_as_its_hash(store: ClientStore, url: str) -> None:
    client, token = store.add("ris", ["submit", Scope.READ])
    assert (client.name, client.scopes, client.revoked_at) == ("ris", frozenset({Scope.SUBMIT, Scope.READ}), None)
    assert len(token) >= 43
    engine = create_engine(url)
    with engine.connect() as connection:
        row = connection.execute(text("SELECT * FROM api_clients")).mappings().one()
    engine.dispose()
    assert token not in [str(value) for value in row.values()]
    assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert store.authenticate(token) == client
    assert store.authenticate(token + "x") is None
    assert store.authenticate(row["token_hash"]) is None  # the stored hash is no token


def test_a_revoked_client_is_refused_at_once_and_its_name_is_not_given_again(store: ClientStore) -> None:
    _, token = store.add("ris", ["submit"])
    revoked = store.revoke("ris")
    assert revoked.revoked_at is not None
    assert store.authenticate(token) is None
    assert [c.name for c in store.list()] == ["ris"]  # kept, for the audit trail
    with pytest.raises(UsageError, match="exists or existed"):
        store.add("ris", ["submit"])
    with pytest.raises(UsageError, match="no client named"):
        store.revoke("nobody")


@pytest.mark.parametrize(("name", "scopes", "message"), [
    ("default", ["read"], "deprecated PROGEMU_API_TOKEN"),
    ("ris:alice", ["read"], "invalid client name"),
    ("", ["read"], "invalid client name"),
    ("x" * 64, ["read"], "invalid client name"),
    ("ris", [], "at least one scope"),
    ("ris", ["admin"], "unknown scope"),
])
def test_bad_clients_are_refused(store: ClientStore, name: str, scopes: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        store.add(name, scopes)


def test_the_legacy_token_is_the_client_default_with_every_scope(store: ClientStore) -> None:
    assert store.authenticate(LEGACY_TOKEN) == LEGACY_CLIENT
    assert LEGACY_CLIENT.name == "default" and LEGACY_CLIENT.scopes == set(Scope)
    plain = ClientStore(str(store.engine.url.render_as_string(hide_password=False)))
    try:
        assert plain.authenticate(LEGACY_TOKEN) is None
    finally:
        plain.dispose()


# --- the schema -----------------------------------------------------------------------------------------------------

def test_the_table_is_revision_0003_of_the_job_store_and_matches_the_model(url: str) -> None:
    head = ScriptDirectory.from_config(migrations.config()).get_current_head()
    JobStore(url).dispose()  # the job store's own upgrade creates it
    engine = create_engine(url)
    with engine.connect() as connection:
        assert migrations.revision(connection) == head
        assert "api_clients" in inspect(connection).get_table_names()
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    with engine.begin() as connection:
        command.downgrade(migrations.config(connection), "0002")
    with engine.connect() as connection:
        assert "api_clients" not in inspect(connection).get_table_names()
    engine.dispose()
    ClientStore(url).dispose()  # a client store opened first brings the database to head too
    engine = create_engine(url)
    with engine.connect() as connection:
        assert migrations.revision(connection) == head
    engine.dispose()


# --- through the API ------------------------------------------------------------------------------------------------

@pytest.fixture
def node(tmp_path: Path) -> Orchestrator:
    config = Settings(data_dir=tmp_path, max_jobs_per_client=2, max_queued_jobs=3)
    configure(config)  # the embedded broker: jobs stay queued, which is what the quotas count
    return Orchestrator(config, CeleryDispatcher())


@pytest.fixture
def node_clients(node: Orchestrator) -> Iterator[ClientStore]:
    store = ClientStore(node.config.resolved_database_url())
    yield store
    store.dispose()


@pytest.fixture
def api(node: Orchestrator, node_clients: ClientStore) -> TestClient:
    node_clients.add("seed", ["read"])  # the API refuses to start with no client at all
    return TestClient(create_app(node))


@pytest.fixture
def study(node: Orchestrator) -> str:
    ds = pydicom.dcmread(DEMO_PRIOR)
    node.spool.write(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, DEMO_PRIOR.read_bytes())
    return ds.StudyInstanceUID


def _as(store: ClientStore, name: str, *scopes: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {store.add(name, scopes)[1]}"}


def _post(api: TestClient, headers: dict, study: str, **fields: object):
    return api.post("/v1/counterfactuals", headers=headers,
                    json={"study_instance_uid": study, "hypothesis": "The effusion worsens.", **fields})


def test_named_clients_work_without_the_legacy_token_and_revocation_is_immediate(
        api: TestClient, node_clients: ClientStore, study: str) -> None:
    ris = _as(node_clients, "ris", "submit", "read")
    created = _post(api, ris, study)
    assert created.status_code == 201, created.text
    assert created.json()["requester"] == "ris"
    assert api.get(f"/v1/counterfactuals/{created.json()['id']}", headers=ris).status_code == 200
    node_clients.revoke("ris")
    assert api.get("/v1/counterfactuals", headers=ris).status_code == 401


def test_each_route_needs_its_scope(api: TestClient, node_clients: ClientStore, study: str) -> None:
    reader, submitter = _as(node_clients, "viewer", "read"), _as(node_clients, "ris", "submit")
    refused = _post(api, reader, study)
    assert refused.status_code == 403 and refused.json()["detail"] == "this client lacks the submit scope"
    assert api.get("/v1/counterfactuals", headers=submitter).status_code == 403
    assert api.get("/v1/counterfactuals/abc", headers=submitter).status_code == 403
    assert api.get("/v1/counterfactuals", headers=reader).status_code == 200


def test_only_an_on_behalf_client_names_the_user(api: TestClient, node_clients: ClientStore, study: str,
                                                 node: Orchestrator) -> None:
    orthanc = _as(node_clients, "orthanc", "submit", "on-behalf")
    made = _post(api, orthanc, study, requester="alice", request_id="o-1")
    assert made.status_code == 201 and made.json()["requester"] == "orthanc:alice"
    assert _post(api, orthanc, study, request_id="o-2").json()["requester"] == "orthanc"
    ris = _as(node_clients, "ris", "submit")
    refused = _post(api, ris, study, requester="alice")
    assert refused.status_code == 403 and "on-behalf scope" in refused.json()["detail"]
    assert [job.requester for job in node.store.list()] == ["orthanc", "orthanc:alice"]


def test_quotas_per_client_and_for_the_node_answer_429_with_retry_after(
        api: TestClient, node_clients: ClientStore, node: Orchestrator, study: str) -> None:
    orthanc, ris = _as(node_clients, "orthanc", "submit", "on-behalf"), _as(node_clients, "ris", "submit")
    assert _post(api, orthanc, study, request_id="a", requester="alice").status_code == 201
    assert _post(api, orthanc, study, request_id="b", requester="bob").status_code == 201  # users count for it
    over = _post(api, orthanc, study, request_id="c")
    assert over.status_code == 429 and over.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
    assert "this client has 2 requests waiting or running" in over.json()["detail"]
    assert _post(api, orthanc, study, request_id="a").status_code == 200  # a retry is answered, not counted
    assert _post(api, ris, study, request_id="d").status_code == 201  # another client has its own quota
    full = _post(api, ris, study, request_id="e")
    assert full.status_code == 429 and "the node has as many requests" in full.json()["detail"]
    assert full.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
    first = node.store.by_request_id("a")
    assert first is not None
    node.store.transition(first.id, JobState.DELIVERING, expect=[JobState.QUEUED])  # done generating: not counted
    assert _post(api, orthanc, study, request_id="f").status_code == 201
    assert len(node.store.list()) == 4


def test_a_client_name_with_like_wildcards_counts_only_its_own_jobs(node: Orchestrator,
                                                                    node_clients: ClientStore) -> None:
    from plugin.jobs import NewJob

    for request_id, requester in (("1", "r_s"), ("2", "r_s:alice"), ("3", "ris"), ("4", "ris:bob"), ("5", "r%s")):
        node.store.submit(NewJob(request_id=request_id, study_instance_uid="1.2.3", hypothesis="h", sampler={},
                                 source="api", requester=requester))
    assert node_clients.active_jobs("r_s") == 2
    assert node_clients.active_jobs("ris") == 2
    assert node_clients.active_jobs() == 5


# --- the CLI --------------------------------------------------------------------------------------------------------

def _run(*argv: str) -> None:
    parser = argparse.ArgumentParser(prog="progemu")
    clients_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.handler(args)


def test_cli_adds_lists_and_revokes(tmp_path: Path, capsys: pytest.CaptureFixture,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PROGEMU_DATABASE_URL", "PROGEMU_CONFIG", "PROGEMU_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    data = ["--data-dir", str(tmp_path / "data")]
    _run("clients", "add", "ris", "--scope", "submit", "--scope", "read", *data)
    out, err = capsys.readouterr()
    token = out.strip()
    assert "\n" not in token and "shown only now" in err
    store = ClientStore(Settings(data_dir=tmp_path / "data").resolved_database_url())
    try:
        client = store.authenticate(token)
        assert client is not None and client.name == "ris"
        _run("clients", "list", *data)
        assert capsys.readouterr().out.startswith("ris\tread submit\tcreated ")
        _run("clients", "revoke", "ris", *data)
        assert "revoked" in capsys.readouterr().out
        assert store.authenticate(token) is None
    finally:
        store.dispose()
    with pytest.raises(UsageError, match="exists or existed"):
        _run("clients", "add", "ris", "--scope", "read", *data)
    with pytest.raises(SystemExit):  # argparse: an unknown scope
        _run("clients", "add", "x", "--scope", "admin", *data)
    assert set(clients_cli.SCOPES) == set(Scope)  # the CLI's choices, spelled out to keep --help light
