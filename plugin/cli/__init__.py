"""The ``progemu`` command: the parser, logging and one-line errors; each family of commands has its own module.

Families register their subcommands and handlers (``counterfactual``: running one; ``node``: the DICOM node;
``model_tools``: ONNX export, checkpoint conversion and calibration; ``training``: data, training and evaluation;
``database``: job store migrations; ``clients``: the API's named clients; ``audit``: the audit trail's check and
listing). Anything that pulls in torch, transformers or onnx is imported inside a handler, so that
``progemu --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from dicom_io.errors import DicomInputError
from inference.errors import InferenceError
from plugin import __version__, logs
from plugin.cli import audit, clients, counterfactual, database, model_tools, node, training
from plugin.config import Settings
from plugin.errors import PermanentError, UsageError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="progemu", description="Counterfactual chest X-ray progression (ProgEmu).")
    parser.add_argument("--version", action="version", version=f"progemu-pacs {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for family in (counterfactual, node, database, clients, audit, model_tools, training):
        family.register(commands)
    return parser


def _configure_logging(verbosity: int) -> None:
    """Text or JSON lines (``log_format``) on stderr; a bad configuration gives text, and the command then names
    the bad setting in its one-line error."""
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    try:
        log_format = Settings().log_format
    except ValidationError:
        log_format = "text"
    logs.configure(level, log_format)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a refused request is one line on stderr and exit 2 (1 for a failed file operation)."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return args.handler(args) or 0
    except (DicomInputError, InferenceError, UsageError, PermanentError) as exc:
        print(f"progemu: error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"progemu: error: bad configuration: {problems}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"progemu: error: {exc.strerror or exc} ({exc.filename or ''})", file=sys.stderr)
        return 1
