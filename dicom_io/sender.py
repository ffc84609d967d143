"""Outgoing DICOM: C-STORE results to a peer, C-MOVE a study from a PACS to us, C-ECHO for readiness.

Each takes ``tls``: an :class:`ssl.SSLContext` (see :func:`dicom_io.tls.client_context`) makes the
association TLS, the peer's certificate checked against its host; None keeps it plain TCP.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # pynetdicom makes its SOP classes at run time
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, Status, code_to_category

from dicom_io.peers import DicomPeer

log = logging.getLogger(__name__)


class DicomSendError(ConnectionError):
    """The peer could not be reached or did not store everything; the caller may retry later."""


def _succeeded(code: int) -> bool:
    """Success, or success with a warning: the peer stored (C-STORE) or sent (C-MOVE) what it could."""
    return code_to_category(code) in (STATUS_SUCCESS, STATUS_WARNING)


def _associate(ae: AE, peer: DicomPeer, timeout: float, tls: ssl.SSLContext | None):
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title,
                         tls_args=None if tls is None else (tls, peer.host))
    if not assoc.is_established:
        # a failed TLS handshake (an untrusted or misnamed certificate) shows as no answer: pynetdicom logs why
        how = "rejected" if assoc.is_rejected else "no answer or aborted"
        raise DicomSendError(f"association with {peer}{' over TLS' if tls else ''} failed ({how})")
    return assoc


def store(paths: Sequence[Path], peer: DicomPeer, *, calling_ae_title: str, timeout: float = 30.0,
          tls: ssl.SSLContext | None = None) -> None:
    """Send every file with C-STORE in one association; raise DicomSendError unless all succeeded."""
    datasets = [pydicom.dcmread(path) for path in paths]
    ae = AE(calling_ae_title)
    for sop_class in sorted({ds.SOPClassUID for ds in datasets}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = _associate(ae, peer, timeout, tls)
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is None:
                raise DicomSendError(f"{peer} did not answer a C-STORE")
            if not _succeeded(code):
                raise DicomSendError(f"{peer} refused an instance with status 0x{code:04X}")
    finally:
        assoc.release()
    log.info("stored %d instance(s) at %s", len(datasets), peer)


def echo(peer: DicomPeer, *, calling_ae_title: str, timeout: float = 5.0, tls: ssl.SSLContext | None = None) -> None:
    ae = AE(calling_ae_title)
    ae.add_requested_context(Verification)
    assoc = _associate(ae, peer, timeout, tls)
    try:
        status = assoc.send_c_echo()
        if getattr(status, "Status", None) != Status.SUCCESS:
            raise DicomSendError(f"{peer} did not answer C-ECHO with success")
    finally:
        assoc.release()


def move_study(pacs: DicomPeer, study_uid: str, *, destination_ae_title: str, calling_ae_title: str,
               series_uids: Sequence[str] = (), timeout: float = 600.0, tls: ssl.SSLContext | None = None) -> None:
    """Ask ``pacs`` to C-STORE a study (or only some of its series) to ``destination_ae_title``."""
    query = pydicom.Dataset()
    query.QueryRetrieveLevel = "SERIES" if series_uids else "STUDY"
    query.StudyInstanceUID = study_uid
    if series_uids:
        query.SeriesInstanceUID = list(series_uids)
    ae = AE(calling_ae_title)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = _associate(ae, pacs, timeout, tls)
    try:
        final = None
        for status, _ in assoc.send_c_move(query, destination_ae_title, StudyRootQueryRetrieveInformationModelMove):
            final = getattr(status, "Status", None)
        if final is None or not _succeeded(final):
            raise DicomSendError(f"C-MOVE from {pacs} ended with status "
                                 f"{'none' if final is None else f'0x{final:04X}'}")
    finally:
        assoc.release()
