"""Delivery of one job's results to one target, through a registry of target handlers.

Each kind of target (a DICOM peer by C-STORE, a DICOMweb service by STOW-RS, a FHIR server
by transaction) is a handler registered under its kind. The outbox (pending rows of
the job store) makes delivery durable: a :class:`~plugin.errors.TransientError` is
retried with a doubling delay until the give-up age; a
:class:`~plugin.errors.PermanentError`, such as a kind nobody handles, fails at once.

Transport security: results and the FHIR token never travel in clear unless the configuration says so
(``fhir_allow_http``, for test servers, and even then without the token), and C-STORE goes over TLS
with ``outbound_tls``. :func:`check_settings` refuses at start what would fail every delivery.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import ssl
from typing import Protocol

import httpx
import pydicom

from dicom_io.fhir import as_transaction
from dicom_io.peers import DicomPeer
from dicom_io.sender import DicomSendError, store
from dicom_io.tls import client_context
from plugin import dicomweb
from plugin.config import Settings
from plugin.dicomweb import DicomWebTarget
from plugin.errors import DeliveryError, PermanentError, UnknownDeliveryTarget, backoff
from plugin.metrics import DELIVERIES
from plugin.results import FileKind, JobResults

log = logging.getLogger(__name__)

MAX_RETRY_DELAY = dt.timedelta(hours=1)


class DeliveryTarget(Protocol):
    """Sends one job's results to one target; raises DeliveryError (retried) or a PermanentError."""

    kind: str

    def send(self, target: str, results: JobResults, config: Settings) -> None: ...


_TARGETS: dict[str, DeliveryTarget] = {}


def register(handler: DeliveryTarget) -> DeliveryTarget:
    """Make ``handler`` the one for its kind of target."""
    _TARGETS[handler.kind] = handler
    DELIVERIES.track(handler.kind)
    return handler


def outbound_tls(config: Settings) -> ssl.SSLContext | None:
    """The TLS context of our outgoing associations (C-STORE, C-MOVE) with ``outbound_tls``, else None:
    tls_cert/tls_key as our client certificate, tls_ca to verify the peer."""
    if not config.outbound_tls:
        return None
    try:
        return client_context(config.tls_cert, config.tls_key, config.tls_ca)
    except ValueError as exc:  # a file missing or not PEM, named in the message
        raise PermanentError(f"outbound_tls: {exc}") from None


def check_fhir_url(url: str, config: Settings) -> None:
    """Refuse a FHIR URL over which the results (and the token) would travel in clear, unless allowed."""
    try:
        scheme = httpx.URL(url).scheme
    except httpx.InvalidURL:
        scheme = ""
    if scheme == "https" or (scheme == "http" and config.fhir_allow_http):
        return
    if scheme == "http":
        raise PermanentError("fhir_url is plain http: the FHIR token and the results would travel in clear; "
                             "use https (or set fhir_allow_http for a test server)")
    raise PermanentError("fhir_url must be an https:// URL")


def check_settings(config: Settings) -> None:
    """Refuse at the node's start what would fail every delivery: a plain-http FHIR or DICOMweb URL not allowed,
    or outbound TLS whose certificates cannot be loaded. Raises PermanentError with one line."""
    if config.fhir_url:
        check_fhir_url(config.fhir_url, config)
    if isinstance(config.destination, DicomWebTarget):
        dicomweb.check_url(config.destination.url, config)
    outbound_tls(config)


def deliver(kind: str, target: str, results: JobResults, config: Settings) -> None:
    """One attempt; raise DeliveryError when it did not succeed, UnknownDeliveryTarget when it never can."""
    handler = _TARGETS.get(kind)
    if handler is None:
        raise UnknownDeliveryTarget(f"no delivery handler for targets of kind {kind!r} "
                                    f"(known: {', '.join(sorted(_TARGETS))})")
    with DELIVERIES.attempt(kind):
        handler.send(target, results, config)


class DicomStore:
    """The SC, SR and report page by C-STORE to a DICOM peer (AET@HOST:PORT)."""

    kind = "dicom"

    def send(self, target: str, results: JobResults, config: Settings) -> None:
        try:
            store(results.dicom_files(), DicomPeer.parse(target), calling_ae_title=config.ae_title,
                  tls=outbound_tls(config))
        except DicomSendError as exc:
            raise DeliveryError(str(exc)) from None


class FhirTransaction:
    """The FHIR Bundle as one transaction to a FHIR server's base URL."""

    kind = "fhir"

    def send(self, target: str, results: JobResults, config: Settings) -> None:
        check_fhir_url(target, config)
        transaction = as_transaction(json.loads(results.path(FileKind.FHIR).read_text()))
        headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
        if config.fhir_token:
            if httpx.URL(target).scheme == "https":
                headers["Authorization"] = f"Bearer {config.fhir_token.get_secret_value()}"
            else:  # allowed for a test server, but a token sent in clear is a token given away
                log.warning("FHIR over plain http (fhir_allow_http): sending without the FHIR token")
        try:
            response = httpx.post(target.rstrip("/"), json=transaction, headers=headers, timeout=30)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"FHIR server unreachable ({type(exc).__name__})") from None
        if response.status_code >= 300:
            raise DeliveryError(f"FHIR server answered {response.status_code}: {_outcome(response)}")
        log.info("FHIR transaction accepted (%d)", response.status_code)


class DicomWebStore:
    """The SC, SR and report page by STOW-RS to a DICOMweb service (``dicomweb+https://host/dicom-web``)."""

    kind = "dicomweb"

    def send(self, target: str, results: JobResults, config: Settings) -> None:
        try:
            url = DicomWebTarget.parse(target).url
        except ValueError as exc:
            raise PermanentError(f"DICOMweb target: {exc}") from None
        datasets = [pydicom.dcmread(path) for path in results.dicom_files()]
        with dicomweb.translated("STOW-RS", DeliveryError):
            answer = dicomweb.client(url, config).store_instances(datasets)
        failed = answer.get("FailedSOPSequence") or []
        if failed:  # a 200 or 202 may still refuse some; the outbox sends them all again
            raise DeliveryError(f"STOW-RS: the DICOMweb server refused {len(failed)} of {len(datasets)} instance(s)")
        log.info("STOW-RS stored %d instance(s)", len(datasets))


DICOM = register(DicomStore()).kind
DICOMWEB = register(DicomWebStore()).kind
FHIR = register(FhirTransaction()).kind


def destination_kind(destination: str) -> str:
    """The kind of target a job's destination is: a DICOMweb service, else a DICOM peer."""
    return DICOMWEB if destination.startswith(dicomweb.PREFIX) else DICOM


def _outcome(response: httpx.Response) -> str:
    """The OperationOutcome's diagnostics, which describe the resource, not the patient."""
    try:
        issues = response.json().get("issue", [])
        return "; ".join(str(i.get("diagnostics") or i.get("details", {}).get("text", "")) for i in issues)[:500]
    except ValueError:
        return response.text[:200]


def retry_delay(config: Settings, attempts: int, first_attempt: dt.datetime) -> dt.timedelta | None:
    """The delay after ``attempts`` failures; None once the give-up age has passed."""
    if dt.datetime.now(dt.UTC) - first_attempt > dt.timedelta(hours=config.delivery_give_up_hours):
        return None
    return backoff(attempts, first=config.delivery_retry_seconds, cap=MAX_RETRY_DELAY.total_seconds())
