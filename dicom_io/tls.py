"""DICOM TLS: the client context for our outgoing associations, and who a caller's certificate says it is.

A certificate signed by the CA we trust proves a name, not an AE title: without tying the two, any
holder of a certificate from that CA could call as any configured peer. :func:`certifies_ae_title`
ties them: the AE title a caller claims must be its certificate's subject common name or one of its
DNS subjectAltNames (the convention of DICOM TLS deployments that name certificates after the AE).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pynetdicom.association import Association

PeerCertificate = Mapping[str, Any]
"""A verified peer certificate as :meth:`ssl.SSLSocket.getpeercert` returns it."""


def client_context(cert: Path | None, key: Path | None, ca: Path | None) -> ssl.SSLContext:
    """TLS 1.2+ for our associations: the peer's certificate verified against ``ca`` (the system's CAs when
    None) and its host name checked; ``cert``/``key``, when given, sent as our client certificate.

    Raises ValueError, naming the file, for a lone certificate or key and for a file that is missing or not PEM.
    """
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs both tls_cert and tls_key")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=None if ca is None else str(ca))
    except OSError as exc:  # ssl.SSLError included
        raise ValueError(f"cannot load the CA certificates {ca}: {_reason(exc)}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None and key is not None:
        try:
            context.load_cert_chain(cert, key)
        except OSError as exc:
            raise ValueError(f"cannot load the certificate {cert} with its key {key}: {_reason(exc)}") from None
    return context


def _reason(exc: OSError) -> str:
    """What went wrong, in a few words: "No such file or directory", "PEM lib", "KEY_VALUES_MISMATCH"."""
    return str(getattr(exc, "reason", None) or exc.strerror or type(exc).__name__)


def certified_names(certificate: PeerCertificate) -> set[str]:
    """The names a certificate vouches for: its subject's common names and its DNS subjectAltNames."""
    common_names = {value for rdn in certificate.get("subject", ()) for name, value in rdn if name == "commonName"}
    dns_names = {value for kind, value in certificate.get("subjectAltName", ()) if kind == "DNS"}
    return common_names | dns_names


def certifies_ae_title(certificate: PeerCertificate | None, ae_title: str) -> bool:
    """Whether ``certificate`` names ``ae_title`` (compared exactly, as AE titles are, less their padding).

    None or an empty mapping (no certificate, or one the TLS layer did not verify) certifies nothing.
    """
    title = ae_title.strip()
    return bool(certificate) and bool(title) and title in certified_names(certificate or {})


def peer_certificate(assoc: Association) -> PeerCertificate | None:
    """The verified certificate of the peer of ``assoc``; None over plain TCP or when the peer sent none.

    Valid from the EVT_REQUESTED handler on: the handshake is over once the A-ASSOCIATE-RQ has been read.
    """
    transport = assoc.dul.socket
    sock = None if transport is None else transport.socket
    if not isinstance(sock, ssl.SSLSocket):
        return None
    return sock.getpeercert() or None
