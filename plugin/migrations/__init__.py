"""Schema migrations of the job store (Alembic), configured in code: no alembic.ini at run time.

:func:`upgrade` brings a database to the newest revision; ``JobStore`` runs it on construction and
``progemu db upgrade`` on request. A database made by 0.1 (``create_all``, no ``alembic_version`` table) is
stamped at :data:`BASELINE`, whose migration is that schema, and upgraded from there.

A new revision: write ``versions/revNNNN_<slug>.py`` by hand, or let Alembic draft it against a database at head::

    with create_engine(url).begin() as connection:
        alembic.command.revision(config(connection), "what changes", autogenerate=True, rev_id="0003")
"""

from __future__ import annotations

import logging

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text

logger = logging.getLogger(__name__)

BASELINE = "0001"
"""The revision that is the 0.1 schema, which ``Base.metadata.create_all`` made."""
LOCK_KEY = 0x70726F67656D75
"""PostgreSQL advisory lock held while upgrading ("progemu" in ASCII)."""


def config(connection: Connection | None = None) -> Config:
    """Alembic's configuration; commands that touch a database run on ``connection`` (``env.py`` takes it)."""
    alembic_config = Config()
    alembic_config.set_main_option("script_location", "plugin:migrations")
    # revision files must be importable module names: mypy checks them with the package
    alembic_config.set_main_option("file_template", "rev%%(rev)s_%%(slug)s")
    alembic_config.attributes["connection"] = connection
    return alembic_config


def upgrade(connection: Connection) -> str:
    """Bring the schema to head and return the revision; ``connection`` has a transaction that nothing has used yet.

    The caller's commit makes the upgrade visible at once, and processes starting together take turns: on
    PostgreSQL a transaction-level advisory lock, on SQLite a write lock from the first statement (pysqlite would
    otherwise run the DDL outside any transaction, so two processes could both see an empty database).
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
    elif connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    alembic_config = config(connection)
    if revision(connection) is None and inspect(connection).has_table("jobs"):
        logger.info("job store made before migrations (0.1): stamping it at revision %s", BASELINE)
        command.stamp(alembic_config, BASELINE)
    command.upgrade(alembic_config, "head")
    current = revision(connection)
    if current is None:  # only a broken revision chain gets here
        raise RuntimeError("the job store has no schema revision after upgrading")
    return current


def revision(connection: Connection) -> str | None:
    """The database's current revision (None: never migrated)."""
    return MigrationContext.configure(connection).get_current_revision()
