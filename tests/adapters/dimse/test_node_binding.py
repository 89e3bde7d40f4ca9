"""A registered calling AE title is bound to its node (PS3.8 9.3.4, PS3.15 B.9): to its client certificate
when one is registered, otherwise to the addresses of its registered host. Refusals are A-ASSOCIATE-RJ
(1, 1, 3) and audited once per association as node authentication failures (PS3.15 A.5.3.14)."""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from adapters.dimse.dimse_support import GH_AE, Dcmtk
from pki_support import client_context, make_ca, make_leaf
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from telerad.adapters.dimse.server import DimseServer, start_dimse
from telerad.archive import registry
from telerad.context import Context
from telerad.security import audit
from telerad.security.audit import MINOR_FAILURE, Action


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CA; the node's client certificate and another client certificate the same CA issued."""
    d = tmp_path_factory.mktemp("binding-pki")
    make_ca(d, "ca")
    make_leaf(d, "server", "ca", "serverAuth")
    make_leaf(d, "node", "ca", "clientAuth")
    make_leaf(d, "other", "ca", "clientAuth")
    return d


def rejections(ctx: Context, actor: str = GH_AE) -> list[dict[str, Any]]:
    ctx.audit.flush()
    return audit.search(ctx.db, action=Action.NODE_REJECTED, actor=actor)[1]


def pynetdicom_echo(ctx: Context, port: int, calling: str, **kwargs: Any) -> tuple[bool, Any]:
    """(established, A-ASSOCIATE-RJ primitive or None) of an association from a pynetdicom requestor."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title=ctx.settings.ae_title, **kwargs)
        if assoc.is_established:
            assert assoc.send_c_echo().Status == 0x0000
            assoc.release()
            return True, None
        return False, assoc.acceptor.primitive if assoc.is_rejected else None
    finally:
        ae.shutdown()


# --- address binding -----------------------------------------------------------------------------------

def test_registered_ae_from_another_address_is_rejected_and_audited(ctx: Context, dcmtk: Dcmtk,
                                                                     site: registry.Site) -> None:
    registry.add_node(ctx, "GH", GH_AE, "127.0.0.2", 104)  # the node is at 127.0.0.2; DCMTK calls from 127.0.0.1
    r = dcmtk.echo(GH_AE)
    assert r.rc != 0
    assert "Association Rejected" in r and "Calling AE Title Not Recognized" in r and "Rejected Permanent" in r
    [event] = rejections(ctx)
    assert event["outcome"] == MINOR_FAILURE and event["actor_type"] == "node"
    assert event["source"] == "127.0.0.1" and event["site"] == "GH"
    assert "127.0.0.2" in event["details"]["reason"] and event["details"]["tls"] is False


def test_rejection_is_1_1_3_and_audited_once(ctx: Context, dimse: DimseServer, site: registry.Site) -> None:
    registry.add_node(ctx, "GH", GH_AE, "127.0.0.2", 104)
    established, rj = pynetdicom_echo(ctx, ctx.settings.dicom_port, GH_AE)
    assert not established
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)
    assert len(rejections(ctx)) == 1


def test_registered_ae_from_its_own_address_is_accepted(ctx: Context, dimse: DimseServer,
                                                        site: registry.Site) -> None:
    registry.add_node(ctx, "GH", GH_AE, "127.0.0.2", 104)
    established, _ = pynetdicom_echo(ctx, ctx.settings.dicom_port, GH_AE, bind_address=("127.0.0.2", 0))
    assert established
    assert rejections(ctx) == []


def test_host_name_is_resolved(ctx: Context, dcmtk: Dcmtk, site: registry.Site) -> None:
    registry.add_node(ctx, "GH", GH_AE, "localhost", 104)
    r = dcmtk.echo(GH_AE)
    assert r.rc == 0, r.out
    registry.add_node(ctx, "GH", "GH_GONE", "no-such-host.invalid", 104)  # RFC 6761: never resolves
    r = dcmtk.echo("GH_GONE")
    assert r.rc != 0 and "Calling AE Title Not Recognized" in r
    [event] = rejections(ctx, "GH_GONE")
    assert "does not resolve" in event["details"]["reason"]


def test_ipv6_loopback_registration_accepts_ipv4_loopback(ctx: Context, dcmtk: Dcmtk, site: registry.Site) -> None:
    registry.add_node(ctx, "GH", GH_AE, "::1", 104)
    r = dcmtk.echo(GH_AE)
    assert r.rc == 0, r.out


@pytest.mark.parametrize(("address", "expected"), [
    ("127.0.0.1", "127.0.0.1"), ("::1", "127.0.0.1"), ("::ffff:127.0.0.1", "127.0.0.1"), ("[::1]", "127.0.0.1"),
    ("::ffff:192.0.2.7", "192.0.2.7"), ("2001:db8::1", "2001:db8::1"), ("fe80::1%eth0", "fe80::1"),
    ("127.0.0.2", "127.0.0.2"),
])
def test_address_normalisation(address: str, expected: str) -> None:
    assert registry.normalise_address(address) == ipaddress.ip_address(expected)


def test_non_addresses_normalise_to_none() -> None:
    assert registry.normalise_address("pacs.example.org") is None
    assert registry.normalise_address("") is None


# --- certificate binding -------------------------------------------------------------------------------

def _tls(pki: Path, cert: str) -> list[str]:
    return ["+tls", str(pki / f"{cert}.key"), str(pki / f"{cert}.crt"), "+cf", str(pki / "ca.crt")]


@pytest.fixture
def mutual_tls(ctx: Context, pki: Path) -> Iterator[DimseServer]:
    ctx.settings.dimse_tls_cert = pki / "server.crt"
    ctx.settings.dimse_tls_key = pki / "server.key"
    ctx.settings.dimse_tls_ca = pki / "ca.crt"
    server = start_dimse(ctx)
    yield server
    server.shutdown()


@pytest.fixture
def bound_node(ctx: Context, site: registry.Site, pki: Path) -> str:
    """GH_PACS bound to node.crt, registered at an address it never connects from: the certificate decides."""
    registry.add_node(ctx, "GH", GH_AE, "192.0.2.10", 104,
                      tls_fingerprint=registry.certificate_fingerprint(pki / "node.crt"))
    return GH_AE


@pytest.fixture
def tool(ctx: Context, tmp_path: Path) -> Dcmtk:
    return Dcmtk(ctx.settings.dicom_port, tmp_path / "dcmtk", ctx.settings.ae_title)


def test_certificate_fingerprint_matches_openssl(pki: Path) -> None:
    out = subprocess.run(["openssl", "x509", "-in", str(pki / "node.crt"), "-noout", "-fingerprint", "-sha256"],
                         capture_output=True, text=True, check=True).stdout
    expected = out.split("=", 1)[1].strip().replace(":", "").lower()
    assert registry.certificate_fingerprint(pki / "node.crt") == expected
    assert registry.normalise_fingerprint(out.split("=", 1)[1]) == expected
    chain = pki / "chain.pem"
    chain.write_text((pki / "node.crt").read_text() + (pki / "ca.crt").read_text())
    assert registry.certificate_fingerprint(chain) == expected  # the leaf, first in the file
    with pytest.raises(registry.RegistryError):
        registry.certificate_fingerprint(pki / "node.key")


def test_bound_node_is_accepted_with_its_certificate(ctx: Context, mutual_tls: DimseServer, bound_node: str,
                                                     tool: Dcmtk, pki: Path) -> None:
    r = tool.echo(bound_node, *_tls(pki, "node"))
    assert r.rc == 0, r.out
    assert "Received Echo Response (Success)" in r
    assert rejections(ctx) == []


def test_bound_node_with_another_valid_certificate_is_rejected(ctx: Context, mutual_tls: DimseServer,
                                                               bound_node: str, tool: Dcmtk, pki: Path) -> None:
    r = tool.echo(bound_node, *_tls(pki, "other"))  # same CA, so the TLS handshake itself succeeds
    assert r.rc != 0
    assert "Calling AE Title Not Recognized" in r
    [event] = rejections(ctx)
    assert event["details"]["tls"] is True
    assert event["details"]["certificate_sha256"] == registry.certificate_fingerprint(pki / "other.crt")
    assert "not the one registered" in event["details"]["reason"]


def test_bound_node_is_rejected_without_tls(ctx: Context, dcmtk: Dcmtk, bound_node: str) -> None:
    r = dcmtk.echo(bound_node)  # the plain TCP listener of the ``dimse`` fixture
    assert r.rc != 0 and "Calling AE Title Not Recognized" in r
    [event] = rejections(ctx)
    assert event["details"]["tls"] is False and "none was presented" in event["details"]["reason"]


def test_bound_node_is_accepted_by_pynetdicom_with_its_certificate(ctx: Context, mutual_tls: DimseServer,
                                                                   bound_node: str, pki: Path) -> None:
    tls = client_context(pki / "ca.crt", pki / "node.crt", pki / "node.key")
    established, _ = pynetdicom_echo(ctx, mutual_tls.address[1], bound_node, tls_args=(tls, "127.0.0.1"))
    assert established
    other = client_context(pki / "ca.crt", pki / "other.crt", pki / "other.key")
    established, rj = pynetdicom_echo(ctx, mutual_tls.address[1], bound_node, tls_args=(other, "127.0.0.1"))
    assert not established and (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)


def test_unbound_node_over_mutual_tls_still_needs_its_address(ctx: Context, mutual_tls: DimseServer,
                                                              site: registry.Site, tool: Dcmtk, pki: Path) -> None:
    registry.add_node(ctx, "GH", GH_AE, "127.0.0.2", 104)
    r = tool.echo(GH_AE, *_tls(pki, "node"))
    assert r.rc != 0 and "Calling AE Title Not Recognized" in r
    registry.add_node(ctx, "GH", "GH_LOCAL", "127.0.0.1", 104)
    assert tool.echo("GH_LOCAL", *_tls(pki, "node")).rc == 0


def test_invalid_fingerprint_is_refused_at_registration(ctx: Context, site: registry.Site) -> None:
    with pytest.raises(registry.RegistryError):
        registry.add_node(ctx, "GH", GH_AE, "127.0.0.1", 104, tls_fingerprint="abc")
