"""``telerad user|token|audit`` as an operator runs them (real subprocesses on a real data directory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from fastapi.testclient import TestClient
from sqlalchemy import update

from telerad.app import create_app
from telerad.context import Context
from telerad.db.models import AuditEvent

TELERAD = [sys.executable, "-m", "telerad.cli"]
PASSWORD = "a long enough passphrase"


def run(settings, *args: str, stdin: str = "", check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TELERAD_HOME": str(settings.home), "TELERAD_DATABASE_URL": settings.database_url}
    p = subprocess.run([*TELERAD, *args], env=env, input=stdin, capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"telerad {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def test_first_set_up_users_and_tokens(settings):
    run(settings, "site", "add", "--code", "GH", "--name", "General Hospital")
    out = run(settings, "user", "add", "--username", "ris", "--role", "site_staff", "--site", "GH",
              "--password-stdin", stdin=PASSWORD + "\n").stdout
    assert "user ris added: roles site_staff; sites GH" in out
    short = run(settings, "user", "add", "--username", "x", "--role", "admin", "--password-stdin", stdin="short\n",
                check=False)
    assert short.returncode != 0 and "too short" in short.stderr
    bad_role = run(settings, "user", "add", "--username", "y", "--role", "wizard", "--no-password", check=False)
    assert bad_role.returncode != 0 and "unknown role 'wizard'" in bad_role.stderr
    run(settings, "user", "add", "--username", "svc", "--role", "site_staff", "--site", "GH", "--no-password")
    listing = run(settings, "user", "list").stdout
    assert "ris\tsite_staff\tGH\tactive\tno-mfa" in listing

    created = run(settings, "token", "create", "--user", "svc", "--site", "GH", "--name", "modality worklist")
    token = created.stdout.strip()
    assert token.startswith("trd_") and "\n" not in token, "stdout carries the token only"
    assert "expires" in created.stderr
    token_id = token.split("_")[1]
    assert f"{token_id}\tsvc\tGH\tsite_staff" in run(settings, "token", "list").stdout

    ctx = Context.open(settings)
    try:
        client = TestClient(create_app(ctx))
        auth = {"Authorization": f"Bearer {token}"}
        assert client.get("/dicom-web/studies", headers=auth).status_code == 200
        run(settings, "token", "revoke", token_id)
        assert client.get("/dicom-web/studies", headers=auth).status_code == 401
        assert "revoked" in run(settings, "token", "list", "--user", "svc").stdout
        # A disabled user can no longer sign in.
        run(settings, "user", "disable", "ris")
        r = client.post("/api/auth/login", json={"username": "ris", "password": PASSWORD})
        assert r.status_code == 401
        run(settings, "user", "enable", "ris")
        assert client.post("/api/auth/login", json={"username": "ris", "password": PASSWORD}).status_code == 200
    finally:
        ctx.close()


def test_audit_verify_and_search(settings):
    run(settings, "site", "add", "--code", "GH", "--name", "General Hospital")
    run(settings, "user", "add", "--username", "ris", "--role", "site_staff", "--site", "GH", "--no-password")
    ok = run(settings, "audit", "verify")
    assert "chain intact" in ok.stdout
    found = run(settings, "audit", "search", "--action", "user.change")
    rows = [json.loads(line) for line in found.stdout.splitlines()]
    assert rows and rows[0]["details"]["user"] == "ris" and rows[0]["actor"] == "cli"
    ctx = Context.open(settings)
    try:
        with ctx.db.engine.begin() as conn:  # as someone with DDL rights: past the append-only trigger
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("DROP TRIGGER audit_events_no_update")
            else:
                conn.exec_driver_sql("DROP TRIGGER audit_events_append_only ON audit_events")
        with ctx.db.session(write=True) as s:
            s.execute(update(AuditEvent).where(AuditEvent.seq == 1).values(site_code="XX"))
    finally:
        ctx.close()
    broken = run(settings, "audit", "verify", check=False)
    assert broken.returncode == 1 and "record 1" in broken.stdout and "CHAIN BROKEN" in broken.stdout
