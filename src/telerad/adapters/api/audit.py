"""Searching and verifying the audit trail (``/api/audit``). Every search is itself audited
(PS3.15 A.5.3.2 Audit Log Used).

Admins search every site's records; QA reviewers only records of the sites they are members of.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from telerad.adapters.http.auth import client_address, permission
from telerad.context import Context
from telerad.domain.access import Permission
from telerad.security import audit
from telerad.security.audit import Action, Event
from telerad.security.scope import Principal, site_codes

router = APIRouter()
AuditReader = Annotated[Principal, Depends(permission(Permission.AUDIT_READ))]


def _search(ctx: Context, principal: Principal, source: str, filters: dict[str, Any]) -> dict[str, Any]:
    allowed: list[str] | None = None
    if not principal.has(Permission.USERS_MANAGE):  # not an admin: only the reviewer's own sites
        allowed = sorted(site_codes(ctx.db, principal.site_ids).values())
        if filters["site"]:
            allowed = [c for c in allowed if c == filters["site"]]
    elif filters["site"]:
        allowed = [filters["site"]]
    total, rows = audit.search(ctx.db, patient_id=filters["patient_id"], actor=filters["user"],
                               site_codes=allowed, action=filters["action"], study_uid=filters["study_uid"],
                               since=filters["since"], until=filters["until"], limit=filters["limit"],
                               offset=filters["offset"])
    ctx.audit.record(Event(Action.AUDIT_ACCESS, actor_type=principal.kind, actor=principal.name, source=source,
                           patient_id=filters["patient_id"],
                           details={k: v for k, v in filters.items() if v not in ("", None)} | {"matched": total}))
    return {"total": total, "records": rows}


@router.get("/audit", summary="Search audit records by patient, user, site, action, study and time")
async def search_audit(
    request: Request, principal: AuditReader,
    patient_id: Annotated[str, Query(max_length=64)] = "",
    user: Annotated[str, Query(max_length=128, description="actor: username, token:<id> or AE title")] = "",
    site: Annotated[str, Query(max_length=32)] = "",
    action: Annotated[str, Query(max_length=64)] = "",
    study_uid: Annotated[str, Query(max_length=64)] = "",
    since: Annotated[str, Query(max_length=32, description="ISO 8601 UTC, inclusive")] = "",
    until: Annotated[str, Query(max_length=32, description="ISO 8601 UTC, exclusive")] = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,  # the largest SQL BIGINT (OFFSET)
) -> dict[str, Any]:
    filters = {"patient_id": patient_id, "user": user, "site": site, "action": action, "study_uid": study_uid,
               "since": since, "until": until, "limit": limit, "offset": offset}
    ctx: Context = request.app.state.ctx
    return await run_in_threadpool(_search, ctx, principal, client_address(request), filters)


def _verify(ctx: Context, principal: Principal, source: str) -> dict[str, Any]:
    ctx.audit.flush()
    report = audit.verify(ctx.db, ctx.audit.key)
    ctx.audit.record(Event(Action.AUDIT_ACCESS, actor_type=principal.kind, actor=principal.name, source=source,
                           details={"verify": "ok" if report.ok else "FAILED", "checked": report.checked}))
    return {"ok": report.ok, "checked": report.checked, "problems": report.problems}


@router.get("/audit/verify", summary="Verify the hash chain of the whole audit trail (no patient data shown)")
async def verify_audit(request: Request, principal: AuditReader) -> dict[str, Any]:
    ctx: Context = request.app.state.ctx
    return await run_in_threadpool(_verify, ctx, principal, client_address(request))
