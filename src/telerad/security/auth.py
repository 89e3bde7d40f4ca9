"""Sign-in (password + TOTP), login throttling and lockout, browser sessions, break-glass access, and the
Principal of a signed-in user.

Sessions: the cookie carries 32 random bytes; the database keeps only their SHA-256. A session ends after
``session_idle_minutes`` without use or ``session_max_hours`` after sign-in, at sign-out, when the account is
disabled or its password changes. Each session has a CSRF token that browser writes must echo in the
``X-CSRF-Token`` header (OWASP synchroniser token pattern).

Throttling (NIST SP 800-63B 5.2.2): more than ``login_max_failures`` failed attempts for one username, or
``login_max_failures_per_source`` from one address, within ``login_window_minutes`` lock further attempts for
``login_lockout_minutes``; the answer is the same for existing and unknown usernames.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyotp
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from telerad.context import Context
from telerad.db.models import BreakGlass, LoginAttempt, Membership, Site, User, UserSession
from telerad.domain.access import Permission, Role, parse_roles
from telerad.security.audit import MINOR_FAILURE, SERIOUS_FAILURE, Action, Event
from telerad.security.passwords import hash_password, needs_rehash, verify_password
from telerad.security.scope import AccessError, Forbidden, InvalidRequest, NotFound, Principal, Unauthenticated


class LoginFailed(AccessError):
    status = 401


class Throttled(AccessError):
    status = 429


def utcnow() -> datetime:
    """Naive UTC, as the DateTime columns store it."""
    return datetime.now(UTC).replace(tzinfo=None)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def check_totp(user: User, code: str) -> bool:
    """RFC 6238 with one step of clock drift either way; a code (time step) is accepted once only (5.2)."""
    code = (code or "").strip().replace(" ", "")
    if not user.totp_secret or not code.isdigit() or len(code) != 6:
        return False
    totp = pyotp.TOTP(user.totp_secret)
    now_step = int(time.time()) // totp.interval
    for step in (now_step - 1, now_step, now_step + 1):
        if step > (user.totp_last_step or 0) and hmac.compare_digest(totp.generate_otp(step), code):
            user.totp_last_step = step
            return True
    return False


@dataclass(frozen=True)
class NewSession:
    cookie: str  # the secret the browser keeps
    csrf_token: str
    principal: Principal
    mfa_enrolment_required: bool


def _throttled(ctx: Context, s, username: str, source: str, now: datetime) -> bool:  # type: ignore[no-untyped-def]
    st = ctx.settings
    since = now - timedelta(minutes=st.login_window_minutes)
    by_user = s.execute(select(func.count()).select_from(LoginAttempt).where(
        LoginAttempt.username == username, LoginAttempt.at >= since, LoginAttempt.ok.is_(False))).scalar_one()
    by_source = s.execute(select(func.count()).select_from(LoginAttempt).where(
        LoginAttempt.source == source, LoginAttempt.at >= since, LoginAttempt.ok.is_(False))).scalar_one()
    return bool(by_user >= st.login_max_failures or by_source >= st.login_max_failures_per_source)


def login(ctx: Context, username: str, password: str, totp_code: str | None, source: str,
          user_agent: str = "") -> NewSession:
    """Check the credentials and open a session; :class:`LoginFailed` / :class:`Throttled` otherwise."""
    st = ctx.settings
    username = (username or "").strip()[:64]
    now = utcnow()
    failure: tuple[str, int] | None = None
    with ctx.db.session(write=True) as s:
        user = s.execute(select(User).where(User.username == username)).scalar_one_or_none()
        locked = user is not None and user.locked_until is not None and user.locked_until > now
        if locked or _throttled(ctx, s, username, source, now):
            failure = ("throttled", SERIOUS_FAILURE)
        elif not verify_password(user.password_hash if user else None, password or "") or user is None:
            failure = ("bad password", MINOR_FAILURE)
        elif user.disabled:
            failure = ("account disabled", MINOR_FAILURE)
        elif user.totp_confirmed and not totp_code:
            failure = ("second factor required", MINOR_FAILURE)
        elif user.totp_confirmed and not check_totp(user, totp_code or ""):
            failure = ("bad second factor", MINOR_FAILURE)
        s.add(LoginAttempt(username=username, source=source[:64], at=now, ok=failure is None))
        if failure is not None:
            if user is not None and failure[0] in ("bad password", "bad second factor"):
                user.failed_logins += 1
                if user.failed_logins >= st.login_max_failures:
                    user.locked_until = now + timedelta(minutes=st.login_lockout_minutes)
                    failure = ("bad credentials; account locked", SERIOUS_FAILURE)
        else:
            assert user is not None
            user.failed_logins, user.locked_until = 0, None
            if user.password_hash and needs_rehash(user.password_hash):
                user.password_hash = hash_password(password)
            roles = parse_roles([user.roles])
            needs_mfa = bool(roles & parse_roles(st.mfa_required_roles))
            mfa_ok = user.totp_confirmed or not needs_mfa
            cookie, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
            row = UserSession(id_hash=sha256_hex(cookie), user_id=user.id, csrf_token=csrf, mfa_ok=mfa_ok,
                              source=source[:64], created_at=now, last_seen_at=now,
                              expires_at=now + timedelta(hours=st.session_max_hours))
            s.add(row)
            s.flush()
            session_id, user_id = row.id, user.id
            mfa = "totp" if user.totp_confirmed else ("enrolment required" if not mfa_ok else "none")
    if failure is not None:
        reason, outcome = failure
        ctx.audit.record(Event(Action.LOGIN, outcome=outcome, actor_type="user", actor=username, source=source,
                               details={"reason": reason, "user_agent": user_agent[:200]}), wait=True)
        if reason == "throttled":
            raise Throttled("too many failed sign-in attempts: try again later")
        if reason == "second factor required":
            raise LoginFailed("second factor required: send the 6-digit code from your authenticator app")
        raise LoginFailed("invalid username, password or code")
    principal = principal_for_user(ctx, user_id, session_id=session_id, mfa_pending=not mfa_ok, source=source)
    ctx.audit.record(Event(Action.LOGIN, actor_type="user", actor=username, source=source,
                           details={"session": session_id, "mfa": mfa, "user_agent": user_agent[:200]}),
                     wait=True)
    return NewSession(cookie, csrf, principal, not mfa_ok)


def principal_for_user(ctx: Context, user_id: int, *, session_id: int | None = None, token_id: int | None = None,
                       mfa_pending: bool = False, source: str = "", only_site: int | None = None,
                       only_roles: frozenset[Role] | None = None, extra: dict[str, str] | None = None) -> Principal:
    with ctx.db.session() as s:
        return build_principal(s, user_id, session_id=session_id, token_id=token_id, mfa_pending=mfa_pending,
                               source=source, only_site=only_site, only_roles=only_roles, extra=extra)


def build_principal(s: Session, user_id: int, *, session_id: int | None = None, token_id: int | None = None,
                    mfa_pending: bool = False, source: str = "", only_site: int | None = None,
                    only_roles: frozenset[Role] | None = None, extra: dict[str, str] | None = None) -> Principal:
    """The principal of ``user_id`` read in the caller's session (one round trip per table, no more)."""
    row = s.execute(select(User.username, User.roles, User.disabled).where(User.id == user_id)).first()
    if row is None or row.disabled:
        raise Unauthenticated("account disabled")
    sites = frozenset(s.execute(select(Membership.site_id).where(Membership.user_id == user_id)).scalars())
    glass: frozenset[int] = frozenset()
    if session_id is not None:
        glass = frozenset(s.execute(select(BreakGlass.site_id).where(
            BreakGlass.user_id == user_id, BreakGlass.expires_at > utcnow())).scalars())
    roles = parse_roles([row.roles])
    if only_roles is not None:
        roles &= only_roles
    if only_site is not None:
        sites &= {only_site}
    kind = "token" if token_id is not None else "user"
    return Principal(kind, row.username, user_id, roles, sites, glass, session_id, token_id, mfa_pending, source,
                     extra or {})


def session_principal(ctx: Context, cookie: str, source: str) -> tuple[Principal, str]:
    """The principal and CSRF token of a live session; :class:`Unauthenticated` when it has ended."""
    st = ctx.settings
    now = utcnow()
    with ctx.db.session() as s:
        row = s.execute(select(UserSession).where(UserSession.id_hash == sha256_hex(cookie))).scalar_one_or_none()
        live = row is not None and row.ended_at is None and row.expires_at > now
        idle = live and row is not None and row.last_seen_at + timedelta(minutes=st.session_idle_minutes) <= now
        principal = None
        if live and not idle and row is not None:
            principal = build_principal(s, row.user_id, session_id=row.id, mfa_pending=not row.mfa_ok, source=source)
    if row is None or not live:
        raise Unauthenticated("session expired: sign in again")
    if idle:
        end_session(ctx, cookie, reason="idle timeout")
        raise Unauthenticated("session expired after inactivity: sign in again")
    if now - row.last_seen_at > timedelta(seconds=30):  # one write per half minute, not per request
        with ctx.db.session(write=True) as s:
            s.execute(update(UserSession).where(UserSession.id == row.id).values(last_seen_at=now))
    assert principal is not None
    return principal, row.csrf_token


def end_session(ctx: Context, cookie: str, reason: str = "logout", source: str = "") -> None:
    with ctx.db.session(write=True) as s:
        row = s.execute(select(UserSession).where(UserSession.id_hash == sha256_hex(cookie))).scalar_one_or_none()
        if row is None or row.ended_at is not None:
            return
        row.ended_at = utcnow()
        username = s.execute(select(User.username).where(User.id == row.user_id)).scalar_one()
    ctx.audit.record(Event(Action.LOGOUT, actor_type="user", actor=username, source=source,
                           details={"session": row.id, "reason": reason}))


def end_sessions(ctx: Context, user_id: int) -> None:
    with ctx.db.session(write=True) as s:
        s.execute(update(UserSession).where(UserSession.user_id == user_id, UserSession.ended_at.is_(None))
                  .values(ended_at=utcnow()))


def mark_mfa_done(ctx: Context, session_id: int) -> None:
    with ctx.db.session(write=True) as s:
        s.execute(update(UserSession).where(UserSession.id == session_id).values(mfa_ok=True))


def verify_session_totp(ctx: Context, principal: Principal, code: str) -> bool:
    """A session opened without a second factor (single sign-on) confirms the user's enrolled TOTP."""
    with ctx.db.session(write=True) as s:
        user = s.get(User, principal.user_id)
        if user is None or not user.totp_confirmed or principal.session_id is None:
            raise Forbidden("no second factor enrolled: set one up at /api/auth/totp/setup")
        ok = check_totp(user, code)
        if ok:
            s.execute(update(UserSession).where(UserSession.id == principal.session_id).values(mfa_ok=True))
    ctx.audit.record(Event(Action.LOGIN, outcome=0 if ok else MINOR_FAILURE, actor_type="user",
                           actor=principal.name, source=principal.source,
                           details={"method": "totp step-up", "session": principal.session_id}), wait=True)
    return ok


def break_glass(ctx: Context, principal: Principal, site_code: str, reason: str) -> datetime:
    """Emergency access of an admin to one site's images for ``break_glass_minutes``; audited as a security
    alert (PS3.15 A.5.3.14, EventTypeCode DCM 110127 "Emergency Override Started")."""
    if principal.session_id is None or principal.user_id is None:
        raise Forbidden("break-glass needs an interactive session, not a token")
    if not principal.has(Permission.BREAK_GLASS):
        raise Forbidden("break-glass is for admins")
    reason = (reason or "").strip()
    if len(reason) < 10:
        raise InvalidRequest("state the reason for emergency access (at least 10 characters)")
    with ctx.db.session(write=True) as s:
        site_id = s.execute(select(Site.id).where(Site.code == site_code)).scalar_one_or_none()
        if site_id is None:
            raise NotFound(f"unknown site {site_code[:32]!r}")
        until = utcnow() + timedelta(minutes=ctx.settings.break_glass_minutes)
        s.add(BreakGlass(user_id=principal.user_id, site_id=site_id, reason=reason[:2000], started_at=utcnow(),
                         expires_at=until))
    ctx.audit.record(Event(Action.BREAK_GLASS, actor_type="user",
                           actor=principal.name, source=principal.source, site_id=site_id, site_code=site_code,
                           details={"reason": reason[:2000], "until": until.isoformat() + "Z"}), wait=True)
    return until
