"""Sign-in, second factor, throttling and lockout, sessions (idle and absolute expiry, CSRF), sign-out."""

from __future__ import annotations

from datetime import timedelta

import pyotp
from auth_support import PASSWORD, add_user, enrol_totp, login
from sqlalchemy import select, update

from telerad.db.models import User, UserSession
from telerad.security import audit, users
from telerad.security.auth import utcnow


def _login(c, username, password=PASSWORD, totp=None):
    return c.post("/api/auth/login", json={"username": username, "password": password, "totp": totp})


def test_login_sets_a_hardened_session_cookie_and_returns_the_csrf_token(ctx, new_client):
    add_user(ctx, "tech", ["site_staff"], ["GH"])
    c = new_client()
    r = _login(c, "tech")
    assert r.status_code == 200
    body = r.json()
    assert body["user"] == "tech" and body["sites"] == ["GH"] and body["csrf_token"]
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert c.get("/api/auth/me").json()["permissions"] == ["archive.read", "archive.store"]
    # Security headers on every answer.
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"


def test_https_cookie_is_secure_and_host_prefixed(ctx, new_client):
    ctx.settings.public_base_url = "https://telerad.example.org"
    add_user(ctx, "tech", ["site_staff"], ["GH"])
    r = _login(new_client(), "tech")
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("__Host-telerad_session=") and "secure" in cookie.lower()
    assert r.headers["strict-transport-security"].startswith("max-age=")


def test_wrong_password_and_unknown_user_get_the_same_answer(ctx, new_client):
    add_user(ctx, "tech", ["site_staff"], ["GH"])
    c = new_client()
    wrong = _login(c, "tech", "not the password")
    unknown = _login(c, "nobody", "not the password")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert "set-cookie" not in wrong.headers


def test_repeated_failures_lock_the_account_then_unlock(ctx, new_client):
    add_user(ctx, "tech", ["site_staff"], ["GH"])
    c = new_client()
    for _ in range(ctx.settings.login_max_failures):
        assert _login(c, "tech", "guess").status_code == 401
    locked = _login(c, "tech")  # even the right password is refused while locked
    assert locked.status_code == 429 and "try again later" in locked.json()["detail"]
    # Unknown usernames are throttled the same way (no hint which accounts exist).
    for _ in range(ctx.settings.login_max_failures):
        _login(c, "ghost", "guess")
    assert _login(c, "ghost", "guess").status_code == 429
    ctx.audit.flush()
    assert audit.search(ctx.db, actor="tech", action="login")[1][0]["outcome"] == 8
    # The lockout ends after login_lockout_minutes; an admin can lift it at once.
    users.update_user(ctx, "tech", unlock=True)
    with ctx.db.session(write=True) as s:  # the failures are older than the window now
        from telerad.db.models import LoginAttempt

        s.execute(update(LoginAttempt).values(at=utcnow() - timedelta(minutes=60)))
    assert _login(c, "tech").status_code == 200


def test_failures_from_one_address_are_throttled_across_usernames(ctx, new_client):
    ctx.settings.login_max_failures_per_source = 3
    for name in ("a1", "a2", "a3", "a4"):
        add_user(ctx, name, ["site_staff"], ["GH"])
    c = new_client()
    for name in ("a1", "a2", "a3"):
        assert _login(c, name, "guess").status_code == 401
    assert _login(c, "a4").status_code == 429


def test_totp_second_factor(ctx, new_client):
    add_user(ctx, "rad", ["radiologist"], ["GH"])
    totp = enrol_totp(ctx, "rad")
    c = new_client()
    need = _login(c, "rad")
    assert need.status_code == 401 and "second factor" in need.json()["detail"]
    assert _login(c, "rad", totp="000000" if totp.now() != "000000" else "111111").status_code == 401
    code = totp.now()
    assert _login(c, "rad", totp=code).status_code == 200
    # The same code cannot be replayed (RFC 6238 5.2).
    assert _login(new_client(), "rad", totp=code).status_code == 401


def test_roles_that_require_mfa_must_enrol_before_anything_else(ctx, new_client):
    add_user(ctx, "rad", ["radiologist"], ["GH"])
    c = new_client()
    body = login(c, "rad")
    assert body["mfa_enrolment_required"] is True and body["permissions"] == []
    assert c.get("/dicom-web/studies").status_code == 403
    uri = c.post("/api/auth/totp/setup").json()["otpauth_uri"]
    totp = pyotp.parse_uri(uri)
    assert uri.startswith("otpauth://totp/telerad:rad?")
    assert c.post("/api/auth/totp/confirm", json={"code": "12345"}).status_code == 400
    assert c.post("/api/auth/totp/confirm", json={"code": totp.now()}).status_code == 200
    assert c.get("/dicom-web/studies").status_code == 200
    # From now on the code is required at sign-in.
    assert _login(new_client(), "rad").status_code == 401


def test_session_idle_timeout_and_absolute_lifetime(ctx, new_client):
    add_user(ctx, "tech", ["site_staff"], ["GH"])
    c = new_client()
    login(c, "tech")
    assert c.get("/api/auth/me").status_code == 200
    with ctx.db.session(write=True) as s:
        s.execute(update(UserSession).values(last_seen_at=utcnow() - timedelta(
            minutes=ctx.settings.session_idle_minutes + 1)))
    r = c.get("/api/auth/me")
    assert r.status_code == 401 and "inactivity" in r.json()["detail"]
    login(c, "tech")
    with ctx.db.session(write=True) as s:
        s.execute(update(UserSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert c.get("/api/auth/me").status_code == 401


def test_cookie_writes_need_the_csrf_token(ctx, new_client):
    add_user(ctx, "boss", ["admin"], [])
    ctx.settings.mfa_required_roles = []
    c = new_client()
    login(c, "boss")
    token = c.headers.pop("X-CSRF-Token")
    body = {"username": "new1", "roles": ["site_staff"], "sites": ["GH"], "password": PASSWORD}
    forged = c.post("/api/users", json=body)
    assert forged.status_code == 403 and "X-CSRF-Token" in forged.json()["detail"]
    assert c.post("/api/users", json=body, headers={"X-CSRF-Token": "wrong"}).status_code == 403
    assert c.post("/api/users", json=body, headers={"X-CSRF-Token": token}).status_code == 201


def test_logout_ends_the_session(ctx, new_client):
    add_user(ctx, "tech", ["site_staff"], ["GH"])
    c = new_client()
    login(c, "tech")
    cookie = dict(c.cookies)
    assert c.post("/api/auth/logout").status_code == 200
    assert c.get("/api/auth/me").status_code == 401
    # The old cookie, replayed, is dead too.
    replay = new_client()
    replay.cookies.update(cookie)
    assert replay.get("/api/auth/me").status_code == 401
    ctx.audit.flush()
    assert audit.search(ctx.db, actor="tech", action="logout")[0] == 1


def test_disabling_a_user_ends_their_sessions(ctx, new_client):
    add_user(ctx, "tech", ["site_staff"], ["GH"])
    c = new_client()
    login(c, "tech")
    users.update_user(ctx, "tech", disabled=True)
    assert c.get("/api/auth/me").status_code == 401
    assert _login(new_client(), "tech").status_code == 401


def test_password_hash_is_argon2id(ctx, site):
    add_user(ctx, "tech", ["site_staff"], ["GH"])
    with ctx.db.session() as s:
        stored = s.execute(select(User.password_hash).where(User.username == "tech")).scalar_one()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


def test_password_policy(ctx, site):
    import pytest

    from telerad.security.passwords import PasswordPolicyError

    with pytest.raises(PasswordPolicyError, match="too short"):
        add_user(ctx, "tech", ["site_staff"], ["GH"], password="short")
    with pytest.raises(PasswordPolicyError, match="username"):
        add_user(ctx, "longusername1", ["site_staff"], ["GH"], password="LongUsername1")


def test_login_rejects_malformed_bodies(ctx, new_client):
    c = new_client()
    assert c.post("/api/auth/login", content=b"{not json", headers={"content-type": "application/json"}
                  ).status_code == 400
    assert c.post("/api/auth/login", data={"username": "a", "password": "b"}).status_code == 400
    assert c.post("/api/auth/login", json={"username": "a" * 100, "password": "b"}).status_code == 400
    big = c.post("/api/auth/login", content=b"x" * (2 * 1024 * 1024), headers={"content-type": "application/json"})
    assert big.status_code == 413
