"""Helpers for tests that call the HTTP API as someone (importable as ``auth_support``)."""

from __future__ import annotations

from typing import Any

import pyotp
from fastapi.testclient import TestClient
from sqlalchemy import select

from telerad.context import Context
from telerad.db.models import User
from telerad.security import tokens, users

PASSWORD = "correct horse battery staple"


def add_user(ctx: Context, username: str, roles: list[str], sites: list[str], **kwargs: Any) -> users.UserInfo:
    return users.add_user(ctx, username, roles, sites, password=kwargs.pop("password", PASSWORD), **kwargs)


def enrol_totp(ctx: Context, username: str) -> pyotp.TOTP:
    """Enrol a second factor directly (as an admin would with a user at their desk); returns the generator."""
    uri = users.begin_totp(ctx, username)
    totp = pyotp.parse_uri(uri)
    assert isinstance(totp, pyotp.TOTP)
    with ctx.db.session(write=True) as s:
        s.execute(select(User).where(User.username == username)).scalar_one().totp_confirmed = True
    return totp


def login(client: TestClient, username: str, password: str = PASSWORD, totp: str | None = None) -> dict[str, Any]:
    """Sign in; the client keeps the session cookie and sends the CSRF token on every request."""
    r = client.post("/api/auth/login", json={"username": username, "password": password, "totp": totp})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    client.headers["X-CSRF-Token"] = body["csrf_token"]
    return body


def bearer(ctx: Context, username: str, site: str, roles: list[str] | None = None) -> dict[str, str]:
    token, _ = tokens.create_token(ctx, username, site, roles)
    return {"Authorization": f"Bearer {token}"}
