"""``progemu clients add|list|revoke``: the REST API's named clients, each with its own token and scopes.

``add`` prints the new token alone on stdout (``TOKEN=$(progemu clients add ris --scope submit)``); it is stored
only as a hash, so this is the one time anyone sees it.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from plugin.cli.database import DATABASE_FIELDS
from plugin.cli.options import add_settings_options, settings

if TYPE_CHECKING:
    from plugin.clients import ApiClient, ClientStore
    from plugin.config import Settings

SCOPES = ("submit", "read", "on-behalf", "worker", "metrics")
"""plugin.clients.Scope's values, spelled out so that ``progemu --help`` needs no SQLAlchemy."""


def register(commands: argparse._SubParsersAction) -> None:
    clients = commands.add_parser("clients", help="the REST API's clients: named tokens with scopes")
    actions = clients.add_subparsers(dest="clients_command", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="add a client and print its token (shown only this once)")
    add.add_argument("name", metavar="NAME", help="who calls: e.g. ris, orthanc (letters, digits, '.', '_', '-')")
    add.add_argument("--scope", dest="scopes", action="append", required=True, choices=SCOPES,
                     help="repeatable: submit (create requests), read (read and list them), on-behalf (name the "
                          "end user a request is for, as the Orthanc plugin does), worker (a generation worker "
                          "on another host: fetch priors, upload results), metrics (Prometheus: GET /metrics)")
    add_settings_options(add, DATABASE_FIELDS)
    add.set_defaults(handler=add_client)

    list_ = actions.add_parser("list", help="list the clients, revoked ones included")
    add_settings_options(list_, DATABASE_FIELDS)
    list_.set_defaults(handler=list_clients)

    revoke = actions.add_parser("revoke", help="revoke a client: its token stops working at once")
    revoke.add_argument("name", metavar="NAME")
    add_settings_options(revoke, DATABASE_FIELDS)
    revoke.set_defaults(handler=revoke_client)


def _store(config: Settings) -> ClientStore:
    if config.database_url is None:  # SQLite in the data directory, which serve would create
        config.prepare_data_dir()
    from plugin.clients import ClientStore  # SQLAlchemy and Alembic only for these commands

    return ClientStore(config.resolved_database_url())


def _line(client: ApiClient) -> str:
    created = f"{client.created_at:%Y-%m-%d %H:%M}" if client.created_at else "-"
    revoked = f"  revoked {client.revoked_at:%Y-%m-%d %H:%M}" if client.revoked_at else ""
    return f"{client.name}\t{' '.join(sorted(client.scopes))}\tcreated {created}{revoked}"


def add_client(args: argparse.Namespace) -> None:
    store = _store(settings(args))
    try:
        client, token = store.add(args.name, args.scopes)
    finally:
        store.dispose()
    print(token)
    print(f"client {client.name} added ({', '.join(sorted(client.scopes))}); its token above is shown only now",
          file=sys.stderr)


def list_clients(args: argparse.Namespace) -> None:
    config = settings(args)
    store = _store(config)
    try:
        clients = store.list()
    finally:
        store.dispose()
    for client in clients:
        print(_line(client))
    if config.api_token is not None:
        print(f"default\t{' '.join(sorted(SCOPES))}\tPROGEMU_API_TOKEN (deprecated: add named clients instead)")


def revoke_client(args: argparse.Namespace) -> None:
    store = _store(settings(args))
    try:
        client = store.revoke(args.name)
    finally:
        store.dispose()
    print(_line(client))
