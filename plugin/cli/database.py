"""``progemu db upgrade``: bring the job store's schema to the newest revision before the node starts."""

from __future__ import annotations

import argparse

from plugin.cli.options import add_settings_options, settings

DATABASE_FIELDS = ("database_url", "data_dir")


def register(commands: argparse._SubParsersAction) -> None:
    database = commands.add_parser("db", help="the job store's schema")
    actions = database.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade = actions.add_parser("upgrade", help="apply the job store's migrations (serve and the workers also do "
                                                 "on start) and print the revision it is at")
    add_settings_options(upgrade, DATABASE_FIELDS)
    upgrade.set_defaults(handler=_upgrade)


def _upgrade(args: argparse.Namespace) -> None:
    config = settings(args)
    if config.database_url is None:  # SQLite in the data directory, which serve would create
        config.prepare_data_dir()
    from plugin.jobs import JobStore  # SQLAlchemy and Alembic only for this command

    store = JobStore(config.resolved_database_url())  # opening the store upgrades it
    store.dispose()
    print(store.schema_revision)
