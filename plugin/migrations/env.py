"""Alembic's environment for the job store: it runs on the connection that :func:`plugin.migrations.config` carries."""

from alembic import context

import plugin.clients  # noqa: F401 - puts api_clients (rev 0003) on Base.metadata
from plugin.jobs import Base

connection = context.config.attributes.get("connection")
if context.is_offline_mode() or connection is None:
    raise RuntimeError("the job store's migrations run on a live connection: use `progemu db upgrade` "
                       "or plugin.migrations.config(connection)")
context.configure(connection=connection, target_metadata=Base.metadata)  # the metadata is for autogenerate
with context.begin_transaction():
    context.run_migrations()
