"""``telerad serve``: HTTP (DICOMweb) and DICOM (DIMSE) listeners in one process."""

from __future__ import annotations

import logging
import threading
import time

import uvicorn

from telerad.context import Context

log = logging.getLogger(__name__)
ANALYZE_EVERY_S = 600.0


def _keep_statistics_fresh(ctx: Context) -> None:
    """Re-plan as the index grows (see :meth:`telerad.db.session.Database.analyze`)."""
    while True:
        time.sleep(ANALYZE_EVERY_S)
        try:
            ctx.db.analyze()
        except Exception:  # never let statistics upkeep take the server down
            log.exception("ANALYZE failed")


def run(ctx: Context) -> None:
    from telerad.adapters.dimse.server import start_dimse
    from telerad.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pynetdicom logs every PDU and DIMSE message at INFO; telerad logs each stored object and refusal itself.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    s = ctx.settings
    ctx.db.analyze()
    threading.Thread(target=_keep_statistics_fresh, args=(ctx,), name="db-analyze", daemon=True).start()
    dimse = start_dimse(ctx)
    log.info("DICOM listener %s on %s:%d", s.ae_title, s.dicom_host, s.dicom_port)
    try:
        uvicorn.run(create_app(ctx), host=s.http_host, port=s.http_port, log_level="info")
    finally:
        dimse.shutdown()
