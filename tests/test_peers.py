"""Peers as configured (``AET@HOST:PORT``): what parses, and what is refused before the node starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from dicom_io.peers import DicomPeer, check_host


@pytest.mark.parametrize("text", ["PACS@10.0.0.1:104", "A B@host.example:11112", "X@[::1]:4242", "P@my_pacs:104",
                                  "P@xn--bcher-kva.example:104", "P@pacs.example.org.:104", "P@orthanc:4242"])
def test_peer_round_trips(text: str) -> None:
    assert str(DicomPeer.parse(text)) == text


@pytest.mark.parametrize("text", ["PACS@host", "@host:104", "WAY_TOO_LONG_AE_TITLE@h:104", "P@h:70000", "P\\Q@h:1"])
def test_bad_peer_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        DicomPeer.parse(text)


@pytest.mark.parametrize(("text", "reason"), [
    ("ORTHANC@pacs..example.org:4242", "invalid host 'pacs..example.org'"),  # made getaddrinfo raise UnicodeError
    ("P@-pacs:104", "invalid host"),
    ("P@pacs-.example.org:104", "invalid host"),
    ("P@pacs.example.org/x:104", "invalid host"),
    ("P@b\u00fccher.example:104", "xn--"),
    (f"P@{'a' * 64}.example:104", "1-63 characters"),
    ("P@10.0.0.256:104", "not a valid IPv4 address"),
    ("P@1.2.3:104", "not a valid IPv4 address"),  # the resolver would read 1.2.0.3
    ("P@[10.0.0.1]:104", "invalid IPv6 address"),
    ("P@[fe80::zz]:104", "invalid IPv6 address"),
    ("P@:104", "invalid host"),
])
def test_syntactically_invalid_host_is_refused(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        DicomPeer.parse(text)


def test_check_host_takes_addresses_and_names() -> None:
    for host in ("192.0.2.10", "2001:db8::1", "localhost", "pacs", "pacs-1.radiology.example.org"):
        assert check_host(host) == host


def test_settings_with_an_invalid_peer_host_do_not_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from plugin.config import Settings

    monkeypatch.setenv("PROGEMU_PEERS", "MODALITY@10.0.0.5:104,ORTHANC@pacs..example.org:4242")
    with pytest.raises(ValidationError, match=r"invalid host 'pacs\.\.example\.org'"):
        Settings(data_dir=tmp_path)
