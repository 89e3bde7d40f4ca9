"""API tokens for integrations and scripts (``Authorization: Bearer``, RFC 6750).

A token reads ``trd_<public id>_<secret>``. It is shown once, at creation; the database keeps the public id
and the SHA-256 of the secret (the secret has 256 bits of entropy, so a fast hash suffices, and checking it
costs microseconds per request). A token acts for its owner, narrowed to one site and to a subset of the
owner's roles; it expires (at most ``token_max_days``) and can be revoked. Audit records name the owner
as actor, with actor type ``token`` and the token id.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, select, update

from telerad.context import Context
from telerad.db.compiled import CompiledCache
from telerad.db.models import ApiToken, Membership, Site, User
from telerad.domain.access import parse_roles, roles_text
from telerad.security.audit import Action, Event
from telerad.security.auth import sha256_hex, utcnow
from telerad.security.scope import Principal, Unauthenticated
from telerad.security.users import CLI_ACTOR, Actor, UserError

PREFIX = "trd_"


@dataclass(frozen=True)
class TokenInfo:
    public_id: str
    username: str
    name: str
    site: str
    roles: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked: bool

    def as_dict(self) -> dict[str, object]:
        def iso(d: datetime | None) -> str | None:
            return d.isoformat() + "Z" if d else None

        return {"id": self.public_id, "user": self.username, "name": self.name, "site": self.site,
                "roles": list(self.roles), "created_at": iso(self.created_at), "expires_at": iso(self.expires_at),
                "last_used_at": iso(self.last_used_at), "revoked": self.revoked}


def create_token(ctx: Context, username: str, site_code: str, roles: list[str] | None = None, *, name: str = "",
                 days: int | None = None, actor: Actor = CLI_ACTOR) -> tuple[str, TokenInfo]:
    """A new token for ``username`` at ``site_code`` with ``roles`` (default: all the user's roles).
    Returns the token itself (shown once) and its description."""
    max_days = ctx.settings.token_max_days
    days = max_days if days is None else days
    if not 1 <= days <= max_days:
        raise UserError(f"token lifetime: 1 to {max_days} days")
    with ctx.db.session(write=True) as s:
        user = s.execute(select(User).where(User.username == username)).scalar_one_or_none()
        if user is None:
            raise UserError(f"no user {username}")
        if user.disabled:
            raise UserError(f"user {username} is disabled")
        site_id = s.execute(select(Site.id).where(Site.code == site_code)).scalar_one_or_none()
        if site_id is None:
            raise UserError(f"no site {site_code}")
        if not s.execute(select(Membership).where(Membership.user_id == user.id,
                                                  Membership.site_id == site_id)).first():
            raise UserError(f"user {username} is not a member of site {site_code}")
        owned = parse_roles([user.roles])
        try:
            wanted = parse_roles(roles) if roles else owned
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if not wanted <= owned:
            extra = ", ".join(sorted(r.value for r in wanted - owned))
            raise UserError(f"user {username} does not hold role(s) {extra}")
        public_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        now = utcnow()
        row = ApiToken(public_id=public_id, user_id=user.id, name=name[:100], site_id=site_id,
                       roles=roles_text(wanted), secret_hash=sha256_hex(secret), created_at=now,
                       expires_at=now + timedelta(days=days))
        s.add(row)
        s.flush()
        info = TokenInfo(public_id, username, row.name, site_code, tuple(roles_text(wanted).split()), now,
                         row.expires_at, None, False)
    ctx.audit.record(Event(Action.TOKEN_CHANGE, actor_type=actor.kind, actor=actor.name, source=actor.source,
                           site_id=site_id, site_code=site_code,
                           details={"change": "created", "token": public_id, "user": username,
                                    "roles": list(info.roles), "expires_at": info.as_dict()["expires_at"]}),
                     wait=True)
    return f"{PREFIX}{public_id}_{secret}", info


def list_tokens(ctx: Context, username: str | None = None) -> list[TokenInfo]:
    q = (select(ApiToken, User.username, Site.code).join(User, User.id == ApiToken.user_id)
         .outerjoin(Site, Site.id == ApiToken.site_id).order_by(ApiToken.created_at))
    if username:
        q = q.where(User.username == username)
    with ctx.db.session() as s:
        return [TokenInfo(t.public_id, u, t.name, code or "", tuple(t.roles.split()), t.created_at, t.expires_at,
                          t.last_used_at, t.revoked_at is not None) for t, u, code in s.execute(q).all()]


def revoke_token(ctx: Context, public_id: str, actor: Actor = CLI_ACTOR, owner: str | None = None) -> None:
    """Revoke a token (``owner``: only if it belongs to that user)."""
    with ctx.db.session(write=True) as s:
        q = select(ApiToken, User.username).join(User, User.id == ApiToken.user_id).where(
            ApiToken.public_id == public_id)
        found = s.execute(q).first()
        if found is None or (owner is not None and found[1] != owner):
            raise UserError(f"no token {public_id}")
        token = found[0]
        if token.revoked_at is None:
            token.revoked_at = utcnow()
    ctx.audit.record(Event(Action.TOKEN_CHANGE, actor_type=actor.kind, actor=actor.name, source=actor.source,
                           details={"change": "revoked", "token": public_id, "user": found[1]}), wait=True)


def token_principal(ctx: Context, token: str, source: str) -> Principal:
    """The principal a bearer token stands for; :class:`Unauthenticated` for anything not a live token."""
    principal, last_used_stale = check_token(ctx, token, source)
    if last_used_stale:
        touch_token(ctx, principal)
    return principal


def check_token(ctx: Context, token: str, source: str) -> tuple[Principal, bool]:
    """:func:`token_principal` without writing: one indexed read. The flag says the token's last-used time
    is more than a minute old (:func:`touch_token` then records this use)."""
    body = token[len(PREFIX):] if token.startswith(PREFIX) else ""
    public_id, _, secret = body.partition("_")
    if not public_id or not secret or len(token) > 200:
        raise Unauthenticated("invalid token")
    now = utcnow()
    # One statement on the bare driver: this runs on every request (:mod:`telerad.db.compiled`).
    lookup = _COMPILED.get("lookup", _LOOKUP, ctx.db.engine.dialect)
    assert lookup is not None  # plain bind parameters: always compilable
    with ctx.db.dbapi_read() as cur:
        row = lookup.first_named(cur, {"public_id": public_id})
    if row is None or not hmac.compare_digest(row.secret_hash, sha256_hex(secret)):
        raise Unauthenticated("invalid token")
    if row.revoked_at is not None:
        raise Unauthenticated("token revoked")
    if row.expires_at is not None and row.expires_at <= now:
        raise Unauthenticated("token expired")
    if row.disabled:
        raise Unauthenticated("account disabled")
    roles = parse_roles([row.user_roles]) & parse_roles([row.roles])
    sites = frozenset({row.member_site}) if row.member_site is not None else frozenset()
    principal = Principal("token", row.username, row.user_id, roles, sites, frozenset(), None, row.id, False,
                          source, {"token": public_id})
    return principal, row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1)


def touch_token(ctx: Context, principal: Principal) -> None:
    """Record that the token was used now (at most once a minute: a write per request would serialise them)."""
    with ctx.db.session(write=True) as s:
        s.execute(update(ApiToken).where(ApiToken.id == principal.token_id).values(last_used_at=utcnow()))


# A token, its owner, and whether the owner is (still) a member of the token's site.
_LOOKUP = (
    select(ApiToken.id, ApiToken.secret_hash, ApiToken.revoked_at, ApiToken.expires_at, ApiToken.last_used_at,
           ApiToken.roles, ApiToken.user_id, User.username, User.roles.label("user_roles"), User.disabled,
           Membership.site_id.label("member_site"))
    .join(User, User.id == ApiToken.user_id)
    .outerjoin(Membership, (Membership.user_id == ApiToken.user_id) & (Membership.site_id == ApiToken.site_id))
    .where(ApiToken.public_id == bindparam("public_id"))
)
_COMPILED = CompiledCache()
