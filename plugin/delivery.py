"""Delivery of one result to one target: C-STORE to a DICOM peer, or a FHIR transaction to a server.

The outbox (pending rows of the job store) makes this durable: a failed attempt is
retried with a doubling delay until it succeeds or the configured give-up age passes.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import httpx

from dicom_io.fhir import as_transaction
from dicom_io.peers import DicomPeer
from dicom_io.sender import DicomSendError, store
from plugin.config import Settings

log = logging.getLogger(__name__)

DICOM, FHIR = "dicom", "fhir"
MAX_RETRY_DELAY = dt.timedelta(hours=1)


class DeliveryError(ConnectionError):
    """A delivery attempt failed; the message is safe to record (no PHI)."""


def dicom_files(results: dict) -> list[Path]:
    return [Path(results["files"][key]) for key in results["dicom"]]


def deliver(kind: str, target: str, results: dict, config: Settings) -> None:
    """One attempt; raise DeliveryError when it did not succeed."""
    if kind == DICOM:
        try:
            store(dicom_files(results), DicomPeer.parse(target), calling_ae_title=config.ae_title)
        except DicomSendError as exc:
            raise DeliveryError(str(exc)) from None
    elif kind == FHIR:
        _post_fhir(target, Path(results["files"]["fhir"]), config)
    else:
        raise ValueError(f"unknown delivery kind {kind!r}")


def _post_fhir(base_url: str, bundle_path: Path, config: Settings) -> None:
    transaction = as_transaction(json.loads(bundle_path.read_text()))
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if config.fhir_token:
        headers["Authorization"] = f"Bearer {config.fhir_token.get_secret_value()}"
    try:
        response = httpx.post(base_url.rstrip("/"), json=transaction, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"FHIR server unreachable ({type(exc).__name__})") from None
    if response.status_code >= 300:
        raise DeliveryError(f"FHIR server answered {response.status_code}: {_outcome(response)}")
    log.info("FHIR transaction accepted (%d)", response.status_code)


def _outcome(response: httpx.Response) -> str:
    """The OperationOutcome's diagnostics, which describe the resource, not the patient."""
    try:
        issues = response.json().get("issue", [])
        return "; ".join(str(i.get("diagnostics") or i.get("details", {}).get("text", "")) for i in issues)[:500]
    except ValueError:
        return response.text[:200]


def retry_delay(config: Settings, attempts: int, first_attempt: dt.datetime) -> dt.timedelta | None:
    """Doubling delay after ``attempts`` failures; None once the give-up age has passed."""
    if dt.datetime.now(dt.UTC) - first_attempt > dt.timedelta(hours=config.delivery_give_up_hours):
        return None
    delay = dt.timedelta(seconds=config.delivery_retry_seconds * 2 ** max(0, attempts - 1))
    return min(delay, MAX_RETRY_DELAY)
