"""The HTTP application: DICOMweb (PS3.18) under ``/dicom-web``, WADO-URI at ``/wado``, the JSON API under
``/api`` and ``/healthz``.

``create_app(ctx)`` is the ASGI factory (``telerad serve`` runs it under uvicorn); adapters find the
context in ``app.state.ctx``. Every route but ``/healthz`` and ``/api/auth/login`` requires authentication
(``adapters.http.auth``); requests touching patient data are audited (``adapters.http.audit``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import text

from telerad.adapters.api import admin, auth
from telerad.adapters.api import audit as audit_api
from telerad.adapters.dicomweb import qido, rendered, stow, wado, wado_uri
from telerad.adapters.dicomweb.deps import DICOMWEB_PREFIX
from telerad.adapters.dicomweb.frames_shortcut import FramesShortcut
from telerad.adapters.http.audit import AuditMiddleware
from telerad.adapters.http.headers import SecurityHeadersMiddleware
from telerad.context import Context
from telerad.security.audit import Action, Event
from telerad.security.scope import AccessError, Forbidden

# Routes that answer without credentials (the route x role x tenant matrix test checks this list).
PUBLIC_ROUTES = frozenset({("GET", "/healthz"), ("POST", "/api/auth/login"), ("GET", "/api/auth/oidc/{name}/login"),
                           ("GET", "/api/auth/oidc/{name}/callback")})


def create_app(ctx: Context) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        ctx.db.serve_event_loop()  # the reads run on the event loop take connections from its own pool
        yield

    app = FastAPI(title="telerad", summary="Teleradiology archive: DICOMweb, WADO-URI and the telerad API",
                  version="0.1.0", lifespan=lifespan)
    app.state.ctx = ctx
    for router in (qido.router, wado.router, rendered.router, stow.router):
        app.include_router(router, prefix=DICOMWEB_PREFIX, tags=["DICOMweb"])
    app.include_router(wado_uri.router, prefix="/wado", tags=["WADO-URI"])
    app.include_router(auth.router, prefix="/api/auth", tags=["auth"])
    app.include_router(admin.router, prefix="/api", tags=["admin"])
    app.include_router(audit_api.router, prefix="/api", tags=["audit"])
    app.add_middleware(FramesShortcut, ctx=ctx)  # innermost: audited and decorated like the route
    app.add_middleware(AuditMiddleware, ctx=ctx)
    app.add_middleware(SecurityHeadersMiddleware, settings=ctx.settings)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI answers 422 for unparseable parameters; PS3.18 8.5 says 400 (Bad Request).
        return JSONResponse({"detail": str(exc.errors())[:1000]}, status_code=400)

    @app.exception_handler(AccessError)
    async def _access_error(request: Request, exc: AccessError) -> JSONResponse:
        headers = {"WWW-Authenticate": 'Bearer realm="telerad"'} if exc.status == 401 else None
        if isinstance(exc, Forbidden):  # a role used a function it does not have: a security alert
            principal = getattr(request.state, "principal", None)
            ctx.audit.record(Event(
                Action.ACCESS_DENIED, outcome=4, actor_type=principal.kind if principal else "anonymous",
                actor=principal.name if principal else "", source=request.client.host if request.client else "",
                details={"method": request.method, "path": request.url.path[:500], "reason": exc.message}))
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=headers)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        """Liveness and readiness: the database answers and the blob store is writable."""
        with ctx.db.session() as s:
            s.execute(text("SELECT 1"))
        probe = ctx.blobs.root / "tmp"
        return {"status": "ok", "database": "ok", "blobs": "ok" if probe.is_dir() else "missing"}

    return app
