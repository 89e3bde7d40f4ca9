"""Request-scoped dependencies of the DICOMweb adapters: the context, the tenant, the service root.

The tenant (site) is resolved once per request, here and nowhere else; every service call receives its id.
Authentication comes later: for now the caller names its site in ``X-Telerad-Site`` (WADO-URI, PS3.18 9,
may instead pass a ``site`` query parameter, since a plain URL in a report or browser cannot set headers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from telerad.context import Context
from telerad.db.models import Site

SITE_HEADER = "X-Telerad-Site"
DICOMWEB_PREFIX = "/dicom-web"
_CODE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")  # as registry.add_site admits them
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")  # as ingest admits them (PS3.5 9.1, leading zeros tolerated)
UID_PATH_PARAMS = ("study", "series", "instance")


@dataclass(frozen=True)
class SiteScope:
    """The tenant a request acts for."""

    id: int
    code: str


# Dependencies without I/O are ``async``: FastAPI runs sync dependencies in its thread pool, one hop each.
async def get_ctx(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


CtxDep = Annotated[Context, Depends(get_ctx)]


def _resolve(ctx: Context, code: str | None, how: str) -> SiteScope:
    code = (code or "").strip()
    if not code:
        raise HTTPException(400, f"no site given: send the site code in the {how}")
    site_id = None
    if _CODE.match(code):
        with ctx.db.session() as s:
            site_id = s.execute(select(Site.id).where(Site.code == code)).scalar_one_or_none()
    if site_id is None:
        raise HTTPException(404, f"unknown site {code[:32]!r}")
    return SiteScope(site_id, code)


async def _resolve_cached(request: Request, code: str | None, how: str) -> SiteScope:
    """Known site codes are remembered per app (sites are never renamed or removed yet: a feature that
    does either must clear ``app.state.site_ids``); unknown ones are looked up every time."""
    cache: dict[str, int] = request.app.state.__dict__.setdefault("site_ids", {})
    key = (code or "").strip()
    if key in cache:
        return SiteScope(cache[key], key)
    scope = await run_in_threadpool(_resolve, request.app.state.ctx, code, how)
    cache[scope.code] = scope.id
    return scope


async def current_site(request: Request) -> SiteScope:
    """The site named by the ``X-Telerad-Site`` header (400 when missing, 404 when unknown)."""
    return await _resolve_cached(request, request.headers.get(SITE_HEADER), f"{SITE_HEADER} header")


async def current_site_uri(request: Request) -> SiteScope:
    """WADO-URI: the ``X-Telerad-Site`` header, else the ``site`` query parameter."""
    code = request.headers.get(SITE_HEADER) or request.query_params.get("site")
    return await _resolve_cached(request, code, f"{SITE_HEADER} header or the site query parameter")


SiteDep = Annotated[SiteScope, Depends(current_site)]
SiteUriDep = Annotated[SiteScope, Depends(current_site_uri)]


def check_uid(name: str, value: str) -> None:
    """400 for a value that cannot be a UID (PS3.5 9.1): it could never be found, and must not reach SQL."""
    if len(value) > 64 or not _UID.match(value):
        raise HTTPException(400, f"invalid {name} UID {value[:80]!r}: digits and dots, at most 64 characters")


async def valid_path_uids(request: Request) -> None:
    """Router dependency: the study / series / instance UIDs in the path are UIDs."""
    for name in UID_PATH_PARAMS:
        value = request.path_params.get(name)
        if value is not None:
            check_uid(name, value)


def header_safe(text: str) -> str:
    """Printable ASCII for a header field value (query parameter names echoed in Warning)."""
    return "".join(ch if " " <= ch <= "~" and ch not in '"\\' else "?" for ch in text)


def service_root(request: Request) -> str:
    """Absolute URL of the DICOMweb service root (for RetrieveURL, BulkDataURI): the configured
    ``public_base_url`` (behind a reverse proxy, or for clients that omit the port from Host), else the URL
    the client reached."""
    configured = request.app.state.ctx.settings.public_base_url
    base = configured if configured else str(request.base_url)
    return base.rstrip("/") + DICOMWEB_PREFIX
