"""DICOM over TLS (PS3.15 B.9 / B.10, BCP 195): DCMTK TLS clients, protocol floor, client certificates."""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from adapters.dimse.dimse_support import GH_AE, Dcmtk, write_files
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from telerad.adapters.dimse.server import DimseServer, start_dimse
from telerad.archive import registry
from telerad.archive.demo import cr_image
from telerad.context import Context
from telerad.db.models import Instance


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt",
             "-days", "2", "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def _leaf(d: Path, name: str, ca: str, usage: str) -> None:
    (d / f"{name}.ext").write_text(f"subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={name}", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test CA with a server and a client certificate, and a rogue CA with its own client certificate."""
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _leaf(d, "server", "ca", "serverAuth")
    _leaf(d, "client", "ca", "clientAuth")
    _ca(d, "rogue")
    _leaf(d, "intruder", "rogue", "clientAuth")
    return d


def _start(ctx: Context, pki: Path, mutual: bool) -> DimseServer:
    ctx.settings.dimse_tls_cert = pki / "server.crt"
    ctx.settings.dimse_tls_key = pki / "server.key"
    ctx.settings.dimse_tls_ca = pki / "ca.crt" if mutual else None
    return start_dimse(ctx)


@pytest.fixture
def mutual_tls(ctx: Context, pki: Path, gh_node: str) -> Iterator[DimseServer]:
    server = _start(ctx, pki, mutual=True)
    yield server
    server.shutdown()


@pytest.fixture
def server_tls(ctx: Context, pki: Path, gh_node: str) -> Iterator[DimseServer]:
    server = _start(ctx, pki, mutual=False)
    yield server
    server.shutdown()


@pytest.fixture
def tool(ctx: Context, tmp_path: Path) -> Dcmtk:
    return Dcmtk(ctx.settings.dicom_port, tmp_path / "dcmtk", ctx.settings.ae_title)


def client_tls(pki: Path, cert: str | None = "client", **versions: ssl.TLSVersion) -> ssl.SSLContext:
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.load_verify_locations(pki / "ca.crt")
    if cert:
        c.load_cert_chain(pki / f"{cert}.crt", pki / f"{cert}.key")
    for attr, value in versions.items():
        setattr(c, attr, value)
    return c


def handshake(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        return context.wrap_socket(raw, server_hostname="127.0.0.1")
    except BaseException:
        raw.close()
        raise


def test_echo_and_store_with_client_certificate(ctx: Context, mutual_tls: DimseServer, tool: Dcmtk, pki: Path,
                                                tmp_path: Path) -> None:
    tls = ["+tls", str(pki / "client.key"), str(pki / "client.crt"), "+cf", str(pki / "ca.crt")]
    r = tool.echo(GH_AE, *tls)
    assert r.rc == 0, r.out
    assert "Received Echo Response (Success)" in r

    files = write_files(tmp_path / "in", [cr_image(("Tls^Pat", "T1", "19700101", "F"), generate_uid(), "T1")])
    r = tool.store(GH_AE, files, *tls)
    assert r.rc == 0, r.out
    with ctx.db.session() as s:
        assert s.execute(select(Instance.source_ae)).scalars().all() == [GH_AE]


def test_plain_tcp_client_is_refused(mutual_tls: DimseServer, tool: Dcmtk) -> None:
    r = tool.echo(GH_AE, "-to", "10", "-ta", "10")
    assert r.rc != 0
    assert "Received Echo Response" not in r


def test_client_without_certificate_is_refused(mutual_tls: DimseServer, tool: Dcmtk, pki: Path) -> None:
    r = tool.echo(GH_AE, "+tla", "+cf", str(pki / "ca.crt"))
    assert r.rc != 0
    assert "Received Echo Response" not in r


def test_client_certificate_from_another_ca_is_refused(mutual_tls: DimseServer, tool: Dcmtk, pki: Path) -> None:
    r = tool.echo(GH_AE, "+tls", str(pki / "intruder.key"), str(pki / "intruder.crt"), "+cf", str(pki / "ca.crt"))
    assert r.rc != 0
    assert "Received Echo Response" not in r
    with pytest.raises((ssl.SSLError, OSError)):
        s = handshake(mutual_tls.address[1], client_tls(pki, "intruder"))
        s.recv(1)  # TLS 1.3: the server's verdict on the client certificate arrives after the handshake
        s.close()


def test_tls13_is_negotiated_and_dimse_works_over_it(ctx: Context, mutual_tls: DimseServer, pki: Path) -> None:
    with handshake(mutual_tls.address[1], client_tls(pki)) as s:
        assert s.version() == "TLSv1.3"

    ae = AE(ae_title=GH_AE)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", mutual_tls.address[1], ae_title=ctx.settings.ae_title,
                         tls_args=(client_tls(pki), "127.0.0.1"))
    assert assoc.is_established
    assert assoc.dul.socket.socket.version() == "TLSv1.3"
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    ae.shutdown()


def test_tls12_uses_forward_secret_aead_suites(mutual_tls: DimseServer, pki: Path) -> None:
    ctx12 = client_tls(pki, maximum_version=ssl.TLSVersion.TLSv1_2)
    ctx12.set_ciphers("ALL:@SECLEVEL=0")  # offer everything: the server must pick a BCP 195 suite
    with handshake(mutual_tls.address[1], ctx12) as s:
        assert s.version() == "TLSv1.2"
        name, _, _ = s.cipher()
        assert name.startswith(("ECDHE-", "DHE-")) and ("GCM" in name or "CHACHA20" in name), name


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls11_client_is_refused(mutual_tls: DimseServer, pki: Path) -> None:
    old = client_tls(pki, minimum_version=ssl.TLSVersion.TLSv1, maximum_version=ssl.TLSVersion.TLSv1_1)
    old.set_ciphers("ALL:@SECLEVEL=0")  # let this client really offer TLS 1.0/1.1
    with pytest.raises(ssl.SSLError) as err:
        handshake(mutual_tls.address[1], old)
    # The *server* answered with a protocol_version alert (a local refusal would be NO_PROTOCOLS_AVAILABLE).
    assert "TLSV1_ALERT_PROTOCOL_VERSION" in str(err.value)


def test_server_only_tls_accepts_anonymous_clients(ctx: Context, server_tls: DimseServer, tool: Dcmtk,
                                                   pki: Path) -> None:
    r = tool.echo(GH_AE, "+tla", "+cf", str(pki / "ca.crt"))
    assert r.rc == 0, r.out
    assert "Received Echo Response (Success)" in r


def test_silent_client_does_not_stall_the_listener(mutual_tls: DimseServer, tool: Dcmtk, pki: Path) -> None:
    with socket.create_connection(("127.0.0.1", mutual_tls.address[1])):  # connects, never says hello
        r = tool.echo(GH_AE, "+tls", str(pki / "client.key"), str(pki / "client.crt"), "+cf", str(pki / "ca.crt"))
        assert r.rc == 0, r.out


def test_unregistered_ae_is_still_rejected_over_tls(mutual_tls: DimseServer, tool: Dcmtk, pki: Path,
                                                     site: registry.Site) -> None:
    r = tool.echo("STRANGER", "+tls", str(pki / "client.key"), str(pki / "client.crt"), "+cf", str(pki / "ca.crt"))
    assert r.rc != 0
    assert "Calling AE Title Not Recognized" in r
