"""A short way through the HTTP stack for the request a viewer sends most: indexed frames of one instance.

Scrolling a stack, a viewer asks for one frame after another (PS3.18 10.4.1.1.6, ``.../frames/{list}``).
Through FastAPI, routing and dependency resolution cost about as much as the work itself (the index read,
the token check, the file read). :class:`FramesShortcut`, a pure ASGI middleware just outside the router,
answers the common case directly: a ``GET`` with a bearer token, for an instance of the caller's site whose
frames are indexed and small enough to read inline, in a form the ``Accept`` header takes.

It calls the very functions the route calls (:func:`~telerad.security.tokens.check_token`,
:func:`~telerad.security.scope.resolve_site`, :func:`~telerad.archive.retrieve.get_instance`,
:func:`~telerad.archive.retrieve.frames`, :func:`~telerad.adapters.dicomweb.wado.payload_response_for`) and leaves
the principal, the site, the endpoint and the path parameters in the ASGI scope as the route would, so the
audit and security-header middlewares around it record and decorate the response alike. Anything else falls
through to the route, which answers it as it always has, errors included: other credentials or none, a
refused or unknown token, one whose last-used time is due for an update, another site's or an unknown
instance, a frame out of range, an unindexed or big endian file, a missing blob, an Accept it cannot satisfy,
a repeated Authorization, Accept or site header, a query string, and any unexpected failure (a database or
file read error). The shortcut never answers an error itself.
"""

from __future__ import annotations

import logging
import re

from fastapi import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from telerad.adapters.dicomweb import media, wado
from telerad.adapters.dicomweb.deps import DICOMWEB_PREFIX, UID_PATH_PARAMS, is_uid
from telerad.adapters.http.auth import SITE_HEADER
from telerad.archive import retrieve
from telerad.context import Context
from telerad.domain.access import Permission
from telerad.security.scope import AccessError, Principal, SiteScope, resolve_site
from telerad.security.tokens import check_token

_PATH = re.compile(DICOMWEB_PREFIX + r"/studies/([^/]+)/series/([^/]+)/instances/([^/]+)/frames/([^/]+)")
_SITE = SITE_HEADER.lower().encode()
_HEADERS = frozenset({b"authorization", b"accept", _SITE})
log = logging.getLogger(__name__)


class FramesShortcut:
    """Answers the plain case of ``GET .../frames/{list}`` without the router (see the module docstring)."""

    def __init__(self, app: ASGIApp, ctx: Context) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and not scope.get("query_string"):
            match = _PATH.fullmatch(scope["path"])
            response = self._answer(scope, match.groups()) if match else None
            if response is not None:
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _answer(self, scope: Scope, path: tuple[str, ...]) -> Response | None:
        """The route's response for a plain request, or None when the route must answer. Any failure here,
        expected or not (a database error, a file read error), leaves the request to the route, which
        answers and audits it as it always has: the scope is only changed once the response is built."""
        try:
            found = self._plain(scope, path)
        except Exception:  # noqa: BLE001 - the route reports it
            log.debug("frames shortcut: left to the route", exc_info=True)
            return None
        if found is None:
            return None
        response, principal, site = found
        state = scope.setdefault("state", {})
        state["principal"], state["site"] = principal, site
        scope["endpoint"] = wado.retrieve_frames  # the audit middleware reads the action from it
        scope["path_params"] = dict(zip((*UID_PATH_PARAMS, "frame_list"), path, strict=True))
        return response

    def _plain(self, scope: Scope, path: tuple[str, ...]) -> tuple[Response, Principal, SiteScope] | None:
        study, series, sop, frame_list = path
        if not all(is_uid(v) for v in (study, series, sop)):
            return None
        wanted: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            if name in _HEADERS:
                if name in wanted:
                    return None  # repeated: the route reads these headers as Starlette does
                wanted[name] = value.decode("latin-1")
        scheme, _, token = wanted.get(b"authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        client = scope.get("client")
        ctx = self.ctx
        try:
            principal, last_used_stale = check_token(ctx, token.strip(), client[0] if client else "")
            if last_used_stale:
                return None  # the route records the use (a write, in the thread pool)
            known: dict[str, int] = scope["app"].state.__dict__.setdefault("site_ids", {})
            site = resolve_site(ctx.db, principal, Permission.ARCHIVE_READ, wanted.get(_SITE), known)
            numbers = retrieve.parse_frame_list(frame_list)
            inst = retrieve.get_instance(ctx, site.id, study, series, sop)
        except (AccessError, ValueError, retrieve.NotFound):
            return None
        size = retrieve.indexed_frame_bytes(inst, numbers)
        if size is None or size > wado.INLINE_FRAME_BYTES or not ctx.blobs.exists(inst.blob_key):
            return None
        media_type, ts = retrieve.pixel_media_type(inst.transfer_syntax_uid)
        try:
            acceptable = media.accepts_multipart(media.parse_accept(wanted.get(b"accept")), media_type, ts)
        except HTTPException:  # a malformed Accept: the route answers 400
            return None
        if not acceptable:
            return None
        try:
            payload = retrieve.frames(ctx, inst, numbers)
        except retrieve.FrameError:
            return None
        return wado.payload_response_for(payload), principal, site
