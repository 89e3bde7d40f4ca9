"""Users, their roles and site memberships, and TOTP enrolment (RFC 6238). Every change is audited."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import pyotp
from sqlalchemy import delete, select

from telerad.context import Context
from telerad.db.models import Membership, Site, User
from telerad.domain.access import Role, parse_roles, roles_text
from telerad.security.audit import CLI_ACTOR, Action, Actor, Event

__all__ = ["Actor", "CLI_ACTOR", "UserError", "UserInfo"]
from telerad.security.passwords import check_policy, hash_password

_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
TOTP_ISSUER = "telerad"


class UserError(ValueError):
    pass


@dataclass(frozen=True)
class UserInfo:
    id: int
    username: str
    full_name: str
    email: str
    roles: frozenset[Role]
    sites: tuple[str, ...]
    disabled: bool
    mfa: bool
    locked_until: datetime | None

    def as_dict(self) -> dict[str, object]:
        return {"id": self.id, "username": self.username, "full_name": self.full_name, "email": self.email,
                "roles": sorted(r.value for r in self.roles), "sites": list(self.sites),
                "disabled": self.disabled, "mfa": self.mfa,
                "locked_until": self.locked_until.isoformat() if self.locked_until else None}



def _audit(ctx: Context, actor: Actor, what: str, username: str, **details: object) -> None:
    ctx.audit.record(Event(Action.USER_CHANGE, actor_type=actor.kind, actor=actor.name, source=actor.source,
                           details={"change": what, "user": username, **details}), wait=True)


def _site_ids(s, codes: list[str]) -> dict[str, int]:  # type: ignore[no-untyped-def]
    found = dict(s.execute(select(Site.code, Site.id).where(Site.code.in_(codes))).all())
    missing = sorted(set(codes) - set(found))
    if missing:
        raise UserError(f"no such site: {', '.join(missing)}")
    return found


def _info(s, user: User) -> UserInfo:  # type: ignore[no-untyped-def]
    codes = s.execute(select(Site.code).join(Membership, Membership.site_id == Site.id)
                      .where(Membership.user_id == user.id).order_by(Site.code)).scalars().all()
    return UserInfo(user.id, user.username, user.full_name, user.email, parse_roles([user.roles]),
                    tuple(codes), user.disabled, user.totp_confirmed, user.locked_until)


def add_user(ctx: Context, username: str, roles: list[str], sites: list[str], *, password: str | None = None,
             full_name: str = "", email: str = "", actor: Actor = CLI_ACTOR) -> UserInfo:
    if not _USERNAME.match(username):
        raise UserError("username: 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit")
    try:
        role_set = parse_roles(roles)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if not role_set:
        raise UserError("give at least one role")
    if password is not None:
        check_policy(password, ctx.settings.password_min_length, username)
    with ctx.db.session(write=True) as s:
        if s.execute(select(User.id).where(User.username == username)).first():
            raise UserError(f"user {username} already exists")
        ids = _site_ids(s, sites)
        user = User(username=username, full_name=full_name, email=email, roles=roles_text(role_set),
                    password_hash=hash_password(password) if password is not None else None)
        s.add(user)
        s.flush()
        for sid in ids.values():
            s.add(Membership(user_id=user.id, site_id=sid))
        s.flush()
        info = _info(s, user)
    _audit(ctx, actor, "created", username, roles=sorted(r.value for r in role_set), sites=sorted(ids))
    return info


def get_user(ctx: Context, username: str) -> UserInfo:
    with ctx.db.session() as s:
        user = s.execute(select(User).where(User.username == username)).scalar_one_or_none()
        if user is None:
            raise UserError(f"no user {username}")
        return _info(s, user)


def list_users(ctx: Context) -> list[UserInfo]:
    with ctx.db.session() as s:
        return [_info(s, u) for u in s.execute(select(User).order_by(User.username)).scalars()]


def update_user(ctx: Context, username: str, *, roles: list[str] | None = None, sites: list[str] | None = None,
                disabled: bool | None = None, password: str | None = None, full_name: str | None = None,
                unlock: bool = False, actor: Actor = CLI_ACTOR) -> UserInfo:
    """Change roles, memberships (the full new list), disabled flag, password or name."""
    changes: dict[str, object] = {}
    with ctx.db.session(write=True) as s:
        user = s.execute(select(User).where(User.username == username)).scalar_one_or_none()
        if user is None:
            raise UserError(f"no user {username}")
        if roles is not None:
            try:
                role_set = parse_roles(roles)
            except ValueError as exc:
                raise UserError(str(exc)) from None
            if not role_set:
                raise UserError("give at least one role")
            user.roles = roles_text(role_set)
            changes["roles"] = sorted(r.value for r in role_set)
        if sites is not None:
            ids = _site_ids(s, sites)
            s.execute(delete(Membership).where(Membership.user_id == user.id))
            for sid in ids.values():
                s.add(Membership(user_id=user.id, site_id=sid))
            changes["sites"] = sorted(ids)
        if disabled is not None:
            user.disabled = disabled
            changes["disabled"] = disabled
        if password is not None:
            check_policy(password, ctx.settings.password_min_length, username)
            user.password_hash = hash_password(password)
            changes["password"] = "changed"
        if full_name is not None:
            user.full_name = full_name
            changes["full_name"] = full_name
        if unlock:
            user.locked_until, user.failed_logins = None, 0
            changes["unlocked"] = True
        s.flush()
        info = _info(s, user)
    if disabled or password is not None:
        from telerad.security.auth import end_sessions

        end_sessions(ctx, info.id)  # a disabled account or a new password ends every open session
    _audit(ctx, actor, "updated", username, **changes)
    return info


def begin_totp(ctx: Context, username: str, actor: Actor = CLI_ACTOR) -> str:
    """Start (or restart) TOTP enrolment: a new secret; returns the otpauth:// URI for an authenticator app.
    The second factor counts only once :func:`confirm_totp` saw a valid code."""
    secret = pyotp.random_base32()
    with ctx.db.session(write=True) as s:
        user = s.execute(select(User).where(User.username == username)).scalar_one_or_none()
        if user is None:
            raise UserError(f"no user {username}")
        user.totp_secret, user.totp_confirmed, user.totp_last_step = secret, False, 0
    _audit(ctx, actor, "totp enrolment started", username)
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=TOTP_ISSUER)


def confirm_totp(ctx: Context, username: str, code: str, actor: Actor = CLI_ACTOR) -> bool:
    from telerad.security.auth import check_totp

    with ctx.db.session(write=True) as s:
        user = s.execute(select(User).where(User.username == username)).scalar_one_or_none()
        if user is None or not user.totp_secret:
            raise UserError("no TOTP enrolment in progress")
        if not check_totp(user, code):
            return False
        user.totp_confirmed = True
    _audit(ctx, actor, "totp enrolled", username)
    return True


def reset_totp(ctx: Context, username: str, actor: Actor = CLI_ACTOR) -> None:
    with ctx.db.session(write=True) as s:
        user = s.execute(select(User).where(User.username == username)).scalar_one_or_none()
        if user is None:
            raise UserError(f"no user {username}")
        user.totp_secret, user.totp_confirmed, user.totp_last_step = None, False, 0
    _audit(ctx, actor, "totp reset", username)
