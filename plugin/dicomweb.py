"""A DICOMweb PACS (QIDO-RS, WADO-RS, STOW-RS) through ``dicomweb-client``: its targets, sessions and errors.

A delivery target is written ``dicomweb+https://host/dicom-web`` (the service's base URL behind a prefix), so
that it fits where an ``AET@HOST:PORT`` goes (``destination``) and the job store keeps one string per target.
One set of credentials (``dicomweb_username``/``dicomweb_password`` or ``dicomweb_token``) is used for the
DICOMweb PACS, whether it is retrieved from or delivered to; URLs come only from the configuration, never from
a request. Plain http is refused unless ``dicomweb_allow_http`` (test servers and trusted networks only).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pydicom
import requests
from dicomweb_client import DICOMwebClient

from plugin.errors import PermanentError, TransientError

if TYPE_CHECKING:
    from plugin.config import Settings

log = logging.getLogger(__name__)

PREFIX = "dicomweb+"
"""What marks a DICOMweb delivery target among DICOM peers."""
TIMEOUT_SECONDS = 60.0
TRANSIENT_STATUS = frozenset({408, 429})
"""Besides 5xx: the server may answer otherwise later."""
ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)
"""WADO-RS: the instance as stored (a compressed prior stays compressed, as over C-STORE)."""


@dataclass(frozen=True)
class DicomWebTarget:
    """A DICOMweb service's base URL as a delivery target."""

    url: str

    @classmethod
    def parse(cls, text: str) -> DicomWebTarget:
        """``dicomweb+https://host[:port]/path`` -> the target; ValueError for anything else."""
        if not text.startswith(PREFIX):
            raise ValueError(f"expected {PREFIX}https://HOST/PATH")
        url = text.removeprefix(PREFIX).rstrip("/")
        parsed = requests.utils.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"expected {PREFIX}https://HOST/PATH, got a {parsed.scheme or 'schemeless'} URL")
        return cls(url)

    def __str__(self) -> str:
        return PREFIX + self.url


def check_url(url: str, config: Settings) -> None:
    """Refuse a URL over which priors, results and credentials would travel in clear, unless allowed."""
    scheme = requests.utils.urlparse(url).scheme
    if scheme == "https" or (scheme == "http" and config.dicomweb_allow_http):
        return
    if scheme == "http":
        raise PermanentError("a DICOMweb URL is plain http: images and credentials would travel in clear; use "
                             "https (or set dicomweb_allow_http for a test server)")
    raise PermanentError("a DICOMweb URL must be an https:// URL")


def client(url: str, config: Settings) -> DICOMwebClient:
    """A client of the service at ``url`` with the configured credentials; it never retries by itself (the
    outbox and the retrieval task do, with their own schedule)."""
    check_url(url, config)
    session = requests.Session()
    if config.dicomweb_token is not None:
        session.headers["Authorization"] = f"Bearer {config.dicomweb_token.get_secret_value()}"
    elif config.dicomweb_username:
        password = config.dicomweb_password.get_secret_value() if config.dicomweb_password else ""
        session.auth = (config.dicomweb_username, password)
    dicomweb = DICOMwebClient(url, session=session, timeout=TIMEOUT_SECONDS)
    dicomweb.set_http_retry_params(retry=False)
    return dicomweb


@contextlib.contextmanager
def translated(what: str, transient: type[TransientError]) -> Iterator[None]:
    """Raise ``transient`` for what may pass (no connection, 5xx, 408, 429), PermanentError for any other answer.

    The messages name the status only: requests' own carry the URL, which may hold the study's UID.
    """
    try:
        yield
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        message = f"{what}: the DICOMweb server answered {status}"
        if status >= 500 or status in TRANSIENT_STATUS:
            raise transient(message) from None
        raise PermanentError(message) from None
    except requests.RequestException as exc:  # connection refused or reset, timeout, TLS
        raise transient(f"{what}: the DICOMweb server did not answer ({type(exc).__name__})") from None


def encoded(ds: pydicom.Dataset) -> bytes:
    """A retrieved instance as a Part 10 file, with the file meta it came with."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def value_of(attributes: dict, keyword: str) -> str | None:
    """The first value of an attribute in a QIDO-RS answer (DICOM JSON), by keyword."""
    tag = f"{pydicom.datadict.tag_for_keyword(keyword):08X}"
    values = attributes.get(tag, {}).get("Value") or [None]
    return str(values[0]) if values[0] is not None else None
