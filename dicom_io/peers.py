"""DICOM application entities we talk to, written ``AET@HOST:PORT`` as in every PACS admin screen."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 chars, no backslash or control chars
_PEER = re.compile(r"^(?P<aet>[^@]+)@(?P<host>\[[^\]]*\]|[^:\[\]]*):(?P<port>\d{1,5})$")
# RFC 1123 labels; underscores too, as container runtimes name hosts ("my_pacs") and resolvers accept them
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def check_ae_title(value: str) -> str:
    """Return ``value`` stripped, or raise ValueError: a bad AE title is a configuration error, not a DICOM one."""
    title = value.strip()
    if not _AE_TITLE.match(title):
        raise ValueError(f"invalid AE title {value!r}: 1-16 printable characters, no backslash")
    return title


def check_host(value: str) -> str:
    """Return ``value`` if it is an IP address or a syntactically valid host name, else raise ValueError.

    Checked when the configuration loads, so a typo ("pacs..example.org") is a clear start-up error rather than
    a resolver exception on the first association.
    """
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    name = value[:-1] if value.endswith(".") else value  # a fully qualified name may end in a dot
    labels = name.split(".")
    if not name.isascii() or len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"invalid host {value!r}: expected an IP address or a host name of dot-separated labels "
                         "(letters, digits, hyphens; 1-63 characters each; internationalised names in xn-- form)")
    if labels[-1].isdigit():  # "10.0.0.256", "1.2.3": not an address, and a resolver may read it as one
        raise ValueError(f"invalid host {value!r}: not a valid IPv4 address")
    return value


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
        host = match["host"]
        if host.startswith("["):  # an IPv6 address, bracketed as in a URL
            host = host[1:-1]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"invalid IPv6 address {host!r} in {text!r}") from None
        else:
            check_host(host)
        return cls(check_ae_title(match["aet"]), host, port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"
