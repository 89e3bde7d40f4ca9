"""The HTTP application: DICOMweb (PS3.18) under ``/dicom-web``, WADO-URI at ``/wado``, ``/healthz``.

``create_app(ctx)`` is the ASGI factory (``telerad serve`` runs it under uvicorn); adapters find the
context in ``app.state.ctx``.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import text

from telerad.adapters.dicomweb import qido, rendered, stow, wado, wado_uri
from telerad.adapters.dicomweb.deps import DICOMWEB_PREFIX
from telerad.context import Context


def create_app(ctx: Context) -> FastAPI:
    app = FastAPI(title="telerad", summary="Teleradiology DICOM archive: DICOMweb and WADO-URI",
                  version="0.1.0")
    app.state.ctx = ctx
    for router in (qido.router, wado.router, rendered.router, stow.router):
        app.include_router(router, prefix=DICOMWEB_PREFIX, tags=["DICOMweb"])
    app.include_router(wado_uri.router, prefix="/wado", tags=["WADO-URI"])

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI answers 422 for unparseable parameters; PS3.18 8.5 says 400 (Bad Request).
        return JSONResponse({"detail": str(exc.errors())[:1000]}, status_code=400)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        """Liveness and readiness: the database answers and the blob store is writable."""
        with ctx.db.session() as s:
            s.execute(text("SELECT 1"))
        probe = ctx.blobs.root / "tmp"
        return {"status": "ok", "database": "ok", "blobs": "ok" if probe.is_dir() else "missing"}

    return app
