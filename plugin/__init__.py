"""The application: wires dicom_io to inference (config, CLI, jobs, node)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("progemu-pacs")
except PackageNotFoundError:  # a source tree that was never installed (pyproject.toml holds the version)
    __version__ = "0+unknown"
