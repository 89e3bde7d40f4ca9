"""Auditing of HTTP requests that touch patient data (IHE ATNA; PS3.15 A.5.3).

Endpoints declare what they do with :func:`audited` (query, retrieve, store); :class:`AuditMiddleware`
records one event per such request once the response status is known, whatever the outcome: a refused or
failed access is recorded as well as a successful one. The actor and site come from what the authentication
dependency left in ``request.state``; the patient is filled in by the audit writer from the study UID.
A STOW request records one event per study it stored into (``request.state.audit_studies``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import unquote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from telerad.context import Context
from telerad.security.audit import MINOR_FAILURE, SERIOUS_FAILURE, SUCCESS, Event
from telerad.security.scope import Principal, SiteScope

F = TypeVar("F", bound=Callable[..., Any])
_ATTR = "__telerad_audit__"


def audited(action: str) -> Callable[[F], F]:
    """Mark an endpoint as auditable with ``action`` (one of :class:`telerad.security.audit.Action`)."""

    def mark(fn: F) -> F:
        setattr(fn, _ATTR, action)
        return fn

    return mark


def outcome_of(status: int) -> int:
    if status < 400:
        return SUCCESS
    return SERIOUS_FAILURE if status >= 500 else MINOR_FAILURE


class AuditMiddleware:
    """Pure ASGI middleware (streams pass through untouched; no body buffering)."""

    def __init__(self, app: ASGIApp, ctx: Context) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            endpoint = scope.get("endpoint")
            action = getattr(endpoint, _ATTR, None)
            if action is not None:
                self._record(scope, action, status)

    def _record(self, scope: Scope, action: str, status: int) -> None:
        state: dict[str, Any] = scope.get("state") or {}
        principal: Principal | None = state.get("principal")
        site: SiteScope | None = state.get("site")
        params: dict[str, str] = scope.get("path_params") or {}
        client = scope.get("client")
        query = scope.get("query_string", b"").decode("latin-1")
        details: dict[str, Any] = {"method": scope.get("method", ""), "path": unquote(scope.get("path", ""))[:500],
                                   "status": status}
        if principal is not None:
            details.update(principal.extra)
        if query:
            details["query"] = unquote(query)[:1000]
        for key in ("series", "instance", "frame"):
            if key in params:
                details[key] = params[key][:64]

        def event(study_uid: str, extra: dict[str, Any]) -> Event:
            return Event(action, outcome=outcome_of(status), actor_type=principal.kind if principal else "anonymous",
                         actor=principal.name if principal else "", source=client[0] if client else "",
                         site_id=site.id if site else None, site_code=site.code if site else "",
                         study_uid=study_uid[:64], details={**details, **extra})

        studies: dict[str, int] = state.get("audit_studies") or {}
        if studies:
            for uid, count in studies.items():
                self.ctx.audit.record(event(uid, {"instances": count}))
            return
        self.ctx.audit.record(event(params.get("study", "") or _query_study(query), {}))


def _query_study(query: str) -> str:
    """WADO-URI names the study in the query (``studyUID``)."""
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name == "studyUID":
            return unquote(value)
    return ""
