"""Command-line flags derived from :class:`plugin.config.Settings`, so that a flag and its setting cannot drift.

Each flag is named after its field (``ae_title`` -> ``--ae-title``), takes the field's description as
help and its type from the annotation; a value given on the command line overrides the environment and
the config file, because it reaches ``Settings(**overrides)`` as an explicit value.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from dicom_io.peers import DicomPeer
from inference.sampler import SamplerSettings
from plugin.config import Settings

RENAMED = {"model_path": "model", "worker_queues": "queues", "worker_concurrency": "concurrency"}
"""Fields whose flag is shorter than their name."""
REPEATED = {"peers": "peer"}
"""Tuple fields given once per value (``--peer A --peer B``); other tuples take one comma-separated value."""

SAMPLER_FIELDS = tuple(f.name for f in dataclasses.fields(SamplerSettings) if f.name in Settings.model_fields)
"""Settings that are a request's sampler values: they go to ``Settings.sampler``, which reports them by flag name."""
GENERATION_FIELDS = ("seed", "model_path", "cfg_scale", "top_k", "top_p", "temperature", "fhir_version",
                     "composition", "engine")
"""The flags of every command that generates counterfactuals."""


def _plain(annotation: Any) -> Any:
    """The type under ``Annotated`` and ``| None``."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _plain(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return _plain(next(arg for arg in get_args(annotation) if arg is not type(None)))
    return annotation


def flag(name: str) -> tuple[str, dict[str, Any]]:
    """The flag of a Settings field and its ``add_argument`` options."""
    field = Settings.model_fields[name]
    kind = _plain(field.annotation)
    options: dict[str, Any] = {"dest": name}
    env = f"env PROGEMU_{name.upper()}"
    if name in REPEATED:
        kind = _plain(get_args(kind)[0])
        options["action"] = "append"
        env = f"repeatable; {env}, comma-separated"
    elif get_origin(kind) is tuple:
        env += ", comma-separated"
    text = f"--{REPEATED.get(name) or RENAMED.get(name, name)}".replace("_", "-")
    if get_origin(kind) is Literal:
        options["choices"] = get_args(kind)
    else:
        options["metavar"] = "AET@HOST:PORT" if kind is DicomPeer else text[2:].upper().replace("-", "_")
        if kind in (int, float, str, Path):
            options["type"] = kind
    description = f"{field.description} " if field.description else ""
    options["help"] = f"{description}({env})".replace("%", "%%")
    return text, options


def add_settings_options(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """Add the flags of these Settings fields; once per command, since :func:`settings` reads exactly these."""
    for name in names:
        text, options = flag(name)
        parser.add_argument(text, **options)
    parser.set_defaults(settings_fields=tuple(names))


def settings(args: argparse.Namespace) -> Settings:
    """The configuration, with the command's flags that were given (sampler values excepted: see :func:`sampler`)."""
    overrides = {name: getattr(args, name) for name in args.settings_fields if name not in SAMPLER_FIELDS}
    return Settings(**{name: value for name, value in overrides.items() if value is not None})


def sampler(args: argparse.Namespace, config: Settings) -> SamplerSettings:
    """The configured sampler with the command's sampler flags that were given."""
    return config.sampler(**{name: getattr(args, name) for name in SAMPLER_FIELDS})
