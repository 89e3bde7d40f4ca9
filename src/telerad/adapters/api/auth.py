"""Sign-in, sign-out, the current user, TOTP enrolment and break-glass (``/api/auth``).

``POST /api/auth/login`` takes JSON only: a cross-site HTML form cannot send ``application/json`` without
a CORS preflight, which telerad never grants, so sign-in itself cannot be forged (login CSRF).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from telerad.adapters.api.models import ApiModel
from telerad.adapters.http.auth import CSRF_HEADER, PrincipalDep, client_address, cookie_name, permission
from telerad.context import Context
from telerad.domain.access import Permission
from telerad.security import auth, oidc, users
from telerad.security.scope import Forbidden, Principal, site_codes

router = APIRouter()


class LoginRequest(ApiModel):
    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)
    totp: str | None = Field(None, max_length=12, description="6-digit code, when TOTP is enrolled")


class TotpCode(ApiModel):
    code: str = Field(max_length=12)


class BreakGlassRequest(ApiModel):
    site: str = Field(max_length=32)
    reason: str = Field(min_length=1, max_length=2000)


def _ctx(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


def _me(ctx: Context, principal: Any, csrf: str | None = None) -> dict[str, Any]:
    codes = site_codes(ctx.db, principal.site_ids | principal.break_glass_site_ids)
    out = {"user": principal.name, "kind": principal.kind, "roles": sorted(r.value for r in principal.roles),
           "sites": sorted(codes[i] for i in principal.site_ids if i in codes),
           "break_glass_sites": sorted(codes[i] for i in principal.break_glass_site_ids if i in codes),
           "permissions": sorted(p.value for p in principal.permissions),
           "mfa_enrolment_required": principal.mfa_pending}
    if csrf:
        out["csrf_token"] = csrf
    return out


@router.post("/login", summary="Sign in with username, password and (when enrolled) a TOTP code")
async def login(body: LoginRequest, request: Request, response: Response) -> dict[str, Any]:
    ctx = _ctx(request)
    new = await run_in_threadpool(auth.login, ctx, body.username, body.password, body.totp,
                                  client_address(request), request.headers.get("user-agent", ""))
    response.set_cookie(cookie_name(ctx), new.cookie, max_age=ctx.settings.session_max_hours * 3600,
                        path="/", secure=ctx.settings.https, httponly=True, samesite="strict")
    return _me(ctx, new.principal, new.csrf_token)


@router.post("/logout", summary="End the session")
async def logout(request: Request, response: Response, principal: PrincipalDep) -> dict[str, str]:
    ctx = _ctx(request)
    cookie = request.cookies.get(cookie_name(ctx))
    if cookie:
        await run_in_threadpool(auth.end_session, ctx, cookie, "logout", client_address(request))
    response.delete_cookie(cookie_name(ctx), path="/", secure=ctx.settings.https, httponly=True, samesite="strict")
    return {"status": "signed out"}


@router.get("/me", summary="Who am I: roles, sites, permissions")
async def me(request: Request, principal: PrincipalDep) -> dict[str, Any]:
    return await run_in_threadpool(_me, _ctx(request), principal)


def _username(principal: Any) -> str:
    if principal.kind != "user":
        raise Forbidden("TOTP enrolment needs an interactive session")
    return str(principal.name)


@router.post("/totp/setup", summary="Start TOTP enrolment: returns the otpauth:// URI for an authenticator app")
async def totp_setup(request: Request, principal: PrincipalDep) -> dict[str, str]:
    ctx = _ctx(request)
    actor = users.Actor("user", principal.name, client_address(request))
    if principal.mfa_pending and (await run_in_threadpool(users.get_user, ctx, _username(principal))).mfa:
        # A session without a second factor must not replace the enrolled one: confirm it instead.
        raise Forbidden("a second factor is enrolled: confirm a code at /api/auth/totp/verify")
    uri = await run_in_threadpool(users.begin_totp, ctx, _username(principal), actor)
    return {"otpauth_uri": uri, "next": "POST a current code to /api/auth/totp/confirm"}


@router.post("/totp/confirm", summary="Finish TOTP enrolment with a current code")
async def totp_confirm(body: TotpCode, request: Request, principal: PrincipalDep) -> dict[str, Any]:
    ctx = _ctx(request)
    actor = users.Actor("user", principal.name, client_address(request))
    try:
        ok = await run_in_threadpool(users.confirm_totp, ctx, _username(principal), body.code, actor)
    except users.UserError as exc:
        raise HTTPException(400, str(exc)) from None
    if not ok:
        raise HTTPException(400, "wrong code: check the authenticator app's clock and try the next code")
    if principal.session_id is not None:
        await run_in_threadpool(auth.mark_mfa_done, ctx, principal.session_id)
    return {"status": "TOTP enrolled"}


@router.post("/totp/verify", summary="Confirm the enrolled second factor for this session (after single sign-on)")
async def totp_verify(body: TotpCode, request: Request, principal: PrincipalDep) -> dict[str, str]:
    ctx = _ctx(request)
    if principal.session_id is None:
        raise Forbidden("needs an interactive session")
    ok = await run_in_threadpool(auth.verify_session_totp, ctx, principal, body.code)
    if not ok:
        raise HTTPException(400, "wrong code")
    return {"status": "second factor confirmed"}


def _redirect_uri(request: Request, name: str) -> str:
    base = _ctx(request).settings.public_base_url or str(request.base_url)
    return f"{base.rstrip('/')}/api/auth/oidc/{name}/callback"


@router.get("/oidc/{name}/login", summary="Single sign-on: go to the identity provider", status_code=302)
async def oidc_login(name: str, request: Request) -> RedirectResponse:
    url = await run_in_threadpool(oidc.begin, _ctx(request), name[:64], _redirect_uri(request, name[:64]))
    return RedirectResponse(url, status_code=302)


@router.get("/oidc/{name}/callback", summary="Single sign-on: the identity provider's answer")
async def oidc_callback(name: str, request: Request, response: Response,
                        state: Annotated[str, Query(max_length=200)] = "",
                        code: Annotated[str, Query(max_length=2000)] = "",
                        error: Annotated[str, Query(max_length=200)] = "") -> dict[str, Any]:
    ctx = _ctx(request)
    if error or not code:
        raise oidc.OidcError(f"the identity provider did not sign you in: {error or 'no code'}")
    new = await run_in_threadpool(oidc.complete, ctx, name[:64], state, code, client_address(request),
                                  request.headers.get("user-agent", ""))
    response.set_cookie(cookie_name(ctx), new.cookie, max_age=ctx.settings.session_max_hours * 3600,
                        path="/", secure=ctx.settings.https, httponly=True, samesite="strict")
    return _me(ctx, new.principal, new.csrf_token)


@router.post("/break-glass", summary="Emergency access to a site's images (admins; reason required; audited)")
async def break_glass(body: BreakGlassRequest, request: Request,
                      principal: Annotated[Principal, Depends(permission(Permission.BREAK_GLASS))]) -> dict[str, str]:
    until = await run_in_threadpool(auth.break_glass, _ctx(request), principal, body.site, body.reason)
    return {"site": body.site, "until": until.isoformat() + "Z",
            "warning": "emergency access is recorded and reported as a security alert"}


__all__ = ["router", "CSRF_HEADER"]
