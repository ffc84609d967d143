"""Job-store and broker URLs for tests: a fresh database on the PostgreSQL server running here, and a Redis database
index that no other test run is using on the Redis server running here."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
from sqlalchemy import create_engine, text

POSTGRES_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REDIS_SERVER = "redis://127.0.0.1:6379"
REDIS_CLAIM = "progemu-test:redis-db:{index}"
"""A key in database 0 that holds database ``index`` for one test; it expires, so a run that died frees it."""
REDIS_CLAIM_SECONDS = 3600


@contextmanager
def postgres_database() -> Iterator[str]:
    """A new, empty database for one test module, dropped afterwards."""
    name = f"progemu_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - a missing server is a broken set-up, not a reason to skip
        pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is needed for the job-store tests: {exc}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def redis_database() -> Iterator[str]:
    """The URL of a Redis database (1 and up) that no other test, of this run or a concurrent one, holds: claimed in
    database 0, emptied before and after use, then freed."""
    server = redis.Redis.from_url(f"{REDIS_SERVER}/0")
    try:
        count = int(server.config_get("databases").get("databases", 16))
        index = next((i for i in range(1, count)
                      if server.set(REDIS_CLAIM.format(index=i), os.getpid(), nx=True, ex=REDIS_CLAIM_SECONDS)), None)
    except redis.RedisError as exc:
        pytest.fail(f"the Redis server at 127.0.0.1:6379 is needed for this test: {exc}")
    if index is None:
        pytest.fail(f"all {count - 1} Redis databases of the server at 127.0.0.1:6379 are held by other tests")
    url = f"{REDIS_SERVER}/{index}"
    database = redis.Redis.from_url(url)
    try:
        database.flushdb()
        yield url
    finally:
        database.flushdb()
        server.delete(REDIS_CLAIM.format(index=index))
        database.close()
        server.close()
