"""TLS for the DICOM listener: PS3.15 B.9 / B.10, the BCP 195 TLS Secure Transport Connection Profiles.

The server context refuses anything older than TLS 1.2 (RFC 9325 / BCP 195 section 3.1.1), offers only
forward-secret AEAD cipher suites for TLS 1.2 (BCP 195 section 4.2; TLS 1.3 suites are AEAD by design),
disables compression (BCP 195 section 3.3) and renegotiation, and, when a CA bundle is configured, requires
and verifies a client certificate (PS3.15 B.9: the peers authenticate each other with X.509 certificates).
"""

from __future__ import annotations

import ssl

from telerad.config import Settings

# BCP 195 (RFC 9325 4.2) recommended TLS 1.2 suites: ECDHE/DHE key exchange, AES-GCM or ChaCha20-Poly1305.
TLS12_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384",
])


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The listener's TLS context, or None when no certificate and key are configured (plain TCP)."""
    if not (settings.dimse_tls_cert and settings.dimse_tls_key):
        if settings.dimse_tls_cert or settings.dimse_tls_key or settings.dimse_tls_ca:
            raise ValueError("DIMSE TLS needs both dimse_tls_cert and dimse_tls_key")
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.load_cert_chain(str(settings.dimse_tls_cert), str(settings.dimse_tls_key))
    if settings.dimse_tls_ca:
        ctx.load_verify_locations(cafile=str(settings.dimse_tls_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
