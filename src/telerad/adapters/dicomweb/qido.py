"""QIDO-RS, the Search transaction (PS3.18 10.6): thin adapter over :func:`telerad.archive.query.search`.

Decisions, with the clauses they rest on:

* Query parameter names that are neither QIDO parameters (PS3.18 Table 8.3.4-1) nor DICOM keywords / tags,
  and attributes we cannot match at the level, are ignored: "The origin server shall ignore any unsupported
  Query Parameters" (PS3.18 8.3). Each ignored name is reported in a ``Warning: 299`` header.
* A supported parameter with an invalid value (bad date, non-integer limit, unknown includefield keyword,
  an attribute given twice) is a 400 (PS3.18 8.3: "If a supported Query Parameter has an invalid value, the
  origin server shall return a 400 (Bad Request)").
* No match is ``200`` with ``[]``: PS3.18 8.3.4.4.1 still says 204, but CP-2473 aligns it with RFC 9110
  15.3.1 and C-FIND (a successful query with zero results); dicomweb-client accepts both.
* Results carry the attributes of PS3.18 Tables 10.6.3-3/-4/-5 for the level, the parent levels' defaults
  for the "all series" / "all instances" / "study's instances" resources (10.6.3.3), the match and
  includefield attributes, and everything with ``includefield=all``.
* More results than ``dicomweb_default_limit`` are cut there with ``Warning: 299 ... There are additional
  results that can be requested`` (PS3.18 8.3.4.4); ``fuzzymatching`` is accepted and ignored (literal
  matching only).
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydicom.datadict import tag_for_keyword

from telerad.adapters.dicomweb import media
from telerad.adapters.dicomweb.deps import CtxDep, SiteDep, SiteScope, header_safe, service_root, valid_path_uids
from telerad.adapters.http import offload
from telerad.adapters.http.audit import audited
from telerad.archive.parse import BASE_PLACEHOLDER
from telerad.archive.query import QueryError, search, supported_keys
from telerad.archive.retrieve import instance_url
from telerad.context import Context
from telerad.security.audit import Action

router = APIRouter(dependencies=[Depends(valid_path_uids)])

STUDY_UID, SERIES_UID, SOP_UID, RETRIEVE_URL, AVAILABILITY = "0020000D", "0020000E", "00080018", "00081190", "00080056"
# PS3.18 Table 10.6.3-3 (Study), 10.6.3-4 (Series), 10.6.3-5 (Instance)
STUDY_DEFAULT = {"00080005", "00080020", "00080030", "00080050", AVAILABILITY, "00080061", "00080090",
                 "00080201", RETRIEVE_URL, "00100010", "00100020", "00100030", "00100040", STUDY_UID,
                 "00200010", "00201206", "00201208"}
SERIES_DEFAULT = {"00080005", "00080060", "00080201", "0008103E", RETRIEVE_URL, SERIES_UID, "00200011",
                  "00201209", "00400244", "00400245", "00400275"}
INSTANCE_DEFAULT = {"00080005", "00080016", SOP_UID, AVAILABILITY, "00080201", RETRIEVE_URL, "00200013",
                    "00280010", "00280011", "00280100", "00280008"}
QIDO_PARAMS = {"includefield", "limit", "offset", "fuzzymatching", "emptyvaluematching", "multiplevaluematching"}
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
MORE_RESULTS = '299 telerad "There are additional results that can be requested"'


def attribute_tag(name: str) -> str | None:
    """The 8-hex tag for a keyword or tag (PS3.18 8.3.4.1 ``attribute-id``), else None."""
    if _TAG.match(name):
        return name.upper()
    tag = tag_for_keyword(name)
    return f"{tag:08X}" if tag is not None else None


def _int_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    # ASCII digits only (str.isdigit() also accepts "²", which int() rejects), and at most the largest SQL
    # BIGINT: the value goes to the database as LIMIT / OFFSET (19 digits also keep int() below its own limit).
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or int(raw) > 2**63 - 1:
        raise HTTPException(400, f"{name} must be a non-negative integer below 2**63, got {raw[:40]!r}")
    return int(raw)


def _include(request: Request) -> tuple[set[str], bool]:
    fields: set[str] = set()
    for raw in request.query_params.getlist("includefield"):
        for name in raw.split(","):
            name = name.strip()
            if not name:
                continue
            if name.lower() == "all":
                return fields, True
            tag = attribute_tag(name)
            if tag is None:
                raise HTTPException(400, f"includefield: {name[:64]!r} is not a DICOM keyword or tag")
            fields.add(tag)
    return fields, False


def _keys(request: Request, level: str) -> tuple[dict[str, str], list[str]]:
    keys: dict[str, str] = {}
    ignored: list[str] = []
    matchable = supported_keys(level)
    for name, value in request.query_params.multi_items():
        if name.lower() in QIDO_PARAMS:
            continue
        if "\x00" in value:
            raise HTTPException(400, f"{name[:64]}: NUL characters are not allowed in a match value")
        tag = attribute_tag(name)
        if tag is None or tag not in matchable:
            if value.strip():
                ignored.append(header_safe(name[:64]))
            if tag is not None:
                keys.setdefault(tag, "")  # still returned as a requested attribute (10.6.3.3)
            continue
        if keys.get(tag):
            raise HTTPException(400, f"attribute {name[:64]} given more than once")
        keys[tag] = value.replace(",", "\\") if tag in (STUDY_UID, SERIES_UID, SOP_UID, "00080016") else value
    return keys, ignored


async def _searched(request: Request, ctx: Context, site: SiteScope, level: str, defaults: set[str],
                    path_keys: dict[str, str]) -> Response:
    bounded = _index_bound(request, level, path_keys)
    return await offload.run(bounded, _search, request, ctx, site, level, defaults, path_keys)


def _search(request: Request, ctx: Context, site: SiteScope, level: str, defaults: set[str],
            path_keys: dict[str, str]) -> Response:
    chosen = media.require(media.parse_accept(request.headers.get("accept")), media.DICOM_JSON)
    fields, include_all = _include(request)
    keys, ignored = _keys(request, level)
    requested = set(keys)
    keys = {k: v for k, v in keys.items() if v}
    keys.update(path_keys)
    cap = ctx.settings.dicomweb_default_limit
    limit, offset = _int_param(request, "limit"), _int_param(request, "offset") or 0
    effective = cap if limit is None or limit > cap else limit
    try:
        rows = search(ctx, site.id, level, keys, limit=effective + 1, offset=offset,
                      include_instance_metadata=level == "IMAGE")
    except QueryError as exc:
        raise HTTPException(400, str(exc)) from None
    warnings = [f'299 telerad "The following query parameters are not supported and were ignored: {n}"'
                for n in ignored]
    if len(rows) > effective:
        rows = rows[:effective]
        if effective == cap:
            warnings.append(MORE_RESULTS)
    if not rows and path_keys and not _parent_exists(ctx, site.id, path_keys):
        raise HTTPException(404, "study not found" if SERIES_UID not in path_keys else "series not found")
    keep = None if include_all else defaults | fields | requested | set(path_keys)
    root = service_root(request)
    body = "[" + ",".join(_render(row, level, keep, root) for row in rows) + "]"
    headers = {"Warning": ", ".join(warnings)} if warnings else {}
    return Response(body, media_type=chosen, headers=headers)


# Keys whose exact value is an index lookup: unique per site, or nearly (a patient's studies).
_INDEXED = {"00100020", STUDY_UID, "00080050", SERIES_UID, SOP_UID}  # PatientID, UIDs, AccessionNumber


def _index_bound(request: Request, level: str, path_keys: dict[str, str]) -> bool:
    """Whether the search is bounded by an index lookup and so small enough to run on the event loop
    (:mod:`telerad.adapters.http.offload`): studies or series matched on an exact Patient ID, Accession
    Number or UID, or a study's series; instances only by exact SOP Instance UID. Wildcard searches, and
    other instance searches (a study's instances may be thousands), run in the thread pool."""
    exact = {attribute_tag(name) for name, value in request.query_params.multi_items()
             if value and "*" not in value and "?" not in value}
    if level == "IMAGE":
        return SOP_UID in exact
    return bool(exact & _INDEXED) or STUDY_UID in path_keys


def _parent_exists(ctx: Context, site_id: int, path_keys: dict[str, str]) -> bool:
    level = "SERIES" if SERIES_UID in path_keys else "STUDY"
    return bool(search(ctx, site_id, level, dict(path_keys), limit=1))


def _render(row: dict[str, Any], level: str, keep: set[str] | None, root: str) -> str:
    study = _uid(row, STUDY_UID)
    url = f"{root}/studies/{study}"
    if level in ("SERIES", "IMAGE"):
        url += f"/series/{_uid(row, SERIES_UID)}"
    inst_url = instance_url(root, study, _uid(row, SERIES_UID), _uid(row, SOP_UID)) if level == "IMAGE" else url
    row[RETRIEVE_URL] = {"vr": "UR", "Value": [inst_url]}
    row.setdefault(AVAILABILITY, {"vr": "CS", "Value": ["ONLINE"]})
    if keep is not None:
        row = {k: v for k, v in row.items() if k in keep}
    text = json.dumps(dict(sorted(row.items())), separators=(",", ":"))
    if level == "IMAGE":
        text = text.replace(BASE_PLACEHOLDER, json.dumps(inst_url)[1:-1])
    return text


def _uid(row: dict[str, Any], tag: str) -> str:
    values = row.get(tag, {}).get("Value") or [""]
    return str(values[0])


@router.get("/studies", summary="Search for studies (PS3.18 10.6)")
@audited(Action.QUERY)
async def search_studies(request: Request, ctx: CtxDep, site: SiteDep) -> Response:
    return await _searched(request, ctx, site, "STUDY", STUDY_DEFAULT, {})


@router.get("/series", summary="Search for series, all studies")
@audited(Action.QUERY)
async def search_all_series(request: Request, ctx: CtxDep, site: SiteDep) -> Response:
    return await _searched(request, ctx, site, "SERIES", SERIES_DEFAULT | STUDY_DEFAULT, {})


@router.get("/studies/{study}/series", summary="Search for a study's series")
@audited(Action.QUERY)
async def search_study_series(study: str, request: Request, ctx: CtxDep, site: SiteDep) -> Response:
    return await _searched(request, ctx, site, "SERIES", SERIES_DEFAULT | {STUDY_UID}, {STUDY_UID: study})


@router.get("/instances", summary="Search for instances, all studies")
@audited(Action.QUERY)
async def search_all_instances(request: Request, ctx: CtxDep, site: SiteDep) -> Response:
    return await _searched(request, ctx, site, "IMAGE", INSTANCE_DEFAULT | SERIES_DEFAULT | STUDY_DEFAULT, {})


@router.get("/studies/{study}/instances", summary="Search for a study's instances")
@audited(Action.QUERY)
async def search_study_instances(study: str, request: Request, ctx: CtxDep, site: SiteDep) -> Response:
    return await _searched(request, ctx, site, "IMAGE", INSTANCE_DEFAULT | SERIES_DEFAULT | {STUDY_UID},
                           {STUDY_UID: study})


@router.get("/studies/{study}/series/{series}/instances", summary="Search for a series' instances")
@audited(Action.QUERY)
async def search_series_instances(study: str, series: str, request: Request, ctx: CtxDep, site: SiteDep) -> Response:
    return await _searched(request, ctx, site, "IMAGE", INSTANCE_DEFAULT | {STUDY_UID, SERIES_UID},
                           {STUDY_UID: study, SERIES_UID: series})
