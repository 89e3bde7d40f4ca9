"""WADO-URI (PS3.18 Chapter 9), mounted at ``/wado`` (outside ``/dicom-web``, as the URI service has its
own endpoint): ``GET /wado?requestType=WADO&studyUID=..&seriesUID=..&objectUID=..``.

* ``contentType`` (else the Accept header, PS3.18 9.3): ``application/dicom`` sends the stored file as is
  (single part); with a ``transferSyntax`` other than the stored one, 406 (no transcoding). ``image/jpeg``
  (the default for images) and ``image/png`` render one frame (``frameNumber``, default 1) with
  ``windowCenter`` / ``windowWidth``, ``rows`` / ``columns`` (fitted) and ``imageQuality``. An object without
  pixel data defaults to ``application/dicom``.
* ``anonymize=yes`` is refused (400): telerad does not de-identify on retrieval. ``region``, ``annotation``
  and presentation state parameters are ignored.
* The site is the ``X-Telerad-Site`` header or the ``site`` query parameter (a URL cannot carry headers).
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response

from telerad.adapters.dicomweb import media
from telerad.adapters.dicomweb.deps import CtxDep, SiteUriDep, check_uid
from telerad.adapters.dicomweb.media import type_matches
from telerad.adapters.dicomweb.rendered import parse_window, render_response
from telerad.adapters.dicomweb.wado import get_instance, stored_file_response
from telerad.adapters.http.audit import audited
from telerad.archive import render as rendering
from telerad.archive.render import RenderOptions, Viewport
from telerad.security.audit import Action

router = APIRouter()
DICOM = "application/dicom"
OFFERED = [DICOM, rendering.JPEG, rendering.PNG]


def _required(request: Request, name: str) -> str:
    value = request.query_params.get(name, "").strip()
    if not value:
        raise HTTPException(400, f"WADO-URI: the {name} parameter is required (PS3.18 9.5)")
    check_uid(name, value)
    return value


def _content_type(request: Request, has_pixels: bool) -> str:
    raw = request.query_params.get("contentType")
    if raw is None or not raw.strip():
        # PS3.18 9.3: without contentType the Accept header decides; "*/*" means image/jpeg (ours: for images).
        order = [rendering.JPEG, rendering.PNG, DICOM] if has_pixels else [DICOM, rendering.JPEG, rendering.PNG]
        return media.require(media.parse_accept(request.headers.get("accept")), order)
    for item in raw.split(","):
        mtype = item.split(";")[0].strip().lower()
        for offered in OFFERED:
            if type_matches(mtype, offered):
                return offered
    raise HTTPException(406, f"WADO-URI: contentType {raw[:80]!r} not supported; use {', '.join(OFFERED)}")


def _int(request: Request, name: str, low: int, high: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    value = raw.strip()
    # ASCII digits only: str.isdigit() also accepts "²", which int() rejects (as it does 4301 digits and more)
    if not (value.isascii() and value.isdigit()) or len(value) > len(str(high)) or not low <= int(value) <= high:
        raise HTTPException(400, f"WADO-URI: {name} must be an integer from {low} to {high}")
    return int(value)


@router.get("", summary="WADO-URI retrieve (PS3.18 9)")
@audited(Action.RETRIEVE)
def wado(request: Request, ctx: CtxDep, site: SiteUriDep) -> Response:
    q = request.query_params
    if q.get("requestType") != "WADO":
        raise HTTPException(400, "WADO-URI: requestType must be WADO")
    study, series = _required(request, "studyUID"), _required(request, "seriesUID")
    sop = _required(request, "objectUID")
    if q.get("anonymize", "").lower() == "yes":
        raise HTTPException(400, "WADO-URI: anonymize=yes is not supported")
    inst = get_instance(ctx, site.id, study, series, sop)
    chosen = _content_type(request, inst.number_of_frames > 0)
    if chosen == DICOM:
        wanted = q.get("transferSyntax")
        if wanted and wanted != inst.transfer_syntax_uid:
            raise HTTPException(406, f"WADO-URI: object is stored as {inst.transfer_syntax_uid}; "
                                     "telerad does not transcode")
        return stored_file_response(ctx, inst, DICOM)
    frame = _int(request, "frameNumber", 1, 1 << 30) or 1
    quality = _int(request, "imageQuality", 1, 100) or 90
    rows, columns = _int(request, "rows", 1, 8192), _int(request, "columns", 1, 8192)
    center, width = q.get("windowCenter"), q.get("windowWidth")
    if (center is None) != (width is None):
        raise HTTPException(400, "WADO-URI: windowCenter and windowWidth go together")
    try:
        window = parse_window(f"{center},{width}") if center is not None else None
    except ValueError as exc:
        raise HTTPException(400, f"WADO-URI: {exc}") from None
    viewport = None
    if rows or columns:
        viewport = Viewport(columns or 8192, rows or 8192)
    return render_response(ctx, inst, frame, RenderOptions(chosen, quality, window, viewport))
