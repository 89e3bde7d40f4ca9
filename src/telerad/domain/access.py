"""Roles and permissions: the pure rules of who may do what (HIPAA 164.312(a)(1) access control).

Roles are the service's job functions. Permissions name use cases, not routes; each HTTP route and DIMSE
service declares the one permission it needs, and the scoping point (``security.scope``) checks it together
with the site. Administration and PHI access are deliberately separate: ``admin`` manages users, sites and
tokens but reads no patient data, except through audited break-glass access (IHE ATNA "Emergency Override",
DCM 110127).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Role(StrEnum):
    SITE_STAFF = "site_staff"  # a site's technologists, clerks and referrers
    RADIOLOGIST = "radiologist"  # reads for the sites they are credentialed at
    QA_REVIEWER = "qa_reviewer"  # peer review and audit review
    COORDINATOR = "coordinator"  # the service's operations staff
    ADMIN = "admin"  # users, sites, nodes, tokens; no PHI without break-glass


class Permission(StrEnum):
    ARCHIVE_READ = "archive.read"  # QIDO / WADO / C-FIND / C-GET / C-MOVE
    ARCHIVE_STORE = "archive.store"  # STOW / C-STORE / import
    AUDIT_READ = "audit.read"  # search the audit trail
    USERS_MANAGE = "users.manage"  # users, roles, memberships, tokens of others
    SITES_MANAGE = "sites.manage"  # sites and DICOM nodes
    BREAK_GLASS = "break_glass"  # emergency access to a site's PHI, reason required


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.SITE_STAFF: frozenset({Permission.ARCHIVE_READ, Permission.ARCHIVE_STORE}),
    Role.RADIOLOGIST: frozenset({Permission.ARCHIVE_READ}),
    Role.QA_REVIEWER: frozenset({Permission.ARCHIVE_READ, Permission.AUDIT_READ}),
    Role.COORDINATOR: frozenset({Permission.ARCHIVE_READ, Permission.ARCHIVE_STORE}),
    Role.ADMIN: frozenset({Permission.USERS_MANAGE, Permission.SITES_MANAGE, Permission.AUDIT_READ,
                           Permission.BREAK_GLASS}),
}

# What break-glass grants on the chosen site, for its limited time.
BREAK_GLASS_GRANTS: frozenset[Permission] = frozenset({Permission.ARCHIVE_READ})

# Permissions that act on one site's data (the request must resolve to one site the caller may use).
SITE_SCOPED: frozenset[Permission] = frozenset({Permission.ARCHIVE_READ, Permission.ARCHIVE_STORE})


def parse_roles(values: Iterable[str]) -> frozenset[Role]:
    """Role names to roles; unknown names raise ``ValueError`` naming the valid ones."""
    roles = set()
    for value in values:
        for name in value.replace(",", " ").split():
            try:
                roles.add(Role(name.strip().lower()))
            except ValueError:
                valid = ", ".join(r.value for r in Role)
                raise ValueError(f"unknown role {name!r} (valid: {valid})") from None
    return frozenset(roles)


def permissions_of(roles: Iterable[Role]) -> frozenset[Permission]:
    out: set[Permission] = set()
    for role in roles:
        out |= ROLE_PERMISSIONS[role]
    return frozenset(out)


def roles_text(roles: Iterable[Role]) -> str:
    """Stored form: sorted, space-separated."""
    return " ".join(sorted(r.value for r in roles))
