"""STOW-RS, the Store transaction (PS3.18 10.5): every part goes through the one ingest path.

* Request: ``multipart/related; type="application/dicom"`` (10.5.1.2); a single ``application/dicom`` body is
  accepted as one instance. Metadata + bulk data requests (``application/dicom+json`` parts) are not
  supported: 415, as is any other Content-Type (Table 10.5.3-1). A body that is not well-formed multipart is
  400. The body is spooled (memory, then disk) and capped at ``max_object_bytes``: larger is 413 (PS3.18 8.5)
  before anything is stored.
* Response: the Store Instances Response Module (PS3.18 Table 10.5.3-2, Annex I) as application/dicom+json:
  ReferencedSOPSequence with a RetrieveURL per stored instance, FailedSOPSequence with FailureReason = the
  DICOM status ingest reported (PS3.18 Table I.2-3; 0x0111 for a UID already stored with different bytes,
  0xA900 for an instance of another study than the one in the URL).
* Status (Table 10.5.3-1): 200 all stored, 202 some stored and some failed, 409 none stored.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from typing import IO, Any

import pydicom
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from starlette.concurrency import run_in_threadpool

from telerad.adapters.dicomweb import media, multipart
from telerad.adapters.dicomweb.deps import CtxDep, SiteScope, StoreDep, service_root, valid_path_uids
from telerad.adapters.http.audit import audited
from telerad.archive.errors import CANNOT_UNDERSTAND, DATASET_MISMATCH
from telerad.archive.ingest import Outcome, StoreResult, store
from telerad.archive.retrieve import instance_url
from telerad.context import Context
from telerad.security.audit import Action

router = APIRouter(dependencies=[Depends(valid_path_uids)])
DICOM = "application/dicom"
SPOOL_IN_MEMORY = 8 * 1024 * 1024
READ_CHUNK = 1 << 20


def _content_type(request: Request) -> str | None:
    """The multipart boundary of the request, None for a single part; 415 / 400 for what we cannot take."""
    raw = request.headers.get("content-type")
    if not raw:
        raise HTTPException(415, 'Content-Type must be multipart/related; type="application/dicom"')
    try:
        ct = media.parse_media_type(raw)
    except ValueError as exc:
        raise HTTPException(400, f"malformed Content-Type: {exc}") from None
    if ct.type == DICOM:
        return None
    if ct.type != "multipart/related" or ct.params.get("type", DICOM).lower() != DICOM:
        raise HTTPException(415, f'unsupported media type {raw[:120]!r}: telerad stores multipart/related; '
                                 'type="application/dicom" (PS3.10 instances)')
    boundary = ct.params.get("boundary")
    if not boundary:
        raise HTTPException(400, "multipart/related Content-Type without a boundary parameter")
    return boundary


async def _spool(request: Request, ctx: Context) -> tuple[IO[bytes], int]:
    cap = ctx.settings.max_object_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise HTTPException(413, f"request body of {declared} bytes exceeds the maximum of {cap}")
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, mode="w+b", dir=str(ctx.blobs.root / "tmp"))
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > cap:
                raise HTTPException(413, f"request body exceeds the maximum of {cap} bytes")
            spool.write(chunk)
    except BaseException:
        spool.close()
        raise
    return spool, total


def _chunks(f: IO[bytes]) -> Iterator[bytes]:
    f.seek(0)
    while chunk := f.read(READ_CHUNK):
        yield chunk


def _identify(raw: bytes) -> tuple[str, str, str]:
    """(Study, SOP Class, SOP Instance UID) of a part, as far as it can be read; empty strings if not."""
    try:
        ds = pydicom.dcmread(io.BytesIO(raw), force=True, stop_before_pixels=True,
                             specific_tags=["StudyInstanceUID", "SOPClassUID", "SOPInstanceUID"])
        study, sop_class, sop_uid = (str(ds.get(k, "")).strip("\0 ")[:64]
                                     for k in ("StudyInstanceUID", "SOPClassUID", "SOPInstanceUID"))
        return study, sop_class, sop_uid
    except Exception:
        return "", "", ""  # ingest says why it cannot be stored


def _ingest(ctx: Context, site: SiteScope, spool: IO[bytes], size: int, boundary: str | None,
            study: str | None, root: str, media_type: str, audit_studies: dict[str, int]) -> Response:
    if boundary is None:
        spans = [multipart.PartSpan({}, 0, size)]
    else:
        try:
            spans = list(multipart.scan(_chunks(spool), boundary))
        except multipart.MultipartError as exc:
            raise HTTPException(400, f"malformed multipart body: {exc}") from None
        if not spans:
            raise HTTPException(400, "multipart body without parts")
    stored: list[StoreResult] = []
    failed: list[StoreResult] = []
    for span in spans:
        part_type = span.headers.get("content-type", DICOM).split(";")[0].strip().lower()
        if part_type != DICOM:
            failed.append(StoreResult(outcome=Outcome.REJECTED, status=CANNOT_UNDERSTAND))
            continue
        spool.seek(span.start)
        raw = spool.read(span.end - span.start)
        if study is not None:
            found, sop_class, sop_uid = _identify(raw)
            if found and found != study:
                failed.append(StoreResult(outcome=Outcome.REJECTED, status=DATASET_MISMATCH, study_uid=found,
                                          sop_instance_uid=sop_uid, sop_class_uid=sop_class))
                continue
        result = store(ctx, site.id, raw, source=f"STOW-RS:{site.code}")
        if not result.ok and not result.sop_instance_uid:
            _, sop_class, sop_uid = _identify(raw)  # rejected before ingest read the UIDs: report them
            result = replace(result, sop_class_uid=sop_class, sop_instance_uid=sop_uid)
        (stored if result.ok else failed).append(result)
        if result.ok:
            audit_studies[result.study_uid] = audit_studies.get(result.study_uid, 0) + 1
    return _response(stored, failed, study, root, media_type)


def _uid(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _response(stored: list[StoreResult], failed: list[StoreResult], study: str | None, root: str,
              media_type: str) -> Response:
    body: dict[str, Any] = {}
    studies = {r.study_uid for r in stored}
    target = study or (studies.pop() if len(studies) == 1 else None)
    if target and stored:
        body["00081190"] = {"vr": "UR", "Value": [f"{root}/studies/{target}"]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [
            {"00081150": _uid(r.sop_class_uid), "00081155": _uid(r.sop_instance_uid),
             "00081197": {"vr": "US", "Value": [r.status]}} for r in failed]}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [
            {"00081150": _uid(r.sop_class_uid), "00081155": _uid(r.sop_instance_uid),
             "00081190": {"vr": "UR", "Value": [instance_url(root, r.study_uid, r.series_uid, r.sop_instance_uid)]}}
            for r in stored]}
    status = 200 if not failed else 202 if stored else 409
    return Response(json.dumps(body, separators=(",", ":")), status_code=status, media_type=media_type)


async def _store(request: Request, ctx: Context, site: SiteScope, study: str | None) -> Response:
    chosen = media.require(media.parse_accept(request.headers.get("accept")), media.DICOM_JSON)
    boundary = _content_type(request)
    spool, size = await _spool(request, ctx)
    audit_studies: dict[str, int] = {}
    request.state.audit_studies = audit_studies  # read by the audit middleware: one record per study
    try:
        return await run_in_threadpool(_ingest, ctx, site, spool, size, boundary, study,
                                       service_root(request), chosen, audit_studies)
    finally:
        spool.close()


@router.post("/studies", summary="Store instances (PS3.18 10.5)")
@audited(Action.STORE)
async def store_instances(request: Request, ctx: CtxDep, site: StoreDep) -> Response:
    return await _store(request, ctx, site, None)


@router.post("/studies/{study}", summary="Store instances of one study")
@audited(Action.STORE)
async def store_study_instances(study: str, request: Request, ctx: CtxDep, site: StoreDep) -> Response:
    return await _store(request, ctx, site, study)
