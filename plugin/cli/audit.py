"""``progemu audit verify`` and ``progemu audit show``: check and read the node's audit trail (plugin/audit.py).

Both record their own use in the trail (DICOM's "Audit Log Used"), unless ``--read-only``: for a copy of a trail
taken as evidence, which must stay as it was.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import re
from dataclasses import asdict

from plugin.audit import AuditRecord, AuditTrail, canonical
from plugin.cli.options import add_settings_options, settings
from plugin.errors import UsageError

AUDIT_FIELDS = ("data_dir", "ae_title", "audit_syslog")
_AGE = re.compile(r"^(\d+(?:\.\d+)?)([mhd])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def register(commands: argparse._SubParsersAction) -> None:
    audit = commands.add_parser("audit", help="the node's audit trail: who sent, asked for, read and received what")
    actions = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    verify = actions.add_parser("verify", help="check the trail's hash chain: exit 0 when intact, 2 at the first "
                                               "record that was edited, deleted, reordered or cut short")
    _common(verify)
    verify.set_defaults(handler=_verify)

    show = actions.add_parser("show", help="print the trail's records, oldest first")
    _common(show)
    show.add_argument("--since", type=since, metavar="WHEN",
                      help="only records from then on: a UTC date or time (2025-01-31, 2025-01-31T08:00) or an "
                           "age (30m, 12h, 7d)")
    show.add_argument("--job", metavar="ID", help="only the records of this job")
    show.add_argument("--study", metavar="UID", help="only the records of this study")
    show.add_argument("--json", action="store_true", help="the records as stored, one JSON object a line")
    show.set_defaults(handler=_show)


def _common(parser: argparse.ArgumentParser) -> None:
    add_settings_options(parser, AUDIT_FIELDS)
    parser.add_argument("--read-only", action="store_true",
                        help="do not record this use of the trail in it (for a copy kept as evidence)")


def since(value: str) -> dt.datetime:
    """An argparse type: an ISO 8601 date or time (UTC unless it says otherwise), or an age back from now."""
    age = _AGE.match(value)
    if age:
        return dt.datetime.now(dt.UTC) - dt.timedelta(**{_UNITS[age[2]]: float(age[1])})
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date, a time or an age (30m, 12h, 7d): {value!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _verify(args: argparse.Namespace) -> int:
    trail = _trail(args)
    try:
        result = trail.verify()
    except FileNotFoundError:
        raise UsageError(f"no audit trail at {trail.path}") from None
    if not args.read_only:
        trail.audit_log_used(user=getpass.getuser(), command="verify", verification=result)
    trail.close()
    if result.broken is not None:
        print(f"audit trail broken at {result.broken}; the {result.records} record(s) before it chain correctly")
        return 2
    print(f"audit trail intact: {result.records} records (head {result.head})")
    return 0


def _show(args: argparse.Namespace) -> int:
    trail = _trail(args)
    if not trail.path.exists():
        raise UsageError(f"no audit trail at {trail.path}")
    for record in trail.records():
        if _selected(record, args):
            print(canonical(asdict(record)).decode() if args.json else line(record))
    if not args.read_only:
        trail.audit_log_used(user=getpass.getuser(), command="show")
    trail.close()
    return 0


def _trail(args: argparse.Namespace) -> AuditTrail:
    return AuditTrail.from_settings(settings(args))


def _selected(record: AuditRecord, args: argparse.Namespace) -> bool:
    return ((args.since is None or record.timestamp >= args.since)
            and (args.job is None or record.fields.get("job_id") == args.job)
            and (args.study is None or record.fields.get("study_uid") == args.study))


def line(record: AuditRecord) -> str:
    """One record as one line: number, time, event, outcome, actor, then its fields as key=value."""
    fields = " ".join(f"{key}={value}" for key, value in record.fields.items())
    return f"{record.seq:>6} {record.time} {record.event} {record.outcome} {record.actor} {fields}".rstrip()
