"""DICOM TLS (PS3.15 Annex B, Secure Transport Connection Profiles): the listener's TLS context.

The profile the issue names, the Basic TLS Secure Transport Connection Profile (B.1), asks for
a port of its own, different from every unsecured one (2762, ``dicom-tls``, recommended), and
leaves key management and the meaning of certificates to the site. Its minimum mechanisms
(TLS 1.0, 3DES) are refused here: TLS 1.2 is the lowest version offered, 1.3 preferred, with
Python's (OpenSSL's) default server cipher suites, as the profiles that replaced it ask (B.12,
BCP 195: TLS 1.2 supported, 1.3 preferred).
``DIMSE_TLS_CERT_FILE`` and ``DIMSE_TLS_KEY_FILE`` (PEM) are the server's identity; with
``DIMSE_TLS_CA_FILE`` every peer must show a certificate that one of those CAs signed (mutual
TLS), else the handshake fails before any DICOM byte is read.
"""

from __future__ import annotations

import ssl

from dimse_service.settings import DimseSettings


class TlsUnusable(Exception):
    """The TLS files cannot be used; the message names the variables and why (no path)."""


def server_context(settings: DimseSettings) -> ssl.SSLContext:
    """The SSLContext every TLS connection is wrapped with; ``TlsUnusable`` if a file cannot
    be read or does not hold what it should."""
    assert settings.tls_cert_file is not None
    assert settings.tls_key_file is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    except OSError as exc:
        raise TlsUnusable(
            "DIMSE_TLS_CERT_FILE, DIMSE_TLS_KEY_FILE: cannot use them as a PEM certificate "
            f"and its private key ({_why(exc)})"
        ) from None
    if settings.tls_ca_file is not None:
        try:
            context.load_verify_locations(cafile=settings.tls_ca_file)
        except OSError as exc:
            raise TlsUnusable(
                f"DIMSE_TLS_CA_FILE: cannot use it as PEM CA certificates ({_why(exc)})"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _why(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or type(exc).__name__
    return exc.strerror or type(exc).__name__
