"""The one scoping point: who is acting (a :class:`Principal`) and for which site (tenant).

Every adapter authenticates its caller into a Principal once, at the edge, and then asks
:func:`resolve_site` for the one site a use case acts on. Services receive only that site's id and filter by
it; no route or DIMSE handler compares sites itself (ARCHITECTURE: one scoping point).

Outcomes follow the issue's contract: no credentials -> :class:`Unauthenticated` (HTTP 401); a role without
the permission -> :class:`Forbidden` (403); a site the caller may not use, or that does not exist ->
:class:`NotFound` (404, the same answer either way, so no existence leaks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sqlalchemy import select

from telerad.db.models import Site
from telerad.db.session import Database
from telerad.domain.access import BREAK_GLASS_GRANTS, Permission, Role, permissions_of

_CODE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")  # as registry.add_site admits site codes


class AccessError(Exception):
    status = 403

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthenticated(AccessError):
    status = 401


class Forbidden(AccessError):
    status = 403


class NotFound(AccessError):
    status = 404


class InvalidRequest(AccessError):
    status = 400


class SiteRequired(InvalidRequest):
    pass


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a user (browser session), an API token, or a DICOM node."""

    kind: str  # "user" | "token" | "node"
    name: str  # username (of a session, or of a token's owner), or AE title
    user_id: int | None
    roles: frozenset[Role]
    site_ids: frozenset[int]  # sites it may act for
    break_glass_site_ids: frozenset[int] = frozenset()  # sites under active emergency access
    session_id: int | None = None
    token_id: int | None = None
    mfa_pending: bool = False  # signed in with a password, TOTP enrolment still required
    source: str = ""
    extra: dict[str, str] = field(default_factory=dict, compare=False)  # e.g. {"token": public id}, audited

    @property
    def audit_actor(self) -> tuple[str, str]:
        return self.kind, self.name

    @property
    def permissions(self) -> frozenset[Permission]:
        return frozenset() if self.mfa_pending else permissions_of(self.roles)

    def has(self, permission: Permission) -> bool:
        return permission in self.permissions

    def may_use(self, permission: Permission, site_id: int) -> bool:
        if self.mfa_pending:
            return False
        if permission in self.permissions and site_id in self.site_ids:
            return True
        return permission in BREAK_GLASS_GRANTS and site_id in self.break_glass_site_ids


@dataclass(frozen=True)
class SiteScope:
    """The tenant a request acts for, with the principal acting."""

    id: int
    code: str
    principal: Principal | None = None


def require(principal: Principal | None, permission: Permission) -> Principal:
    """403 unless the principal's roles carry ``permission`` (break-glass counts for its site-scoped grants)."""
    if principal is None:
        raise Unauthenticated("authentication required")
    if principal.mfa_pending:
        raise Forbidden("second factor enrolment required: set up TOTP at /api/auth/totp first")
    if principal.has(permission):
        return principal
    if permission in BREAK_GLASS_GRANTS and principal.break_glass_site_ids:
        return principal
    raise Forbidden(f"{permission.value} is not permitted for role(s) "
                    f"{', '.join(sorted(r.value for r in principal.roles)) or 'none'}")


def site_codes(db: Database, site_ids: frozenset[int]) -> dict[int, str]:
    if not site_ids:
        return {}
    with db.session() as s:
        return dict(s.execute(select(Site.id, Site.code).where(Site.id.in_(site_ids))).all())


def resolve_site(db: Database, principal: Principal | None, permission: Permission, code: str | None,
                 known: dict[str, int] | None = None) -> SiteScope:
    """The site ``principal`` acts on for ``permission``: the one named by ``code``, or its only site.

    ``known`` is an optional cache of site code -> id (sites are never renamed or removed).
    """
    principal = require(principal, permission)
    usable = principal.site_ids | (principal.break_glass_site_ids if permission in BREAK_GLASS_GRANTS
                                   else frozenset())
    code = (code or "").strip()
    if not code:
        ids = [sid for sid in usable if principal.may_use(permission, sid)]
        if len(ids) == 1:
            cached = [c for c, i in list((known or {}).items()) if i == ids[0]]
            code = cached[0] if cached else site_codes(db, frozenset(ids))[ids[0]]
            if known is not None:
                known[code] = ids[0]
            return SiteScope(ids[0], code, principal)
        if not ids:
            raise Forbidden("you are not a member of any site")
        raise SiteRequired("you may act for several sites: name one in the X-Telerad-Site header")
    site_id = (known or {}).get(code)
    if site_id is None and _CODE.match(code):
        with db.session() as s:
            site_id = s.execute(select(Site.id).where(Site.code == code)).scalar_one_or_none()
        if site_id is not None and known is not None:
            known[code] = site_id
    if site_id is None or not principal.may_use(permission, site_id):
        raise NotFound(f"unknown site {code[:32]!r}")
    return SiteScope(site_id, code, principal)
