"""Administration through the API: users, roles, memberships and tokens; every change audited; tokens shown
once, stored hashed, bound to a site and roles, expiring and revocable; break-glass."""

from __future__ import annotations

from datetime import timedelta

from auth_support import PASSWORD, add_user, login
from dicomweb_support import put
from sqlalchemy import select, update

from telerad.archive.demo import ct_series
from telerad.db.models import ApiToken
from telerad.security import audit
from telerad.security.auth import utcnow


def _admin(ctx, new_client):
    ctx.settings.mfa_required_roles = []
    add_user(ctx, "boss", ["admin"], [])
    c = new_client()
    login(c, "boss")
    return c


def test_admin_manages_users_and_every_change_is_audited(ctx, new_client):
    c = _admin(ctx, new_client)
    r = c.post("/api/users", json={"username": "dr.who", "roles": ["radiologist"], "sites": ["GH"],
                                   "password": PASSWORD, "full_name": "Dr Who"})
    assert r.status_code == 201 and r.json()["sites"] == ["GH"]
    assert c.post("/api/users", json={"username": "dr.who", "roles": ["radiologist"]}).status_code == 400
    assert c.post("/api/users", json={"username": "x", "roles": ["wizard"]}).status_code == 400
    assert c.post("/api/users", json={"username": "y", "roles": ["site_staff"], "sites": ["NOPE"]}).status_code == 400
    r = c.patch("/api/users/dr.who", json={"roles": ["radiologist", "qa_reviewer"], "sites": ["GH", "RC"]})
    assert r.status_code == 200 and r.json()["roles"] == ["qa_reviewer", "radiologist"]
    assert c.patch("/api/users/nobody", json={"disabled": True}).status_code == 404
    listed = {u["username"]: u for u in c.get("/api/users").json()}
    assert listed["dr.who"]["sites"] == ["GH", "RC"] and "password" not in str(listed)
    ctx.audit.flush()
    _, rows = audit.search(ctx.db, action="user.change")
    changes = [(r["actor"], r["details"]["change"], r["details"]["user"]) for r in rows]
    assert ("boss", "created", "dr.who") in changes and ("boss", "updated", "dr.who") in changes
    updated = next(r for r in rows if r["details"]["change"] == "updated")
    assert updated["details"]["sites"] == ["GH", "RC"] and updated["source"] == "testclient"


def test_token_lifecycle(ctx, new_client, site):
    add_user(ctx, "ris", ["site_staff", "coordinator"], ["GH"])
    c = new_client()
    login(c, "ris")
    r = c.post("/api/tokens", json={"site": "GH", "roles": ["site_staff"], "name": "RIS", "days": 30})
    assert r.status_code == 201
    secret, token_id = r.json()["token"], r.json()["id"]
    assert secret.startswith(f"trd_{token_id}_")
    # Stored hashed: the secret is nowhere in the database, and never listed again.
    with ctx.db.session() as s:
        row = s.execute(select(ApiToken).where(ApiToken.public_id == token_id)).scalar_one()
    assert secret.split("_", 2)[2] not in (row.secret_hash, row.name) and len(row.secret_hash) == 64
    assert secret not in c.get("/api/tokens").text
    # Works as a bearer token, for its site and roles only.
    bearer = new_client()
    bearer.headers["Authorization"] = f"Bearer {secret}"
    me = bearer.get("/api/auth/me").json()
    assert me["kind"] == "token" and me["roles"] == ["site_staff"] and me["sites"] == ["GH"]
    put(ctx, site.id, ct_series(("Tok^En", "T1", "", "O"), "1.2.3.9", "A", 1, 16)[0])
    assert len(bearer.get("/dicom-web/studies").json()) == 1
    # Tokens cannot mint tokens, and roles the owner lacks cannot be granted.
    assert bearer.post("/api/tokens", json={"site": "GH"}).status_code == 403
    assert c.post("/api/tokens", json={"site": "GH", "roles": ["admin"]}).status_code == 400
    assert c.post("/api/tokens", json={"site": "RC"}).status_code == 400  # not a member of RC
    assert c.post("/api/tokens", json={"site": "GH", "days": 100000}).status_code == 400
    # Expiry and revocation take effect at once.
    with ctx.db.session(write=True) as s:
        s.execute(update(ApiToken).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert bearer.get("/api/auth/me").json()["detail"] == "token expired"
    with ctx.db.session(write=True) as s:
        s.execute(update(ApiToken).values(expires_at=utcnow() + timedelta(days=1)))
    assert bearer.get("/api/auth/me").status_code == 200
    assert c.delete(f"/api/tokens/{token_id}").status_code == 200
    assert bearer.get("/api/auth/me").json()["detail"] == "token revoked"
    # A tampered secret with a valid id is refused.
    bearer.headers["Authorization"] = f"Bearer {secret[:-2]}xx"
    assert bearer.get("/api/auth/me").status_code == 401
    ctx.audit.flush()
    changes = [r["details"]["change"] for r in audit.search(ctx.db, action="token.change")[1]]
    assert changes == ["revoked", "created"]
    # Requests made with the token are audited under its owner, naming the token.
    q = audit.search(ctx.db, action="query", actor="ris")[1][0]
    assert q["actor_type"] == "token" and q["details"]["token"] == token_id


def test_disabling_a_user_stops_their_tokens(ctx, new_client, site):
    add_user(ctx, "ris", ["site_staff"], ["GH"])
    from telerad.security import tokens, users

    secret, _ = tokens.create_token(ctx, "ris", "GH")
    c = new_client()
    c.headers["Authorization"] = f"Bearer {secret}"
    assert c.get("/api/auth/me").status_code == 200
    users.update_user(ctx, "ris", disabled=True)
    assert c.get("/api/auth/me").status_code == 401


def test_break_glass_grants_an_admin_one_site_for_a_while_and_raises_an_alert(ctx, new_client, site):
    put(ctx, site.id, ct_series(("Glass^Pat", "BG1", "", "O"), "1.2.3.10", "A", 1, 16)[0])
    c = _admin(ctx, new_client)
    assert c.get("/dicom-web/studies", headers={"X-Telerad-Site": "GH"}).status_code == 403
    short = c.post("/api/auth/break-glass", json={"site": "GH", "reason": "x"})
    assert short.status_code == 400  # a reason is required
    assert c.post("/api/auth/break-glass", json={"site": "NOPE", "reason": "stroke patient, PACS down"}
                  ).status_code == 404
    r = c.post("/api/auth/break-glass", json={"site": "GH", "reason": "stroke patient, PACS down"})
    assert r.status_code == 200 and r.json()["until"]
    studies = c.get("/dicom-web/studies", headers={"X-Telerad-Site": "GH"})
    assert studies.status_code == 200 and len(studies.json()) == 1
    assert c.get("/dicom-web/studies", headers={"X-Telerad-Site": "RC"}).status_code == 404  # only that site
    assert c.post("/dicom-web/studies", headers={"X-Telerad-Site": "GH"}).status_code == 403  # read only
    ctx.audit.flush()
    alert = audit.search(ctx.db, action="break_glass")[1][0]
    assert alert["actor"] == "boss" and alert["site"] == "GH" and "stroke" in alert["details"]["reason"]
    # It ends by itself.
    from telerad.db.models import BreakGlass

    with ctx.db.session(write=True) as s:
        s.execute(update(BreakGlass).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert c.get("/dicom-web/studies", headers={"X-Telerad-Site": "GH"}).status_code == 403


def test_audit_search_is_scoped_for_qa_and_itself_audited(ctx, new_client, site, other_site):
    from telerad.security.audit import Action, Event

    ctx.audit.record(Event(Action.RETRIEVE, actor="a", site_id=site.id, site_code="GH", patient_id="P1"))
    ctx.audit.record(Event(Action.RETRIEVE, actor="b", site_id=other_site.id, site_code="RC", patient_id="P2"))
    ctx.audit.flush()
    add_user(ctx, "qa", ["qa_reviewer"], ["RC"])
    qa = new_client()
    login(qa, "qa")
    mine = qa.get("/api/audit", params={"action": "retrieve"}).json()
    assert [r["patient_id"] for r in mine["records"]] == ["P2"]
    assert qa.get("/api/audit", params={"site": "GH"}).json()["total"] == 0
    admin = _admin(ctx, new_client)
    everything = admin.get("/api/audit", params={"action": "retrieve"}).json()
    assert {r["patient_id"] for r in everything["records"]} == {"P1", "P2"}
    assert admin.get("/api/audit", params={"patient_id": "P1"}).json()["total"] == 1
    assert admin.get("/api/audit", params={"limit": 5000}).status_code == 400
    v = admin.get("/api/audit/verify").json()
    assert v["ok"] is True and v["checked"] > 3
    ctx.audit.flush()
    used = audit.search(ctx.db, action="audit.access")[1]
    assert {r["actor"] for r in used} == {"qa", "boss"}


def test_bearer_tokens_on_dicomweb_are_checked_on_every_request(ctx, new_client, site):
    """DICOMweb checks a token on the event loop (adapters/http/auth.site_scope): the same refusals as the
    thread-pool path, and the last-used time is still kept."""
    from telerad.security import tokens, users

    add_user(ctx, "ris", ["site_staff"], ["GH"])
    put(ctx, site.id, ct_series(("Tok^En", "T1", "", "O"), "1.2.3.11", "A", 1, 16)[0])
    secret, info = tokens.create_token(ctx, "ris", "GH")
    c = new_client()

    def studies(authorization: str) -> tuple[int, str]:
        r = c.get("/dicom-web/studies", params={"PatientID": "T1"}, headers={"Authorization": authorization})
        return r.status_code, r.json()["detail"] if r.status_code != 200 else str(len(r.json()))

    def last_used():
        with ctx.db.session() as s:
            return s.execute(select(ApiToken.last_used_at).where(ApiToken.public_id == info.public_id)
                             ).scalar_one()

    assert last_used() is None
    assert studies(f"Bearer {secret}") == (200, "1")
    first = last_used()
    assert first is not None  # recorded on first use ...
    assert studies(f"Bearer {secret}") == (200, "1")
    assert last_used() == first  # ... then at most once a minute
    with ctx.db.session(write=True) as s:
        s.execute(update(ApiToken).values(last_used_at=first - timedelta(minutes=2)))
    assert studies(f"Bearer {secret}") == (200, "1")
    assert last_used() > first - timedelta(minutes=2)
    assert studies(f"Bearer {secret[:-2]}xx") == (401, "invalid token")
    assert studies("Basic cmlzOnB3") == (401, "unsupported Authorization scheme: use Bearer with an API token")
    assert c.get("/dicom-web/studies", headers={"Authorization": f"Bearer {secret}",
                                                "X-Telerad-Site": "RC"}).status_code == 404
    with ctx.db.session(write=True) as s:
        s.execute(update(ApiToken).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert studies(f"Bearer {secret}") == (401, "token expired")
    with ctx.db.session(write=True) as s:
        s.execute(update(ApiToken).values(expires_at=utcnow() + timedelta(days=1)))
    users.update_user(ctx, "ris", disabled=True)
    assert studies(f"Bearer {secret}") == (401, "account disabled")
    users.update_user(ctx, "ris", disabled=False)
    tokens.revoke_token(ctx, info.public_id)
    assert studies(f"Bearer {secret}") == (401, "token revoked")
