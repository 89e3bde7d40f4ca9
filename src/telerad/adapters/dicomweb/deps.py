"""Request-scoped dependencies of the DICOMweb adapters: the context, the tenant, the service root.

The caller is authenticated and the tenant (site) resolved once per request by
:mod:`telerad.adapters.http.auth` (the one scoping point); every service call receives the site's id.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from telerad.adapters.http.auth import SITE_HEADER, ReadSiteDep, ReadSiteUriDep, StoreSiteDep
from telerad.context import Context
from telerad.security.scope import SiteScope

__all__ = ["SITE_HEADER", "SiteScope", "SiteDep", "StoreDep", "SiteUriDep", "CtxDep"]

DICOMWEB_PREFIX = "/dicom-web"
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")  # as ingest admits them (PS3.5 9.1, leading zeros tolerated)
UID_PATH_PARAMS = ("study", "series", "instance")


# Dependencies without I/O are ``async``: FastAPI runs sync dependencies in its thread pool, one hop each.
async def get_ctx(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


CtxDep = Annotated[Context, Depends(get_ctx)]


SiteDep = ReadSiteDep
StoreDep = StoreSiteDep
SiteUriDep = ReadSiteUriDep


def is_uid(value: str) -> bool:
    return len(value) <= 64 and _UID.match(value) is not None


def check_uid(name: str, value: str) -> None:
    """400 for a value that cannot be a UID (PS3.5 9.1): it could never be found, and must not reach SQL."""
    if not is_uid(value):
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
