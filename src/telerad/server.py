"""``telerad serve``: HTTP (DICOMweb) and DICOM (DIMSE) listeners in one process.

With ``http_tls_cert``/``http_tls_key`` set, HTTP is served over TLS with the BCP 195 context of
:mod:`telerad.adapters.http.tls` (TLS 1.2 or newer, 1.3 preferred). The start and stop of the application are
audited (PS3.15 A.5.3.1 Application Activity): the start once both listeners are up, the stop once they are
down, durable before the process exits. With ``audit_syslog_host`` set, the audit trail is exported to that
collector as it grows (:mod:`telerad.security.syslog`).
"""

from __future__ import annotations

import gc
import logging
import threading
import time

import uvicorn

from telerad.context import Context
from telerad.security.audit import Action, Event
from telerad.workers import Workers, claim_port, require_fd_passing

log = logging.getLogger(__name__)
ANALYZE_EVERY_S = 600.0
CHECK_GROWTH_EVERY_S = 60.0
GROWTH_MIN_ROWS = 1000
STARTUP_FAILURE = 3  # the exit status uvicorn.run uses when the server did not start


def keep_statistics_fresh(ctx: Context) -> None:
    """Re-plan as the index grows (see :meth:`telerad.db.session.Database.analyze`): every minute, when the
    number of instances grew by a quarter (through this server or an import by another process) since the
    last ANALYZE, and at least every ``ANALYZE_EVERY_S``."""
    last_count, last_at = _instance_count(ctx), time.monotonic()
    while True:
        time.sleep(CHECK_GROWTH_EVERY_S)
        try:
            count = _instance_count(ctx)
            grown = count - last_count >= max(GROWTH_MIN_ROWS, last_count // 4)
            if grown or time.monotonic() - last_at >= ANALYZE_EVERY_S:
                ctx.db.analyze()
                last_count, last_at = count, time.monotonic()
        except Exception:  # never let statistics upkeep take the server down
            log.exception("ANALYZE failed")


def _instance_count(ctx: Context) -> int:
    try:
        return ctx.db.count_instances()
    except Exception:
        log.exception("cannot count instances")
        return 0


def http_config(ctx: Context) -> uvicorn.Config:
    """The uvicorn configuration of the HTTP listener; TLS when a certificate and key are configured."""
    from telerad.adapters.http.sendfile import SendfileProtocol
    from telerad.adapters.http.tls import server_context
    from telerad.app import create_app

    s = ctx.settings
    config = uvicorn.Config(create_app(ctx), host=s.http_host, port=s.http_port, log_level="info",
                            access_log=s.http_access_log, http=SendfileProtocol)
    if s.http_tls_cert and s.http_tls_key:
        cert, key = s.http_tls_cert, s.http_tls_key
        config.ssl_certfile, config.ssl_keyfile = str(cert), str(key)
        config.ssl_context_factory = lambda _config, _default: server_context(cert, key)
    return config


def _application_event(ctx: Context, action: str, **details: object) -> None:
    """PS3.15 A.5.3.1 Application Activity, by the application itself (its AE title)."""
    try:
        ctx.audit.record(Event(action, actor_type="system", actor=ctx.settings.ae_title, source="telerad serve",
                               details=dict(details)), wait=True)
    except Exception:
        log.exception("cannot audit %s", action)


def configure_logging() -> None:
    # The process id tells the lines of ``telerad serve`` and its DIMSE workers apart (telerad/workers.py).
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
    # pynetdicom logs every PDU and DIMSE message at INFO; telerad logs each stored object and refusal itself.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def settle_heap() -> None:
    """Exclude what start-up allocated (modules, routes, schemas, mappers: long-lived) from the collector's
    full passes. Measured on a QIDO loop: a full collection stopped the process for 75-100 ms, once every
    few thousand requests; after ``gc.freeze()`` the slowest of 6,000 requests took 4.9 ms."""
    gc.collect()
    gc.freeze()


def run(ctx: Context) -> None:
    from telerad.adapters.dimse.server import start_dimse
    from telerad.security.syslog import start_exporter

    configure_logging()
    s = ctx.settings
    port_claim = None  # without workers the kernel itself refuses a second listener on the port
    try:
        if s.dimse_workers > 1:
            require_fd_passing()
            port_claim = claim_port(s.dicom_port)
    except RuntimeError as exc:
        log.error("%s", exc)
        raise SystemExit(STARTUP_FAILURE) from None
    ctx.db.analyze()
    threading.Thread(target=keep_statistics_fresh, args=(ctx,), name="db-analyze", daemon=True).start()
    config = http_config(ctx)
    config.load()  # builds the TLS context now: a bad certificate or key fails before anything listens
    dimse = start_dimse(ctx)
    log.info("DICOM listener %s on %s:%d", s.ae_title, s.dicom_host, s.dicom_port)
    workers = Workers(s.dimse_workers - 1)
    if workers.count:  # from now: a connection handed to a worker still starting waits in its socket pair
        dimse.server.handoff = workers.handoff
    workers.start()
    scheme = "https" if config.ssl else "http"
    _application_event(ctx, Action.APPLICATION_START, http=f"{scheme}://{s.http_host}:{s.http_port}",
                       dicom=f"{s.dicom_host}:{s.dicom_port}", dicom_tls=bool(s.dimse_tls_cert))
    exporter = start_exporter(ctx)  # ATNA export to the audit record repository, when configured
    if exporter is not None:
        log.info("audit export to %s:%d (syslog over TLS)", s.audit_syslog_host, s.audit_syslog_port)
    server = uvicorn.Server(config)
    settle_heap()
    try:
        server.run()
    finally:
        workers.stop()
        dimse.shutdown()
        if port_claim is not None:
            port_claim.close()
        _application_event(ctx, Action.APPLICATION_STOP, http=f"{scheme}://{s.http_host}:{s.http_port}",
                           dicom=f"{s.dicom_host}:{s.dicom_port}")
        if exporter is not None:
            exporter.stop()  # one last delivery attempt; what stays undelivered goes out after the next start
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)
