"""Print pip requirements read from pyproject.toml: an image's dependencies and extras, or the build system's.

The Dockerfile installs these in layers of their own, apart from the project, so a change to the code rebuilds
only the project's small layer, and a change elsewhere in pyproject.toml none. An extra's package that provides
the module of a dependency (onnxruntime-gpu ships the ``onnxruntime`` module) is installed instead of that
dependency: pip would install both, and the two would overwrite each other's files.

    python requirements.py pyproject.toml [EXTRA ...]      # the dependencies, with the extras
    python requirements.py pyproject.toml --build-system   # what building the project's wheel needs
"""

from __future__ import annotations

import re
import sys
import tomllib

REPLACES = {"onnxruntime-gpu": "onnxruntime"}
"""Extra package -> the dependency it stands in for."""


def _name(requirement: str) -> str:
    """The normalised project name of a PEP 508 requirement (PEP 503: case and runs of -_. do not matter)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    project = pyproject["project"]
    chosen = [requirement for extra in extras for requirement in project["optional-dependencies"][extra]]
    replaced = {REPLACES[_name(requirement)] for requirement in chosen if _name(requirement) in REPLACES}
    base = [requirement for requirement in project["dependencies"] if _name(requirement) not in replaced]
    return [*base, *chosen]


def main(argv: list[str]) -> int:
    path, *extras = argv
    with open(path, "rb") as file:
        pyproject = tomllib.load(file)
    chosen = pyproject["build-system"]["requires"] if extras == ["--build-system"] else requirements(pyproject, extras)
    print("\n".join(chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
