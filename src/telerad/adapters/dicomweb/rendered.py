"""Rendered and thumbnail resources (PS3.18 10.4, Table 10.4.1-3; rendering parameters 8.3.5.1).

Media types: ``image/jpeg`` (default) or ``image/png``, by Accept or the ``accept`` query parameter
(PS3.18 8.3.3.1); anything else is 406. Parameters: ``window=center,width[,linear|linear-exact|sigmoid]``
(8.3.5.1.4), ``quality=1..100`` (8.3.5.1.2), ``viewport=vw,vh[,sx,sy,sw,sh]`` (8.3.5.1.3; flipping by
negative sw/sh is not supported). An instance rendered without a frame number shows its first frame; a frame
resource renders one frame. Thumbnails are fitted into 128x128 unless a viewport says otherwise; a study or
series thumbnail is that of its middle image.
"""

from __future__ import annotations

import math

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from telerad.adapters.dicomweb import media
from telerad.adapters.dicomweb.deps import CtxDep, SiteDep, valid_path_uids
from telerad.adapters.dicomweb.wado import get_instance
from telerad.adapters.http.audit import audited
from telerad.archive import render as rendering
from telerad.archive import retrieve
from telerad.archive.render import RenderError, RenderOptions, Viewport, Window
from telerad.archive.retrieve import NotFound, StoredInstance
from telerad.context import Context
from telerad.security.audit import Action

router = APIRouter(dependencies=[Depends(valid_path_uids)])
OFFERED = [rendering.JPEG, rendering.PNG]


def parse_window(text: str) -> Window:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise ValueError("window must be center,width[,function]")
    try:
        center, width = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError("window center and width must be numbers") from None
    if not (math.isfinite(center) and math.isfinite(width)):
        raise ValueError("window center and width must be finite numbers")
    function = parts[2].lower() if len(parts) == 3 and parts[2] else "linear"
    if function not in rendering.WINDOW_FUNCTIONS:
        raise ValueError(f"window function must be one of {', '.join(rendering.WINDOW_FUNCTIONS)}")
    if width <= 0 or (function == "linear" and width < 1):
        raise ValueError("window width must be >= 1 (linear) or > 0 (linear-exact, sigmoid)")
    return Window(center, width, function)


def parse_viewport(text: str) -> Viewport:
    try:
        values = [int(p) for p in text.split(",")]
    except ValueError:
        raise ValueError("viewport values must be integers") from None
    if len(values) not in (2, 6) or values[0] < 1 or values[1] < 1 or max(values[:2]) > 8192:
        raise ValueError("viewport must be vw,vh[,sx,sy,sw,sh] with 1 <= vw, vh <= 8192")
    crop = None
    if len(values) == 6:
        sx, sy, sw, sh = values[2:]
        if sx < 0 or sy < 0 or sw < 1 or sh < 1:
            raise ValueError("viewport source region needs sx, sy >= 0 and sw, sh >= 1")
        crop = (sx, sy, sw, sh)
    return Viewport(values[0], values[1], crop)


def options(request: Request, thumbnail: bool = False) -> RenderOptions:
    """Rendering options from the query and Accept (400 for invalid values, 406 for unsupported types)."""
    q = request.query_params
    accept = q.get("accept") or request.headers.get("accept")
    chosen = media.require(media.parse_accept(accept), OFFERED)
    try:
        window = parse_window(q["window"]) if q.get("window") else None
        viewport = parse_viewport(q["viewport"]) if q.get("viewport") else None
        quality = int(q.get("quality") or 90)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    if not 1 <= quality <= 100:
        raise HTTPException(400, "quality must be an integer from 1 to 100")
    if viewport is None and thumbnail:
        viewport = Viewport(rendering.THUMBNAIL_SIZE, rendering.THUMBNAIL_SIZE)
    return RenderOptions(chosen, quality, window, viewport)


def render_response(ctx: Context, inst: StoredInstance, frame: int, opts: RenderOptions) -> Response:
    if inst.number_of_frames and not 1 <= frame <= inst.number_of_frames:
        raise HTTPException(404, f"frame {frame} out of range: instance has {inst.number_of_frames}")
    try:
        data = rendering.render(ctx, inst, frame, opts)
    except RenderError as exc:
        raise HTTPException(406, f"cannot render as {opts.media_type}: {exc}") from None
    return Response(data, media_type=opts.media_type)


def _single_frame(text: str) -> int:
    try:
        numbers = retrieve.parse_frame_list(text)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    if len(numbers) != 1:
        raise HTTPException(400, "rendered frames: give one frame number")
    return numbers[0]


_INSTANCE = "/studies/{study}/series/{series}/instances/{instance}"


@router.get(_INSTANCE + "/rendered", summary="Rendered instance (PS3.18 Table 10.4.1-3)")
@audited(Action.RETRIEVE)
def rendered_instance(study: str, series: str, instance: str, request: Request, ctx: CtxDep,
                      site: SiteDep) -> Response:
    opts = options(request)
    return render_response(ctx, get_instance(ctx, site.id, study, series, instance), 1, opts)


@router.get(_INSTANCE + "/frames/{frame}/rendered", summary="Rendered frame")
@audited(Action.RETRIEVE)
def rendered_frame(study: str, series: str, instance: str, frame: str, request: Request, ctx: CtxDep,
                   site: SiteDep) -> Response:
    n, opts = _single_frame(frame), options(request)
    return render_response(ctx, get_instance(ctx, site.id, study, series, instance), n, opts)


@router.get(_INSTANCE + "/thumbnail", summary="Instance thumbnail")
@audited(Action.RETRIEVE)
def thumbnail_instance(study: str, series: str, instance: str, request: Request, ctx: CtxDep,
                       site: SiteDep) -> Response:
    opts = options(request, thumbnail=True)
    return render_response(ctx, get_instance(ctx, site.id, study, series, instance), 1, opts)


@router.get(_INSTANCE + "/frames/{frame}/thumbnail", summary="Frame thumbnail")
@audited(Action.RETRIEVE)
def thumbnail_frame(study: str, series: str, instance: str, frame: str, request: Request, ctx: CtxDep,
                    site: SiteDep) -> Response:
    n, opts = _single_frame(frame), options(request, thumbnail=True)
    return render_response(ctx, get_instance(ctx, site.id, study, series, instance), n, opts)


def _representative(ctx: Context, site_id: int, study: str, series: str | None) -> StoredInstance:
    try:
        found = retrieve.find_instances(ctx, site_id, study, series)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    images = [i for i in found if i.number_of_frames > 0]
    if not images:
        raise HTTPException(406, "cannot render a thumbnail: no image in this " + ("series" if series else "study"))
    return images[len(images) // 2]


@router.get("/studies/{study}/thumbnail", summary="Study thumbnail")
@audited(Action.RETRIEVE)
def thumbnail_study(study: str, request: Request, ctx: CtxDep, site: SiteDep) -> Response:
    opts = options(request, thumbnail=True)
    return render_response(ctx, _representative(ctx, site.id, study, None), 1, opts)


@router.get("/studies/{study}/series/{series}/thumbnail", summary="Series thumbnail")
@audited(Action.RETRIEVE)
def thumbnail_series(study: str, series: str, request: Request, ctx: CtxDep, site: SiteDep) -> Response:
    opts = options(request, thumbnail=True)
    return render_response(ctx, _representative(ctx, site.id, study, series), 1, opts)
