"""Server TLS contexts per BCP 195 (RFC 9325), the profile PS3.15 B.9 / B.10 points to.

:func:`server_context` refuses anything older than TLS 1.2 (RFC 9325 3.1.1: TLS 1.0 and 1.1 MUST NOT be
negotiated) and negotiates TLS 1.3 whenever the client offers it (RFC 9325 3.1.1: SHOULD support and prefer
TLS 1.3; OpenSSL picks the highest common version). For TLS 1.2 it offers only the forward-secret AEAD cipher
suites of RFC 9325 4.2 (TLS 1.3 suites are all AEAD with ephemeral key exchange), lets the server's order
decide (4.2), and disables compression (3.3, CRIME) and renegotiation (3.5: no insecure renegotiation;
TLS 1.3 has none). The HTTP listener uses it as is; the DICOM listener adds client certificate checks.
"""

from __future__ import annotations

import ssl
from pathlib import Path

# RFC 9325 4.2 recommended TLS 1.2 suites: ECDHE/DHE key exchange, AES-GCM or ChaCha20-Poly1305.
TLS12_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384",
])


def server_context(cert: Path | str, key: Path | str) -> ssl.SSLContext:
    """A TLS 1.2+ server context holding ``cert`` (PEM, leaf first, then any intermediates) and ``key``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.load_cert_chain(str(cert), str(key))
    ctx.verify_mode = ssl.CERT_NONE  # HTTP clients authenticate with tokens or sessions, not certificates
    return ctx
