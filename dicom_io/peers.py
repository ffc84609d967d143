"""DICOM application entities we talk to, written ``AET@HOST:PORT`` as in every PACS admin screen."""

from __future__ import annotations

import re
from dataclasses import dataclass

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 chars, no backslash or control chars
_PEER = re.compile(r"^(?P<aet>[^@]+)@(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")


def check_ae_title(value: str) -> str:
    """Return ``value`` stripped, or raise ValueError: a bad AE title is a configuration error, not a DICOM one."""
    title = value.strip()
    if not _AE_TITLE.match(title):
        raise ValueError(f"invalid AE title {value!r}: 1-16 printable characters, no backslash")
    return title


@dataclass(frozen=True)
class DicomPeer:
    """A remote AE: its title, host and port."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> DicomPeer:
        match = _PEER.match(text.strip())
        if not match:
            raise ValueError(f"expected AET@HOST:PORT, got {text!r}")
        port = int(match["port"])
        if not 0 < port < 65536:
            raise ValueError(f"port {port} out of range in {text!r}")
        return cls(check_ae_title(match["aet"]), match["host"].strip("[]"), port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"
