"""WADO-RS, the Retrieve transaction (PS3.18 10.4): instances, metadata, frames and bulk data.

* Instances (Table 10.4.1-1) are ``multipart/related; type="application/dicom"``, sent from the stored files
  with sendfile(2) where the server offers it (:mod:`telerad.adapters.http.sendfile`), else streamed; the
  bytes are sent as stored (transfer-syntax ``*`` semantics) and every part names its transfer syntax. The
  archive does not transcode: an Accept that names another transfer syntax is answered 406 Not Acceptable
  (RFC 9110 15.5.7; PS3.18 8.7.3 lets an origin server that holds only a compressed form send that form when
  no transfer syntax is named). At instance level a plain ``Accept: application/dicom`` gets the single part
  file (the Supplement 183 wording, CP-2040).
* Metadata (Table 10.4.1-2) is the concatenation of the stored DICOM JSON documents.
* Frames (10.4.1.1.6) and bulk data (10.4.1.1.5) are read at the indexed offsets of the stored file, in the
  stored transfer syntax: native as ``application/octet-stream`` (Explicit VR Little Endian octets), compressed
  as the media type of PS3.18 Table 8.7.3-5 with its ``transfer-syntax`` parameter.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.types import Receive, Scope, Send

from telerad.adapters.dicomweb import media, multipart
from telerad.adapters.dicomweb.deps import CtxDep, SiteDep, service_root, valid_path_uids
from telerad.adapters.http import offload, sendfile
from telerad.adapters.http.audit import audited
from telerad.archive import retrieve
from telerad.archive.parse import parse_bulk_path
from telerad.archive.retrieve import FrameError, NotFound, PixelPayload, StoredInstance
from telerad.context import Context
from telerad.security.audit import Action

router = APIRouter(dependencies=[Depends(valid_path_uids)])
DICOM = "application/dicom"
PART_BATCH = 4 << 20  # bytes of stored files read per thread-pool call when streaming instances
INLINE_FRAME_BYTES = 2 << 20  # frames read on the event loop: a few 512x512 16-bit frames, ~0.2 ms from cache


def _instances(ctx: Context, site_id: int, study: str, series: str | None = None,
               sop: str | None = None) -> list[StoredInstance]:
    try:
        found = retrieve.find_instances(ctx, site_id, study, series, sop)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    missing = retrieve.missing_blobs(ctx, found)
    if missing:
        raise HTTPException(503, f"stored file of instance {missing[0]} is unavailable")
    return found


def _stream_instances(request: Request, instances: list[StoredInstance], ctx: Context,
                      single_allowed: bool) -> Response:
    ranges = media.parse_accept(request.headers.get("accept"))
    syntaxes = {i.transfer_syntax_uid for i in instances}
    if all(media.accepts_multipart(ranges, DICOM, ts) for ts in syntaxes):
        boundary = multipart.new_boundary()
        heads = {ts: multipart.part_head(boundary, {"Content-Type": f"{DICOM}; transfer-syntax={ts}"})
                 for ts in syntaxes}  # a study's instances share one or two: each head is made once
        parts = [(heads[i.transfer_syntax_uid], i) for i in instances]
        # Each part's closing CRLF goes out with the next part's head (or the closing delimiter), in one write:
        # a write of its own cost a TCP segment and a wake-up of the reader per instance.
        segments: list[sendfile.Segment] = []
        before = b""
        for head, inst in parts:
            segments += [before + head, _file(ctx, inst)]
            before = b"\r\n"
        segments.append(before + multipart.closing(boundary))
        ts = instances[0].transfer_syntax_uid if len(syntaxes) == 1 else None
        return sendfile.SegmentsResponse(segments, _stored_parts(ctx, parts, boundary),
                                         media_type=multipart.content_type(DICOM, boundary, ts))
    if single_allowed and media.accepts_single(ranges, DICOM, instances[0].transfer_syntax_uid):
        inst = instances[0]
        return stored_file_response(ctx, inst, f"{DICOM}; transfer-syntax={inst.transfer_syntax_uid}")
    stored = ", ".join(sorted(syntaxes))
    raise HTTPException(406, 'not acceptable: instances are available as multipart/related; '
                             f'type="application/dicom" in their stored transfer syntax ({stored}) only; '
                             "telerad does not transcode")


def stored_file_response(ctx: Context, inst: StoredInstance, media_type: str) -> Response:
    """The stored Part 10 file as the whole body (sendfile where the server offers it, else streamed)."""
    return sendfile.SegmentsResponse([_file(ctx, inst)], retrieve.iter_file(ctx, inst), media_type=media_type)


def _file(ctx: Context, inst: StoredInstance) -> sendfile.FilePart:
    view = functools.partial(ctx.blobs.mapped, inst.blob_key) if ctx.blobs.mappings.enabled else None
    return sendfile.FilePart(functools.partial(ctx.blobs.open, inst.blob_key, buffered=False), inst.size, view)


async def _stored_parts(ctx: Context, parts: list[tuple[bytes, StoredInstance]],
                        boundary: str) -> AsyncIterator[bytes | memoryview]:
    """The multipart body of stored files, each part read straight into one buffer with its delimiter and
    headers (one copy from the page cache, no joins), several parts per thread-pool call. A file larger than
    ``PART_BATCH`` is sent in chunks, so nothing bigger than that is held."""
    group: list[tuple[bytes, StoredInstance]] = []
    size = 0
    for head, inst in parts:
        if inst.size > PART_BATCH:
            for view in await run_in_threadpool(_read_parts, ctx, group):
                yield view
            group, size = [], 0
            yield head
            async for chunk in iterate_in_threadpool(retrieve.iter_file(ctx, inst)):
                yield chunk
            yield b"\r\n"
            continue
        group.append((head, inst))
        size += inst.size
        if size >= PART_BATCH:
            for view in await run_in_threadpool(_read_parts, ctx, group):
                yield view
            group, size = [], 0
    for view in await run_in_threadpool(_read_parts, ctx, group):
        yield view
    yield multipart.closing(boundary)


def _read_parts(ctx: Context, group: list[tuple[bytes, StoredInstance]]) -> list[memoryview]:
    out = []
    for head, inst in group:
        buf = bytearray(len(head) + inst.size + 2)
        buf[:len(head)] = head
        got = ctx.blobs.readinto(inst.blob_key, memoryview(buf)[len(head):len(head) + inst.size])
        if got != inst.size:  # the Content-Length is promised already: end the response rather than lie
            raise OSError(f"stored file of instance {inst.sop_uid} has {got} bytes, the index says {inst.size}")
        buf[-2:] = b"\r\n"
        out.append(memoryview(buf))
    return out


@router.get("/studies/{study}", summary="Retrieve a study (PS3.18 Table 10.4.1-1)")
@audited(Action.RETRIEVE)
def retrieve_study(study: str, request: Request, ctx: CtxDep, site: SiteDep) -> Response:
    return _stream_instances(request, _instances(ctx, site.id, study), ctx, False)


@router.get("/studies/{study}/series/{series}", summary="Retrieve a series")
@audited(Action.RETRIEVE)
def retrieve_series(study: str, series: str, request: Request, ctx: CtxDep, site: SiteDep) -> Response:
    return _stream_instances(request, _instances(ctx, site.id, study, series), ctx, False)


@router.get("/studies/{study}/series/{series}/instances/{instance}", summary="Retrieve an instance")
@audited(Action.RETRIEVE)
def retrieve_instance(study: str, series: str, instance: str, request: Request, ctx: CtxDep,
                      site: SiteDep) -> Response:
    return _stream_instances(request, _instances(ctx, site.id, study, series, instance), ctx, True)


def _metadata(request: Request, ctx: Context, site_id: int, study: str, series: str | None = None,
              sop: str | None = None) -> Response:
    chosen = media.require(media.parse_accept(request.headers.get("accept")), media.DICOM_JSON)
    try:
        body = retrieve.metadata(ctx, site_id, service_root(request), study, series, sop)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    return Response(body, media_type=chosen)


@router.get("/studies/{study}/metadata", summary="Retrieve study metadata (PS3.18 Table 10.4.1-2)")
@audited(Action.RETRIEVE)
def study_metadata(study: str, request: Request, ctx: CtxDep, site: SiteDep) -> Response:
    return _metadata(request, ctx, site.id, study)


@router.get("/studies/{study}/series/{series}/metadata", summary="Retrieve series metadata")
@audited(Action.RETRIEVE)
def series_metadata(study: str, series: str, request: Request, ctx: CtxDep, site: SiteDep) -> Response:
    return _metadata(request, ctx, site.id, study, series)


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata", summary="Retrieve instance metadata")
@audited(Action.RETRIEVE)
def instance_metadata(study: str, series: str, instance: str, request: Request, ctx: CtxDep,
                      site: SiteDep) -> Response:
    return _metadata(request, ctx, site.id, study, series, instance)


def get_instance(ctx: Context, site_id: int, study: str, series: str, sop: str) -> StoredInstance:
    """The instance with its frame index, or 404 (also used by the rendered and WADO-URI adapters)."""
    try:
        inst = retrieve.get_instance(ctx, site_id, study, series, sop)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    if not ctx.blobs.exists(inst.blob_key):
        raise HTTPException(503, f"stored file of instance {sop} is unavailable")
    return inst


def payload_response(request: Request, payload: PixelPayload) -> Response:
    """Frames or bulk data as multipart/related of their media type, if acceptable (else 406)."""
    ranges = media.parse_accept(request.headers.get("accept"))
    if not media.accepts_multipart(ranges, payload.media_type, payload.transfer_syntax_uid):
        raise HTTPException(406, f'not acceptable: available as multipart/related; type="{payload.media_type}"; '
                                 f"transfer-syntax={payload.transfer_syntax_uid} only; telerad does not transcode")
    return payload_response_for(payload)


def payload_response_for(payload: PixelPayload) -> Response:
    """Frames or bulk data as multipart/related of their media type (the Accept header already checked)."""
    boundary = multipart.new_boundary()
    headers = {"Content-Type": f"{payload.media_type}; transfer-syntax={payload.transfer_syntax_uid}"}
    # The parts are in memory already: each large one goes out as it is, neither copied into one joined body
    # nor iterated through the thread pool.
    return PiecesResponse(multipart.gathered(((headers, [p]) for p in payload.parts), boundary),
                          multipart.content_type(payload.media_type, boundary, payload.transfer_syntax_uid))


class PiecesResponse(Response):
    """A body held in memory as a few pieces, sent one ASGI body message each, with their total length."""

    def __init__(self, pieces: list[multipart.Piece], media_type: str) -> None:
        self.pieces = pieces
        super().__init__(media_type=media_type, headers={"Content-Length": str(sum(len(p) for p in pieces))})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        last = len(self.pieces) - 1
        for i, piece in enumerate(self.pieces):
            await send({"type": "http.response.body", "body": piece, "more_body": i < last})
        if not self.pieces:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        if self.background is not None:
            await self.background()


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frame_list}",
            summary="Retrieve frames (PS3.18 10.4.1.1.6)")
@audited(Action.RETRIEVE)
async def retrieve_frames(study: str, series: str, instance: str, frame_list: str, request: Request,
                          ctx: CtxDep, site: SiteDep) -> Response:
    """The instance is looked up on the event loop (one indexed read); indexed frames of up to
    ``INLINE_FRAME_BYTES`` in all are read there too, anything larger or needing a parse of the file in the
    thread pool (:mod:`telerad.adapters.http.offload`)."""
    try:
        numbers = retrieve.parse_frame_list(frame_list)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    inst = get_instance(ctx, site.id, study, series, instance)
    size = retrieve.indexed_frame_bytes(inst, numbers)
    bounded = size is not None and size <= INLINE_FRAME_BYTES
    return await offload.run(bounded, _frames_response, request, ctx, inst, numbers)


def _frames_response(request: Request, ctx: Context, inst: StoredInstance, numbers: list[int]) -> Response:
    try:
        payload = retrieve.frames(ctx, inst, numbers)
    except FrameError as exc:
        raise HTTPException(404, str(exc)) from None
    return payload_response(request, payload)


@router.get("/studies/{study}/series/{series}/instances/{instance}/bulk/{tag}",
            summary="Retrieve bulk data (PS3.18 10.4.1.1.5), the target of the BulkDataURIs in metadata")
@audited(Action.RETRIEVE)
def retrieve_bulk(study: str, series: str, instance: str, tag: str, request: Request, ctx: CtxDep,
                  site: SiteDep) -> Response:
    try:
        path = parse_bulk_path(tag)
    except ValueError:
        raise HTTPException(400, "bulk data path must be a tag of 8 hexadecimal digits, or "
                                 f"SEQUENCETAG.item.TAG for nested elements, got {tag[:40]!r}") from None
    inst = get_instance(ctx, site.id, study, series, instance)
    try:
        payload = retrieve.bulk_data(ctx, inst, path)
    except (NotFound, FrameError) as exc:
        raise HTTPException(404, str(exc)) from None
    return payload_response(request, payload)
