"""Single sign-on with OpenID Connect against a real identity provider over HTTP.

The provider is a small OIDC server started by the test on 127.0.0.1 (discovery, JWKS, authorization endpoint
with PKCE, token endpoint issuing RS256-signed ID tokens); telerad talks to it exactly as to a hospital's IdP.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import httpx2
import pytest
from auth_support import add_user, enrol_totp
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from support import free_port, uvicorn_thread

from telerad.app import create_app
from telerad.config import OidcProvider
from telerad.security import audit
from telerad.security import oidc as oidc_service

CLIENT_ID, CLIENT_SECRET = "telerad", "s3cret-of-the-client"


class Provider:
    """A minimal OpenID Provider (OIDC Core 3.1, Discovery 4, RFC 7636)."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        self.key = RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig", "alg": "RS256"})
        self.signing_key = self.key
        self.person: dict[str, Any] = {"sub": "u-123", "preferred_username": "dr.sso"}
        self.codes: dict[str, dict[str, Any]] = {}
        self.tamper: dict[str, Any] = {}
        self.app = Starlette(routes=[
            Route("/.well-known/openid-configuration", self.discovery),
            Route("/jwks", self.jwks), Route("/authorize", self.authorize), Route("/token", self.token,
                                                                                 methods=["POST"])])

    async def discovery(self, _r: Request) -> Response:
        return JSONResponse({"issuer": self.issuer, "authorization_endpoint": f"{self.issuer}/authorize",
                             "token_endpoint": f"{self.issuer}/token", "jwks_uri": f"{self.issuer}/jwks",
                             "response_types_supported": ["code"], "subject_types_supported": ["public"],
                             "id_token_signing_alg_values_supported": ["RS256"]})

    async def jwks(self, _r: Request) -> Response:
        return JSONResponse(KeySet([self.key]).as_dict(private=False))

    async def authorize(self, r: Request) -> Response:
        q = r.query_params
        assert q["client_id"] == CLIENT_ID and q["response_type"] == "code"
        assert q["code_challenge_method"] == "S256" and q["nonce"] and "openid" in q["scope"].split()
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"challenge": q["code_challenge"], "nonce": q["nonce"], "redirect": q["redirect_uri"],
                            "person": dict(self.person)}
        return RedirectResponse(f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}", 302)

    async def token(self, r: Request) -> Response:
        form = await r.form()
        grant = self.codes.pop(str(form.get("code")), None)
        if grant is None or form.get("client_secret") != CLIENT_SECRET or form.get("redirect_uri") != grant["redirect"]:
            return JSONResponse({"error": "invalid_grant"}, 400)
        verifier = str(form.get("code_verifier"))
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if challenge != grant["challenge"]:
            return JSONResponse({"error": "invalid_grant", "error_description": "PKCE"}, 400)
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": CLIENT_ID, "iat": now, "exp": now + 300, "nonce": grant["nonce"],
                  **grant["person"], **self.tamper}
        id_token = jwt.encode({"alg": "RS256", "kid": "k1"}, claims, self.signing_key)
        return JSONResponse({"access_token": "at", "token_type": "Bearer", "id_token": id_token})


@pytest.fixture
def idp() -> Iterator[Provider]:
    port = free_port()
    provider = Provider(f"http://127.0.0.1:{port}")
    with uvicorn_thread(provider.app, port):
        oidc_service._discovery.clear()
        yield provider


@pytest.fixture
def client(ctx, site, other_site, idp) -> Iterator[TestClient]:
    ctx.settings.oidc_providers = {"gh": OidcProvider(issuer=idp.issuer, client_id=CLIENT_ID,
                                                      client_secret=CLIENT_SECRET, sites=["GH"])}
    with TestClient(create_app(ctx), raise_server_exceptions=False) as c:
        yield c


def sign_in(client: TestClient, provider: str = "gh") -> Any:
    start = client.get(f"/api/auth/oidc/{provider}/login", follow_redirects=False)
    assert start.status_code == 302, start.text
    at_idp = httpx2.get(start.headers["location"], follow_redirects=False)
    assert at_idp.status_code == 302
    back = urlparse(at_idp.headers["location"])
    return client.get(f"{back.path}?{back.query}")


def test_sign_in_links_the_user_by_username_then_by_subject(ctx, client, idp):
    add_user(ctx, "dr.sso", ["site_staff"], ["GH"], password=None)
    r = sign_in(client)
    assert r.status_code == 200, r.text
    assert r.json()["user"] == "dr.sso" and r.json()["sites"] == ["GH"]
    assert client.get("/dicom-web/studies").status_code == 200
    # Later sign-ins follow the subject, whatever the username claim says.
    idp.person["preferred_username"] = "renamed"
    client.cookies.clear()
    assert sign_in(client).json()["user"] == "dr.sso"
    ctx.audit.flush()
    logins = audit.search(ctx.db, action="login", actor="dr.sso")[1]
    assert logins[0]["details"]["method"] == "oidc:gh" and logins[0]["details"]["sub"] == "u-123"


def test_authorization_request_uses_pkce_and_nonce(client, idp, ctx):
    add_user(ctx, "dr.sso", ["site_staff"], ["GH"], password=None)
    start = client.get("/api/auth/oidc/gh/login", follow_redirects=False)
    q = parse_qs(urlparse(start.headers["location"]).query)
    assert q["code_challenge_method"] == ["S256"] and len(q["state"][0]) >= 32 and q["nonce"]
    assert q["redirect_uri"] == ["http://testserver/api/auth/oidc/gh/callback"]


def test_unknown_people_and_other_sites_users_are_refused(ctx, client, idp):
    r = sign_in(client)
    assert r.status_code == 401 and "no telerad user" in r.json()["detail"]
    # A radiologist of the service who also reads for RC cannot sign in through GH's IdP.
    add_user(ctx, "dr.sso", ["site_staff"], ["GH", "RC"], password=None)
    r = sign_in(client)
    assert r.status_code == 401 and "serves only GH" in r.json()["detail"]
    ctx.audit.flush()
    assert audit.search(ctx.db, action="login")[1][0]["outcome"] == 4


@pytest.mark.parametrize("tamper, reason", [
    ({"iss": "http://evil.example"}, "iss"), ({"aud": "another-client"}, "aud"), ({"nonce": "replayed"}, "nonce"),
    ({"exp": 1000}, "exp"),
])
def test_id_tokens_that_do_not_check_out_are_refused(ctx, client, idp, tamper, reason):
    add_user(ctx, "dr.sso", ["site_staff"], ["GH"], password=None)
    idp.tamper = tamper
    r = sign_in(client)
    assert r.status_code == 401 and "ID token refused" in r.json()["detail"], r.text
    assert reason in r.json()["detail"]


def test_id_token_signed_with_a_foreign_key_is_refused(ctx, client, idp):
    add_user(ctx, "dr.sso", ["site_staff"], ["GH"], password=None)
    idp.signing_key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    r = sign_in(client)
    assert r.status_code == 401 and "ID token refused" in r.json()["detail"]


def test_state_is_single_use_and_required(ctx, client, idp):
    add_user(ctx, "dr.sso", ["site_staff"], ["GH"], password=None)
    start = client.get("/api/auth/oidc/gh/login", follow_redirects=False)
    back = urlparse(httpx2.get(start.headers["location"], follow_redirects=False).headers["location"])
    forged = client.get(f"{back.path}?code=x&state=not-ours")
    assert forged.status_code == 401 and "start again" in forged.json()["detail"]
    assert client.get(f"{back.path}?{back.query}").status_code == 200
    assert client.get(f"{back.path}?{back.query}").status_code == 401  # replayed callback
    assert client.get(f"{back.path}?error=access_denied").status_code == 401
    assert client.get("/api/auth/oidc/nope/login").status_code == 404


def test_roles_needing_mfa_confirm_totp_unless_the_idp_vouches(ctx, client, idp):
    add_user(ctx, "dr.sso", ["radiologist"], ["GH"], password=None)
    totp = enrol_totp(ctx, "dr.sso")
    body = sign_in(client).json()
    assert body["mfa_enrolment_required"] is True
    csrf = {"X-CSRF-Token": body["csrf_token"]}
    assert client.get("/dicom-web/studies").status_code == 403
    # The pending session may not replace the enrolled factor...
    assert client.post("/api/auth/totp/setup", headers=csrf).status_code == 403
    wrong = f"{(int(totp.now()) + 500000) % 1000000:06d}"
    assert client.post("/api/auth/totp/verify", json={"code": wrong}, headers=csrf).status_code == 400
    assert client.post("/api/auth/totp/verify", json={"code": totp.now()}, headers=csrf).status_code == 200
    assert client.get("/dicom-web/studies").status_code == 200
    # A provider trusted for MFA, asserting a second factor in amr, is enough by itself.
    ctx.settings.oidc_providers["gh"].trust_mfa = True
    idp.person["amr"] = ["pwd", "otp"]
    client.cookies.clear()
    assert sign_in(client).json()["mfa_enrolment_required"] is False
