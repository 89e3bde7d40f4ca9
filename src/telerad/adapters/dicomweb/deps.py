"""Request-scoped dependencies of the DICOMweb adapters: the context, the tenant, the service root.

The tenant (site) is resolved once per request, here and nowhere else; every service call receives its id.
Authentication comes later: for now the caller names its site in ``X-Telerad-Site`` (WADO-URI, PS3.18 9,
may instead pass a ``site`` query parameter, since a plain URL in a report or browser cannot set headers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy import select

from telerad.context import Context
from telerad.db.models import Site

SITE_HEADER = "X-Telerad-Site"
DICOMWEB_PREFIX = "/dicom-web"


@dataclass(frozen=True)
class SiteScope:
    """The tenant a request acts for."""

    id: int
    code: str


def get_ctx(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


CtxDep = Annotated[Context, Depends(get_ctx)]


def _resolve(ctx: Context, code: str | None, how: str) -> SiteScope:
    code = (code or "").strip()
    if not code:
        raise HTTPException(400, f"no site given: send the site code in the {how}")
    with ctx.db.session() as s:
        site_id = s.execute(select(Site.id).where(Site.code == code)).scalar_one_or_none()
    if site_id is None:
        raise HTTPException(404, f"unknown site {code[:32]!r}")
    return SiteScope(site_id, code)


def current_site(request: Request, ctx: CtxDep) -> SiteScope:
    """The site named by the ``X-Telerad-Site`` header (400 when missing, 404 when unknown)."""
    return _resolve(ctx, request.headers.get(SITE_HEADER), f"{SITE_HEADER} header")


def current_site_uri(request: Request, ctx: CtxDep) -> SiteScope:
    """WADO-URI: the ``X-Telerad-Site`` header, else the ``site`` query parameter."""
    code = request.headers.get(SITE_HEADER) or request.query_params.get("site")
    return _resolve(ctx, code, f"{SITE_HEADER} header or the site query parameter")


SiteDep = Annotated[SiteScope, Depends(current_site)]
SiteUriDep = Annotated[SiteScope, Depends(current_site_uri)]


def service_root(request: Request) -> str:
    """Absolute URL of the DICOMweb service root as the client reached it (for RetrieveURL, BulkDataURI)."""
    return str(request.base_url).rstrip("/") + DICOMWEB_PREFIX
