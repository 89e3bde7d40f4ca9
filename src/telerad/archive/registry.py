"""Sites (tenants) and their DICOM nodes (PS3.7 D.3.3.3 application entities)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from sqlalchemy import select

from telerad.context import Context
from telerad.db.models import Node, Site
from telerad.security.audit import CLI_ACTOR, Action, Actor, Event

__all__ = ["Site", "Node", "NodeInfo", "RegistryError"]

_CODE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_AE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE: 16 chars, no backslash, no control chars


class RegistryError(ValueError):
    pass


@dataclass(frozen=True)
class NodeInfo:
    site_id: int
    site_code: str
    ae_title: str
    host: str
    port: int


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
        return [NodeInfo(n.site_id, code, n.ae_title, n.host, n.port) for n, code in s.execute(q)]


def find_node(ctx: Context, ae_title: str) -> NodeInfo | None:
    with ctx.db.session() as s:
        row = s.execute(
            select(Node, Site.code).join(Site, Node.site_id == Site.id).where(Node.ae_title == ae_title.strip())
        ).first()
    if row is None:
        return None
    n, code = row
    return NodeInfo(n.site_id, code, n.ae_title, n.host, n.port)


def resolve_calling_ae(ctx: Context, ae_title: str, address: str) -> int | None:
    """The site an association belongs to, or None to reject it (calling AE not recognised).

    A registered AE title belongs to its site. An unregistered one is accepted only from a loopback
    address and only when a site opted in for demo use.
    """
    node = find_node(ctx, ae_title)
    if node is not None:
        return node.site_id
    try:
        loopback = ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        return None
    with ctx.db.session() as s:
        return s.execute(
            select(Site.id).where(Site.accept_unregistered_loopback.is_(True))
        ).scalar_one_or_none()
