"""TLS for the DICOM listener: PS3.15 B.9 / B.10, the BCP 195 TLS Secure Transport Connection Profiles.

The server context is the BCP 195 one the HTTP listener uses (:func:`telerad.adapters.http.tls.server_context`:
TLS 1.2 or newer, 1.3 preferred, forward-secret AEAD suites, no compression, no renegotiation) and, when a CA
bundle is configured, requires and verifies a client certificate (PS3.15 B.9: the peers authenticate each
other with X.509 certificates). A node registered with a certificate fingerprint must then present exactly
that certificate (:func:`telerad.archive.registry.admit_calling_ae`).
"""

from __future__ import annotations

import ssl

from telerad.adapters.http.tls import TLS12_CIPHERS
from telerad.adapters.http.tls import server_context as bcp195_server_context
from telerad.config import Settings

__all__ = ["TLS12_CIPHERS", "server_context"]


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The listener's TLS context, or None when no certificate and key are configured (plain TCP)."""
    if not (settings.dimse_tls_cert and settings.dimse_tls_key):
        if settings.dimse_tls_cert or settings.dimse_tls_key or settings.dimse_tls_ca:
            raise ValueError("DIMSE TLS needs both dimse_tls_cert and dimse_tls_key")
        return None
    ctx = bcp195_server_context(settings.dimse_tls_cert, settings.dimse_tls_key)
    if settings.dimse_tls_ca:
        ctx.load_verify_locations(cafile=str(settings.dimse_tls_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
