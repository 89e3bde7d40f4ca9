"""Administration under ``/api``: users and their roles and sites, API tokens, sites and DICOM nodes.

Every change goes through the services in ``telerad.security`` / ``telerad.archive.registry``, which audit it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from telerad.adapters.api.models import ApiModel
from telerad.adapters.http.auth import PrincipalDep, client_address, permission
from telerad.archive import registry
from telerad.context import Context
from telerad.domain.access import Permission
from telerad.security import tokens, users
from telerad.security.audit import Actor
from telerad.security.scope import NotFound, Principal

router = APIRouter()
UsersAdmin = Annotated[Principal, Depends(permission(Permission.USERS_MANAGE))]
SitesAdmin = Annotated[Principal, Depends(permission(Permission.SITES_MANAGE))]


class NewUser(ApiModel):
    username: str = Field(max_length=64)
    roles: list[str] = Field(max_length=10)
    sites: list[str] = Field(default_factory=list, max_length=1000)
    password: str | None = Field(None, max_length=1024)
    full_name: str = Field("", max_length=200)
    email: str = Field("", max_length=254)


class UserChange(ApiModel):
    roles: list[str] | None = Field(None, max_length=10)
    sites: list[str] | None = Field(None, max_length=1000)
    disabled: bool | None = None
    password: str | None = Field(None, max_length=1024)
    full_name: str | None = Field(None, max_length=200)
    unlock: bool = False


class NewToken(ApiModel):
    site: str = Field(max_length=32)
    roles: list[str] | None = Field(None, max_length=10)
    name: str = Field("", max_length=100)
    days: int | None = Field(None, ge=1)
    user: str | None = Field(None, max_length=64, description="Owner (admins only; default: yourself)")


class NewSite(ApiModel):
    code: str = Field(max_length=32)
    name: str = Field(max_length=200)


class NewNode(ApiModel):
    ae_title: str = Field(max_length=16)
    host: str = Field(max_length=255)
    port: int = Field(ge=1, le=65535)
    description: str = Field("", max_length=200)
    tls_fingerprint: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")


def _ctx(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


def _actor(request: Request, principal: Principal) -> Actor:
    return Actor(principal.kind, principal.name, client_address(request))


def _bad(exc: Exception) -> HTTPException:
    return HTTPException(400, str(exc))


@router.get("/users", summary="List users")
async def list_users(request: Request, _: UsersAdmin) -> list[dict[str, Any]]:
    return [u.as_dict() for u in await run_in_threadpool(users.list_users, _ctx(request))]


@router.post("/users", status_code=201, summary="Create a user")
async def create_user(body: NewUser, request: Request, principal: UsersAdmin) -> dict[str, Any]:
    try:
        info = await run_in_threadpool(
            lambda: users.add_user(_ctx(request), body.username, body.roles, body.sites, password=body.password,
                                   full_name=body.full_name, email=body.email, actor=_actor(request, principal)))
    except ValueError as exc:
        raise _bad(exc) from None
    return info.as_dict()


@router.patch("/users/{username}", summary="Change roles, sites, password; disable or unlock a user")
async def change_user(username: str, body: UserChange, request: Request, principal: UsersAdmin) -> dict[str, Any]:
    try:
        info = await run_in_threadpool(
            lambda: users.update_user(_ctx(request), username, roles=body.roles, sites=body.sites,
                                      disabled=body.disabled, password=body.password, full_name=body.full_name,
                                      unlock=body.unlock, actor=_actor(request, principal)))
    except users.UserError as exc:
        if str(exc).startswith("no user"):
            raise NotFound(str(exc)) from None
        raise _bad(exc) from None
    except ValueError as exc:
        raise _bad(exc) from None
    return info.as_dict()


@router.post("/users/{username}/totp-reset", summary="Remove a user's second factor (they enrol again)")
async def reset_totp(username: str, request: Request, principal: UsersAdmin) -> dict[str, str]:
    try:
        await run_in_threadpool(users.reset_totp, _ctx(request), username, _actor(request, principal))
    except users.UserError as exc:
        raise NotFound(str(exc)) from None
    return {"status": "second factor removed"}


@router.get("/tokens", summary="List API tokens (yours; admins: everyone's)")
async def list_tokens(request: Request, principal: PrincipalDep) -> list[dict[str, Any]]:
    mine = None if principal.has(Permission.USERS_MANAGE) else _owner(principal)
    return [t.as_dict() for t in await run_in_threadpool(tokens.list_tokens, _ctx(request), mine)]


def _owner(principal: Principal) -> str:
    if principal.kind != "user":
        raise HTTPException(403, "tokens are managed from a signed-in session, not with a token")
    return principal.name


@router.post("/tokens", status_code=201, summary="Create an API token (shown once)")
async def create_token(body: NewToken, request: Request, principal: PrincipalDep) -> dict[str, Any]:
    owner = _owner(principal)
    if body.user and body.user != owner:
        if not principal.has(Permission.USERS_MANAGE):
            raise HTTPException(403, "only admins create tokens for other users")
        owner = body.user
    try:
        secret, info = await run_in_threadpool(
            lambda: tokens.create_token(_ctx(request), owner, body.site, body.roles, name=body.name, days=body.days,
                                        actor=_actor(request, principal)))
    except ValueError as exc:
        raise _bad(exc) from None
    return {"token": secret, **info.as_dict()}


@router.delete("/tokens/{token_id}", summary="Revoke an API token")
async def revoke_token(token_id: str, request: Request, principal: PrincipalDep) -> dict[str, str]:
    owner = None if principal.has(Permission.USERS_MANAGE) else _owner(principal)
    try:
        await run_in_threadpool(tokens.revoke_token, _ctx(request), token_id[:16], _actor(request, principal), owner)
    except users.UserError as exc:
        raise NotFound(str(exc)) from None
    return {"status": "revoked"}


@router.get("/sites", summary="List sites")
async def list_sites(request: Request, _: SitesAdmin) -> list[dict[str, Any]]:
    rows = await run_in_threadpool(registry.list_sites, _ctx(request))
    return [{"code": s.code, "name": s.name} for s in rows]


@router.post("/sites", status_code=201, summary="Create a site (tenant)")
async def create_site(body: NewSite, request: Request, principal: SitesAdmin) -> dict[str, str]:
    try:
        site = await run_in_threadpool(
            lambda: registry.add_site(_ctx(request), body.code, body.name, actor=_actor(request, principal)))
    except registry.RegistryError as exc:
        raise _bad(exc) from None
    return {"code": site.code, "name": site.name}


@router.get("/sites/{code}/nodes", summary="List a site's DICOM nodes")
async def list_nodes(code: str, request: Request, _: SitesAdmin) -> list[dict[str, Any]]:
    rows = await run_in_threadpool(registry.list_nodes, _ctx(request), code)
    return [{"ae_title": n.ae_title, "host": n.host, "port": n.port} for n in rows]


@router.post("/sites/{code}/nodes", status_code=201, summary="Register a DICOM node of a site")
async def create_node(code: str, body: NewNode, request: Request, principal: SitesAdmin) -> dict[str, Any]:
    try:
        node = await run_in_threadpool(
            lambda: registry.add_node(_ctx(request), code, body.ae_title, body.host, body.port, body.description,
                                      body.tls_fingerprint.lower() if body.tls_fingerprint else None,
                                      actor=_actor(request, principal)))
    except registry.RegistryError as exc:
        if str(exc).startswith("no site"):
            raise NotFound(str(exc)) from None
        raise _bad(exc) from None
    return {"ae_title": node.ae_title, "host": node.host, "port": node.port}
