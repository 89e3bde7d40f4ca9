"""``telerad serve`` over HTTPS (BCP 195 / RFC 9325): TLS 1.3 preferred, 1.2 accepted, 1.1 refused; and the
application start and stop in the audit trail (PS3.15 A.5.3.1)."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pki_support import client_context, handshake, make_ca, make_leaf

from telerad.adapters.http.tls import server_context
from telerad.config import Settings
from telerad.context import Context
from telerad.security import audit
from telerad.security.audit import Action


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("https-pki")
    make_ca(d, "ca")
    make_leaf(d, "server", "ca", "serverAuth")
    return d


class Serve:
    """``telerad serve`` in a subprocess, as a user starts it, with an HTTPS listener."""

    def __init__(self, settings: Settings, pki: Path, log: Path) -> None:
        self.log = log
        env = {**os.environ, "TELERAD_HOME": str(settings.home), "TELERAD_DATABASE_URL": settings.database_url,
               "TELERAD_HTTP_PORT": str(settings.http_port), "TELERAD_DICOM_PORT": str(settings.dicom_port),
               "TELERAD_HTTP_TLS_CERT": str(pki / "server.crt"), "TELERAD_HTTP_TLS_KEY": str(pki / "server.key")}
        self.proc = subprocess.Popen([sys.executable, "-m", "telerad.cli", "serve"], env=env,
                                     stdout=log.open("ab"), stderr=subprocess.STDOUT)
        self.port = settings.http_port
        self._wait(settings.http_port)

    def _wait(self, port: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"telerad serve exited with {self.proc.returncode}: {self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"port {port} not listening after {timeout}s")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def serve(ctx: Context, settings: Settings, pki: Path, tmp_path: Path) -> Iterator[Serve]:
    server = Serve(settings, pki, tmp_path / "serve.log")
    yield server
    server.stop()


def test_tls13_is_negotiated_and_healthz_answers(serve: Serve, pki: Path) -> None:
    with handshake(serve.port, client_context(pki / "ca.crt")) as s:
        assert s.version() == "TLSv1.3"
    r = httpx.get(f"https://127.0.0.1:{serve.port}/healthz", verify=client_context(pki / "ca.crt"))
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert "max-age=" in r.headers["strict-transport-security"]  # HSTS once served over HTTPS (RFC 6797)


def test_tls12_works_with_a_forward_secret_aead_suite(serve: Serve, pki: Path) -> None:
    tls12 = client_context(pki / "ca.crt", maximum_version=ssl.TLSVersion.TLSv1_2)
    tls12.set_ciphers("ALL:@SECLEVEL=0")  # offer everything: the server must pick a BCP 195 suite
    with handshake(serve.port, tls12) as s:
        assert s.version() == "TLSv1.2"
        name, _, _ = s.cipher()
        assert name.startswith(("ECDHE-", "DHE-")) and ("GCM" in name or "CHACHA20" in name), name
    r = httpx.get(f"https://127.0.0.1:{serve.port}/healthz",
                  verify=client_context(pki / "ca.crt", maximum_version=ssl.TLSVersion.TLSv1_2))
    assert r.status_code == 200


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls11_client_is_refused(serve: Serve, pki: Path) -> None:
    old = client_context(pki / "ca.crt", minimum_version=ssl.TLSVersion.TLSv1,
                         maximum_version=ssl.TLSVersion.TLSv1_1)
    old.set_ciphers("ALL:@SECLEVEL=0")  # let this client really offer TLS 1.0/1.1
    with pytest.raises(ssl.SSLError) as err:
        handshake(serve.port, old)
    # The *server* refused: a protocol_version alert, or (asyncio's TLS) the connection closed mid-handshake.
    # A client-side refusal would fail before connecting with NO_PROTOCOLS_AVAILABLE.
    assert "TLSV1_ALERT_PROTOCOL_VERSION" in str(err.value) or isinstance(err.value, ssl.SSLEOFError), err.value


def test_plain_http_is_not_served_on_the_tls_port(serve: Serve) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{serve.port}/healthz", timeout=5)


def test_start_and_stop_are_audited(ctx: Context, serve: Serve) -> None:
    serve.stop()  # SIGINT: uvicorn shuts down, then re-raises the signal (exit status 1 via click's "Aborted!")
    _, starts = audit.search(ctx.db, action=Action.APPLICATION_START)
    _, stops = audit.search(ctx.db, action=Action.APPLICATION_STOP)
    assert len(starts) == 1 and len(stops) == 1
    start, stop = starts[0], stops[0]
    assert start["actor_type"] == "system" and start["actor"] == ctx.settings.ae_title
    assert start["details"]["http"] == f"https://127.0.0.1:{serve.port}"
    assert stop["actor"] == ctx.settings.ae_title and stop["seq"] > start["seq"]


def test_server_context_floor_and_options(pki: Path) -> None:
    c = server_context(pki / "server.crt", pki / "server.key")
    assert c.minimum_version == ssl.TLSVersion.TLSv1_2
    assert c.maximum_version == ssl.TLSVersion.MAXIMUM_SUPPORTED
    assert c.options & ssl.OP_NO_COMPRESSION and c.options & ssl.OP_NO_RENEGOTIATION
    tls12 = [x["name"] for x in c.get_ciphers() if x["protocol"] == "TLSv1.2"]
    assert tls12 and all(n.startswith(("ECDHE-", "DHE-")) and ("GCM" in n or "CHACHA20" in n) for n in tls12)
