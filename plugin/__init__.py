"""The application: wires dicom_io to inference (config, CLI, jobs, node)."""

__version__ = "0.1.0"
