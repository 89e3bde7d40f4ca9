"""Sites (tenants) and their DICOM nodes (PS3.7 D.3.3.3 application entities).

A calling AE title is only a claim (PS3.8 7.1.1.3 leaves its authentication to the acceptor), so a
registered node is bound to something the peer cannot simply assert (:func:`admit_calling_ae`): its client
certificate when one is registered (PS3.15 B.9 mutual TLS, compared by SHA-256 fingerprint), otherwise the
network addresses its registered host resolves to.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, select

from telerad.context import Context
from telerad.db.compiled import CompiledCache
from telerad.db.models import Node, Site
from telerad.security.audit import CLI_ACTOR, Action, Actor, Event

__all__ = ["Site", "Node", "NodeInfo", "RegistryError", "Admission"]

_CODE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_AE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE: 16 chars, no backslash, no control chars
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")
RESOLVE_TTL_S = 60.0  # how long the addresses of a registered host name are reused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPV6_LOOPBACK = ipaddress.IPv6Address("::1")
_IPV4_LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
_resolved: dict[str, tuple[float, frozenset[IPAddress]]] = {}  # host name -> (expiry, addresses)
_resolved_lock = threading.Lock()


class RegistryError(ValueError):
    pass


@dataclass(frozen=True)
class NodeInfo:
    site_id: int
    site_code: str
    ae_title: str
    host: str
    port: int
    tls_fingerprint: str | None = None


@dataclass(frozen=True)
class Admission:
    """The registry's verdict on an A-ASSOCIATE-RQ.

    ``site_id``/``site_code`` name the site the calling AE title belongs to; for a refused registered node
    that is the node's site (its administrators see the refusal in their audit trail), but the association
    is admitted only when :attr:`admitted` is true.
    """

    site_id: int | None
    site_code: str = ""
    reason: str = ""  # why it was refused; empty when admitted
    bound_by: str = ""  # "certificate", "address" or "loopback" (unregistered demo AE) when admitted

    @property
    def admitted(self) -> bool:
        return self.site_id is not None and not self.reason


def _audit(ctx: Context, actor: Actor, site: Site, **details: object) -> None:
    ctx.audit.record(Event(Action.SITE_CHANGE, actor_type=actor.kind, actor=actor.name, source=actor.source,
                           site_id=site.id, site_code=site.code, details=details), wait=True)


def add_site(ctx: Context, code: str, name: str, accept_unregistered_loopback: bool = False,
             actor: Actor = CLI_ACTOR) -> Site:
    if not _CODE.match(code):
        raise RegistryError("site code: 1-32 letters, digits, '-' or '_'")
    with ctx.db.session(write=True) as s:
        if s.execute(select(Site).where(Site.code == code)).scalar_one_or_none() is not None:
            raise RegistryError(f"site {code} already exists")
        if accept_unregistered_loopback and s.execute(
            select(Site).where(Site.accept_unregistered_loopback.is_(True))
        ).first():
            raise RegistryError("another site already accepts unregistered loopback AEs")
        site = Site(code=code, name=name, accept_unregistered_loopback=accept_unregistered_loopback)
        s.add(site)
        s.flush()
    _audit(ctx, actor, site, change="site created", name=name,
           accept_unregistered_loopback=accept_unregistered_loopback)
    return site


def get_site(ctx: Context, code: str) -> Site:
    with ctx.db.session() as s:
        site = s.execute(select(Site).where(Site.code == code)).scalar_one_or_none()
    if site is None:
        raise RegistryError(f"no site {code}")
    return site


def list_sites(ctx: Context) -> list[Site]:
    with ctx.db.session() as s:
        return list(s.execute(select(Site).order_by(Site.code)).scalars())


def add_node(ctx: Context, site_code: str, ae_title: str, host: str, port: int, description: str = "",
             tls_fingerprint: str | None = None, actor: Actor = CLI_ACTOR) -> Node:
    """Register a DICOM node; ``tls_fingerprint`` (SHA-256 of its client certificate, hex) binds the AE title to
    that certificate: associations are then accepted only over mutual TLS with it."""
    ae_title = ae_title.strip()
    if not _AE.match(ae_title):
        raise RegistryError("AE title: 1-16 printable characters, no backslash (PS3.5 AE)")
    if not 0 < port < 65536:
        raise RegistryError("port must be 1-65535")
    if tls_fingerprint is not None:
        tls_fingerprint = normalise_fingerprint(tls_fingerprint)
    site = get_site(ctx, site_code)
    with ctx.db.session(write=True) as s:
        if s.execute(select(Node).where(Node.ae_title == ae_title)).scalar_one_or_none() is not None:
            raise RegistryError(f"AE title {ae_title} is already registered")
        node = Node(site_id=site.id, ae_title=ae_title, host=host, port=port, description=description,
                    tls_fingerprint=tls_fingerprint)
        s.add(node)
        s.flush()
    _audit(ctx, actor, site, change="node registered", ae_title=ae_title, host=host, port=port,
           tls_bound=bool(tls_fingerprint))
    return node


def list_nodes(ctx: Context, site_code: str | None = None) -> list[NodeInfo]:
    with ctx.db.session() as s:
        q = select(Node, Site.code).join(Site, Node.site_id == Site.id).order_by(Site.code, Node.ae_title)
        if site_code:
            q = q.where(Site.code == site_code)
        return [_info(n, code) for n, code in s.execute(q)]


def find_node(ctx: Context, ae_title: str) -> NodeInfo | None:
    with ctx.db.dbapi_read() as cur:
        return _find_node(ctx, cur, ae_title)


# Every association is admitted by these reads, on the bare driver (:mod:`telerad.db.compiled`): through the
# ORM they were half of the server's time for an association that only echoes or queries.
_NODE = (select(Node.site_id, Site.code, Node.ae_title, Node.host, Node.port, Node.tls_fingerprint)
         .join(Site, Node.site_id == Site.id).where(Node.ae_title == bindparam("ae_title")))
_LOOPBACK_SITE = select(Site.id, Site.code).where(Site.accept_unregistered_loopback.is_(True)).order_by(Site.id)
_COMPILED = CompiledCache()


def _find_node(ctx: Context, cur: Any, ae_title: str) -> NodeInfo | None:
    lookup = _COMPILED.get("node", _NODE, ctx.db.engine.dialect)
    assert lookup is not None  # plain bind parameters: always compilable
    row = lookup.first(cur, {"ae_title": ae_title.strip()})
    return None if row is None else NodeInfo(*row)


def _info(n: Node, site_code: str) -> NodeInfo:
    return NodeInfo(n.site_id, site_code, n.ae_title, n.host, n.port, n.tls_fingerprint)


def resolve_calling_ae(ctx: Context, ae_title: str, address: str, peer_certificate: bytes | None = None) -> int | None:
    """The site an association belongs to, or None to reject it (see :func:`admit_calling_ae`)."""
    admission = admit_calling_ae(ctx, ae_title, address, peer_certificate)
    return admission.site_id if admission.admitted else None


def admit_calling_ae(ctx: Context, ae_title: str, address: str, peer_certificate: bytes | None = None) -> Admission:
    """Decide whether an association from ``ae_title`` at ``address`` is accepted, and for which site.

    ``peer_certificate`` is the DER client certificate of a TLS connection (None over plain TCP or when the
    client sent none). A registered node is accepted only

    - when it has a ``tls_fingerprint``: over TLS with exactly that certificate (PS3.15 B.9, the node's
      identity is its key, wherever it connects from); otherwise
    - from one of the addresses its registered host resolves to (:func:`host_addresses`).

    An unregistered AE title is accepted only from a loopback address and only when a site opted in for
    demo use. A refused association carries the reason (for the audit trail) and, when the AE title names a
    registered node, that node's site.
    """
    peer = normalise_address(address)
    with ctx.db.dbapi_read() as cur:  # one pooled connection for both reads, released before any DNS lookup
        node = _find_node(ctx, cur, ae_title)
        row = None
        if node is None and peer is not None and peer.is_loopback:
            loopback = _COMPILED.get("loopback", _LOOPBACK_SITE, ctx.db.engine.dialect)
            assert loopback is not None
            row = loopback.first(cur, {})
    if node is not None:
        reason = _node_mismatch(node, address, peer_certificate)
        if reason:
            return Admission(node.site_id, node.site_code, reason)
        return Admission(node.site_id, node.site_code, bound_by="certificate" if node.tls_fingerprint else "address")
    if peer is None or not peer.is_loopback:
        return Admission(None, reason="calling AE title not registered")
    if row is None:
        return Admission(None, reason="calling AE title not registered (no site accepts unregistered loopback AEs)")
    return Admission(row[0], row[1], bound_by="loopback")


def _node_mismatch(node: NodeInfo, address: str, peer_certificate: bytes | None) -> str:
    """Why the peer is not the registered node, or "" when it is."""
    if node.tls_fingerprint:
        if peer_certificate is None:
            return "node is bound to a TLS client certificate; none was presented"
        got = hashlib.sha256(peer_certificate).hexdigest()
        if not hmac.compare_digest(got, normalise_fingerprint(node.tls_fingerprint)):
            return f"client certificate SHA-256 {got} is not the one registered for the node"
        return ""
    peer = normalise_address(address)
    if peer is None:
        return f"peer address {address!r} is not an IP address"
    allowed = host_addresses(node.host)
    if not allowed:
        return f"registered host {node.host!r} does not resolve"
    if peer not in allowed:
        return f"peer address {peer} is not an address of the registered host {node.host!r}"
    return ""


def normalise_address(address: str) -> IPAddress | None:
    """An IP address in the form nodes are compared in, or None for anything else.

    An IPv4-mapped IPv6 address (``::ffff:192.0.2.1``, RFC 4291 2.5.5.2: what a dual-stack listener reports
    for an IPv4 peer) is its IPv4 address, and ``::1`` is ``127.0.0.1``: both are this host's loopback, and
    ``localhost`` resolves to either. Other loopback addresses (``127.0.0.2``...) stay distinct.
    """
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]").split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip == _IPV6_LOOPBACK:
            return _IPV4_LOOPBACK
    return ip


def host_addresses(host: str) -> frozenset[IPAddress]:
    """The normalised addresses a registered host stands for: itself when it is an IP literal, else what
    ``getaddrinfo`` answers (kept for :data:`RESOLVE_TTL_S`; empty when the name does not resolve)."""
    literal = normalise_address(host)
    if literal is not None:
        return frozenset({literal})
    key = host.strip().lower().rstrip(".")
    now = time.monotonic()
    with _resolved_lock:
        hit = _resolved.get(key)
    if hit is not None and hit[0] > now:
        return hit[1]
    try:
        infos = socket.getaddrinfo(key, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        infos = []
    found = frozenset(a for a in (normalise_address(str(i[4][0])) for i in infos) if a is not None)
    with _resolved_lock:
        _resolved[key] = (now + RESOLVE_TTL_S, found)
    return found


def normalise_fingerprint(fingerprint: str) -> str:
    """A SHA-256 fingerprint as 64 lower-case hex digits (``AB:CD:...`` as openssl prints it is accepted)."""
    fp = fingerprint.strip().replace(":", "").lower()
    if not _FINGERPRINT.match(fp):
        raise RegistryError("TLS fingerprint: SHA-256 as 64 hex digits")
    return fp


def certificate_fingerprint(pem_path: Path | str) -> str:
    """SHA-256 (hex) of the DER encoding of the first certificate in a PEM file (RFC 7468 5)."""
    try:
        text = Path(pem_path).read_text("ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"cannot read certificate {pem_path}: {exc}") from exc
    match = _PEM_CERT.search(text)
    if match is None:
        raise RegistryError(f"{pem_path} holds no PEM certificate")
    try:
        der = ssl.PEM_cert_to_DER_cert(match.group(0))
    except ValueError as exc:
        raise RegistryError(f"{pem_path}: {exc}") from exc
    return hashlib.sha256(der).hexdigest()
