"""OpenID Connect sign-in for sites that bring their own identity provider (OIDC Core 1.0, authorization code
flow, with PKCE S256 per RFC 7636), through authlib's OAuth 2.0 client and joserfc's JWT validation.

The identity provider proves who the person is; telerad still decides what they may do. A person signs in as
an existing telerad user (created by an admin, with roles and sites): the one already linked to the IdP's
``sub``, or, at the first sign-in, the user whose username equals the provider's ``username_claim`` and who
is not yet linked to any subject. A provider limited to some ``sites`` can only sign in users whose every
membership is among them, so a hospital's IdP cannot sign in the service's radiologists of other sites.

The ID token must be signed by a key of the provider's JWKS (RS256/ES256/PS256), name the provider as
``iss``, telerad's client id in ``aud``, carry the nonce of this sign-in and not be expired (OIDC Core 3.1.3.7).
With ``trust_mfa`` an ``amr`` claim naming a second factor (RFC 8176) counts as telerad's second factor;
otherwise users of roles that need one confirm a TOTP code after signing in (``/api/auth/totp/verify``).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx2
from authlib.integrations.httpx_client import OAuth2Client
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import delete, select

from telerad.config import OidcProvider
from telerad.context import Context
from telerad.db.models import Membership, OidcLogin, Site, User, UserSession
from telerad.domain.access import parse_roles
from telerad.security.audit import MINOR_FAILURE, Action, Event
from telerad.security.auth import NewSession, build_principal, sha256_hex, utcnow
from telerad.security.scope import AccessError, NotFound

LOGIN_VALID = timedelta(minutes=10)
ALGORITHMS = ["RS256", "ES256", "PS256"]
MFA_METHODS = {"mfa", "otp", "hwk", "sms", "swk", "fpt", "face", "iris", "retina", "sc", "pop"}
_discovery: dict[str, tuple[float, dict[str, Any]]] = {}
DISCOVERY_TTL = 3600.0


class OidcError(AccessError):
    status = 401


def provider(ctx: Context, name: str) -> OidcProvider:
    found = ctx.settings.oidc_providers.get(name)
    if found is None:
        raise NotFound(f"no single sign-on provider {name[:64]!r}")
    return found


def _http() -> httpx2.Client:
    return httpx2.Client(timeout=10.0, follow_redirects=False)


def discover(p: OidcProvider) -> dict[str, Any]:
    """The provider's metadata (OIDC Discovery 1.0 section 4), cached for an hour."""
    cached = _discovery.get(p.issuer)
    if cached and time.monotonic() - cached[0] < DISCOVERY_TTL:
        return cached[1]
    url = p.issuer.rstrip("/") + "/.well-known/openid-configuration"
    with _http() as client:
        meta: dict[str, Any] = client.get(url).raise_for_status().json()
    if meta.get("issuer") != p.issuer:  # Discovery 4.3: the issuer must match exactly
        raise OidcError(f"identity provider metadata names issuer {meta.get('issuer')!r}, expected {p.issuer!r}")
    _discovery[p.issuer] = (time.monotonic(), meta)
    return meta


def _client(p: OidcProvider, redirect_uri: str) -> OAuth2Client:
    return OAuth2Client(client_id=p.client_id, client_secret=p.client_secret or None, scope=p.scopes,
                        redirect_uri=redirect_uri, code_challenge_method="S256",
                        token_endpoint_auth_method="client_secret_post" if p.client_secret else "none",
                        timeout=10.0)


def begin(ctx: Context, name: str, redirect_uri: str) -> str:
    """Start a sign-in: returns the provider's authorization URL to send the browser to."""
    p = provider(ctx, name)
    meta = discover(p)
    state, nonce, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(64)
    with _client(p, redirect_uri) as client:
        url, _ = client.create_authorization_url(meta["authorization_endpoint"], state=state,
                                                 code_verifier=verifier, nonce=nonce)
    now = utcnow()
    with ctx.db.session(write=True) as s:
        s.execute(delete(OidcLogin).where(OidcLogin.created_at < now - LOGIN_VALID))
        s.add(OidcLogin(state_hash=sha256_hex(state), nonce=nonce, code_verifier=verifier,
                        redirect_uri=redirect_uri[:500], created_at=now))
    return str(url)


def _id_token_claims(p: OidcProvider, meta: dict[str, Any], id_token: str, nonce: str) -> dict[str, Any]:
    with _http() as client:
        keys = KeySet.import_key_set(client.get(meta["jwks_uri"]).raise_for_status().json())
    try:
        token = jwt.decode(id_token, keys, algorithms=ALGORITHMS)
        registry = jwt.JWTClaimsRegistry(
            leeway=60, iss={"essential": True, "value": p.issuer}, aud={"essential": True, "value": p.client_id},
            sub={"essential": True}, exp={"essential": True}, nonce={"essential": True, "value": nonce})
        registry.validate(token.claims)
    except (JoseError, ValueError) as exc:
        raise OidcError(f"ID token refused: {exc}") from None
    claims: dict[str, Any] = token.claims
    azp = claims.get("azp")
    if isinstance(claims.get("aud"), list) and len(claims["aud"]) > 1 and azp != p.client_id:
        raise OidcError("ID token refused: azp does not name telerad")  # OIDC Core 3.1.3.7 (4)-(5)
    return claims


@dataclass(frozen=True)
class _Match:
    user_id: int
    username: str
    roles: str
    totp_confirmed: bool


def _match_user(ctx: Context, p: OidcProvider, name: str, claims: dict[str, Any]) -> _Match:
    subject = f"{p.issuer}|{claims['sub']}"
    wanted = str(claims.get(p.username_claim) or "")
    with ctx.db.session(write=True) as s:
        user = s.execute(select(User).where(User.oidc_subject == subject)).scalar_one_or_none()
        if user is None and wanted:
            user = s.execute(select(User).where(User.username == wanted, User.oidc_subject.is_(None))
                             ).scalar_one_or_none()
            if user is not None:
                user.oidc_subject = subject  # linked at the first sign-in
        if user is None:
            raise OidcError(f"no telerad user for this {name} account: ask an administrator to create "
                            f"user {wanted[:64]!r}" if wanted else "no telerad user for this account")
        if user.disabled:
            raise OidcError("account disabled")
        if p.sites:
            codes = set(s.execute(select(Site.code).join(Membership, Membership.site_id == Site.id)
                                  .where(Membership.user_id == user.id)).scalars())
            if not codes or not codes <= set(p.sites):
                raise OidcError(f"user {user.username} cannot sign in through {name}: it serves only "
                                f"{', '.join(p.sites)}")
        return _Match(user.id, user.username, user.roles, user.totp_confirmed)


def complete(ctx: Context, name: str, state: str, code: str, source: str, user_agent: str = "") -> NewSession:
    """Finish a sign-in from the provider's redirect: check state, exchange the code (with the PKCE
    verifier), validate the ID token, find the user and open a session."""
    p = provider(ctx, name)
    claims: dict[str, Any] = {}
    try:
        with ctx.db.session(write=True) as s:
            pending = s.get(OidcLogin, sha256_hex(state or ""))
            if pending is not None:
                s.delete(pending)  # a state is good for one attempt only
        if pending is None or pending.created_at < utcnow() - LOGIN_VALID:
            raise OidcError("sign-in expired or not started here: start again")
        meta = discover(p)
        with _client(p, pending.redirect_uri) as client:
            try:
                tokens = client.fetch_token(meta["token_endpoint"], code=code, code_verifier=pending.code_verifier,
                                            grant_type="authorization_code")
            except Exception as exc:  # authlib raises OAuthError, httpx2 transport errors: both are a refusal
                raise OidcError(f"the identity provider refused the code: {exc}") from None
        if "id_token" not in tokens:
            raise OidcError("the identity provider sent no ID token")
        claims = _id_token_claims(p, meta, tokens["id_token"], pending.nonce)
        match = _match_user(ctx, p, name, claims)
    except OidcError as exc:
        ctx.audit.record(Event(Action.LOGIN, outcome=MINOR_FAILURE, actor_type="user",
                               actor=str(claims.get(p.username_claim) or claims.get("sub") or "")[:128],
                               source=source, details={"method": f"oidc:{name}", "reason": exc.message}), wait=True)
        raise
    needs_mfa = bool(parse_roles([match.roles]) & parse_roles(ctx.settings.mfa_required_roles))
    idp_mfa = p.trust_mfa and bool(set(claims.get("amr") or []) & MFA_METHODS)
    mfa_ok = idp_mfa or not needs_mfa
    now = utcnow()
    cookie, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    with ctx.db.session(write=True) as s:
        row = UserSession(id_hash=sha256_hex(cookie), user_id=match.user_id, csrf_token=csrf, mfa_ok=mfa_ok,
                          source=source[:64], created_at=now, last_seen_at=now,
                          expires_at=now + timedelta(hours=ctx.settings.session_max_hours))
        s.add(row)
        s.flush()
        principal = build_principal(s, match.user_id, session_id=row.id, mfa_pending=not mfa_ok, source=source)
    ctx.audit.record(Event(Action.LOGIN, actor_type="user", actor=match.username, source=source,
                           details={"method": f"oidc:{name}", "session": row.id, "sub": str(claims["sub"])[:128],
                                    "mfa": "idp" if idp_mfa else ("required" if not mfa_ok else "none"),
                                    "user_agent": user_agent[:200]}), wait=True)
    return NewSession(cookie, csrf, principal, not mfa_ok)
