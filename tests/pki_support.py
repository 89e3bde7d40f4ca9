"""A throwaway test PKI made with the openssl command line (importable as ``pki_support``)."""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt",
            "-days", "2", "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def make_leaf(d: Path, name: str, ca: str, usage: str) -> None:
    """``name``.crt/.key signed by ``ca``, for 127.0.0.1 and localhost, with extended key usage ``usage``."""
    (d / f"{name}.ext").write_text(f"subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}", cwd=d)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None,
                   **versions: ssl.TLSVersion) -> ssl.SSLContext:
    """A TLS client trusting ``ca``, optionally presenting ``cert``; ``minimum_version=...`` etc. as keywords."""
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.load_verify_locations(ca)
    if cert is not None:
        c.load_cert_chain(cert, key)
    for attr, value in versions.items():
        setattr(c, attr, value)
    return c


def handshake(port: int, context: ssl.SSLContext, host: str = "127.0.0.1") -> ssl.SSLSocket:
    raw = socket.create_connection((host, port), timeout=10)
    try:
        return context.wrap_socket(raw, server_hostname=host)
    except BaseException:
        raw.close()
        raise
