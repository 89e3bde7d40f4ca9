"""Authentication and the site scope of an HTTP request, resolved once at the edge.

A request authenticates with ``Authorization: Bearer <API token>`` (RFC 6750) or with the session cookie
set by ``POST /api/auth/login``. Cookie-authenticated writes must echo the session's CSRF token in
``X-CSRF-Token``; bearer requests need not (a browser never attaches a bearer token by itself).

The site a request acts for is named by the ``X-Telerad-Site`` header, and may be left out when the caller
can use exactly one site (a token is always bound to one). Everything else is
:func:`telerad.security.scope.resolve_site`, the one scoping point.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from telerad.context import Context
from telerad.domain.access import Permission
from telerad.security.auth import session_principal
from telerad.security.scope import Forbidden, Principal, SiteScope, Unauthenticated, require, resolve_site
from telerad.security.tokens import check_token, token_principal, touch_token

SITE_HEADER = "X-Telerad-Site"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def cookie_name(ctx: Context) -> str:
    # RFC 6265bis 4.1.3.2: a "__Host-" cookie is Secure, host-only and for path "/": it cannot be planted by a
    # sibling subdomain. Plain HTTP (loopback development) cannot use the prefix.
    return "__Host-telerad_session" if ctx.settings.https else "telerad_session"


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


def _bearer(request: Request) -> str | None:
    """The bearer token of the request (RFC 6750 2.1), None without an Authorization header."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise Unauthenticated("unsupported Authorization scheme: use Bearer with an API token")
    return credentials.strip()


def _authenticate(ctx: Context, request: Request) -> Principal:
    source = client_address(request)
    token = _bearer(request)
    if token is not None:
        return token_principal(ctx, token, source)
    cookie = request.cookies.get(cookie_name(ctx))
    if cookie:
        principal, csrf = session_principal(ctx, cookie, source)
        if request.method not in SAFE_METHODS and request.headers.get(CSRF_HEADER) != csrf:
            raise Forbidden(f"missing or wrong {CSRF_HEADER} header (cross-site request forgery protection)")
        return principal
    raise Unauthenticated("authentication required: send Authorization: Bearer <token> or sign in")


def _remember(request: Request, principal: Principal) -> None:
    request.state.principal = principal


async def authenticated(request: Request) -> Principal:
    """The caller (401 without valid credentials)."""
    cached: Principal | None = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    ctx: Context = request.app.state.ctx
    principal = await run_in_threadpool(_authenticate, ctx, request)
    _remember(request, principal)
    return principal


def permission(perm: Permission) -> Callable[[Request], Awaitable[Principal]]:
    """Dependency: the caller, who must hold ``perm`` (403 otherwise)."""

    async def dependency(request: Request) -> Principal:
        return require(await authenticated(request), perm)

    dependency.__name__ = f"require_{perm.name.lower()}"
    return dependency


def _scope(ctx: Context, request: Request, perm: Permission, code: str | None) -> SiteScope:
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        principal = _authenticate(ctx, request)
        _remember(request, principal)
    known: dict[str, int] = request.app.state.__dict__.setdefault("site_ids", {})
    scope = resolve_site(ctx.db, principal, perm, code, known)
    request.state.site = scope
    return scope


def site_scope(perm: Permission, query_param: str | None = None) -> Callable[[Request], Awaitable[SiteScope]]:
    """Dependency: the one site the request acts on for ``perm``. ``query_param`` also lets a plain URL name
    the site (WADO-URI links cannot set headers).

    A bearer token is checked on the event loop (one indexed read, see :mod:`telerad.adapters.http.offload`),
    and so is the site, whose code is cached after its first lookup; only the minute-ly last-used write goes
    to the thread pool. A session cookie (several reads, a write every half minute) is checked there, with the
    site, in one hop.
    """

    async def dependency(request: Request) -> SiteScope:
        code = request.headers.get(SITE_HEADER)
        if not code and query_param:
            code = request.query_params.get(query_param)
        ctx: Context = request.app.state.ctx
        token = _bearer(request) if getattr(request.state, "principal", None) is None else None
        if token is not None:
            principal, last_used_stale = check_token(ctx, token, client_address(request))
            _remember(request, principal)
            if last_used_stale:
                await run_in_threadpool(touch_token, ctx, principal)
            return _scope(ctx, request, perm, code)
        return await run_in_threadpool(_scope, ctx, request, perm, code)

    dependency.__name__ = f"site_for_{perm.name.lower()}"
    return dependency


PrincipalDep = Annotated[Principal, Depends(authenticated)]
ReadSiteDep = Annotated[SiteScope, Depends(site_scope(Permission.ARCHIVE_READ))]
StoreSiteDep = Annotated[SiteScope, Depends(site_scope(Permission.ARCHIVE_STORE))]
ReadSiteUriDep = Annotated[SiteScope, Depends(site_scope(Permission.ARCHIVE_READ, query_param="site"))]
