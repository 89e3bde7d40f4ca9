"""Audit export to an Audit Record Repository: syslog over TLS with store-and-forward (IHE ITI-20, ATNA).

Each audit record becomes a DICOM audit message (:mod:`telerad.security.atna`, PS3.15 A.5) carried in an
RFC 5424 syslog message as IHE ITI TF-2 3.20 (Record Audit Event) specifies:

``<PRI>1 TIMESTAMP HOSTNAME telerad PROCID IHE+RFC-3881 - BOM<?xml ...?><AuditMessage>...``

* PRI = facility 10 (security/authorization, "authpriv") * 8 + severity: 5 (notice) for a successful event,
  4 (warning) for a failure or a Security Alert;
* TIMESTAMP is the time the event was recorded (the record's ``at``), so a message delivered late still says
  when it happened; MSGID "IHE+RFC-3881" (ITI TF-2 3.20.6); STRUCTURED-DATA is nil ("-"); MSG is the UTF-8
  byte order mark and the XML (RFC 5424 6.4).

Transport is RFC 5425: TLS 1.2 or newer (BCP 195), the collector's certificate verified against
``audit_syslog_ca`` and its name or address checked against ``audit_syslog_host``; a client certificate is
presented when ``audit_syslog_cert``/``audit_syslog_key`` are set (ATNA mutual node authentication). Frames
use octet counting: ``MSG-LEN SP SYSLOG-MSG`` (RFC 5425 4.3).

:class:`AuditExporter` is the store-and-forward part. The audit trail itself is the queue: a daemon thread
polls ``audit_events`` for records after the exporter's cursor (table ``audit_export``, row
``syslog:<host>:<port>``), sends them in order, in batches, and moves the cursor only once a batch was
written to the TLS connection. While the collector is unreachable it records ``last_error``, waits
``audit_syslog_retry_seconds`` (doubling, capped) and tries again, so records written meanwhile are delivered,
in order, once it is back. RFC 5425 has no application acknowledgement: before reusing a connection the
exporter checks that the collector has not closed it, and a batch interrupted by a failure is sent again as a
whole, so a collector may, rarely, see a record twice but never miss one it had not been sent.

On PostgreSQL several processes may share one database; a session advisory lock makes one of them the
exporter for a given cursor and the others stand by.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import select
import socket
import ssl
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import Connection, func, text, update
from sqlalchemy import select as sql_select
from sqlalchemy.exc import IntegrityError

from telerad.config import Settings
from telerad.db.models import AuditEvent, AuditExportCursor
from telerad.db.session import Database
from telerad.security.atna import SECURITY_ALERT, event_id, to_audit_message

if TYPE_CHECKING:
    from telerad.context import Context
    from telerad.security.audit import AuditLog

log = logging.getLogger(__name__)

FACILITY_AUTHPRIV = 10  # RFC 5424 6.2.1: security/authorization messages (ITI TF-2 3.20.6)
SEVERITY_WARNING = 4
SEVERITY_NOTICE = 5
APP_NAME = "telerad"
MSGID = "IHE+RFC-3881"  # ITI TF-2 3.20.6: DICOM audit message (PS3.15 A.5) in MSG
BOM = b"\xef\xbb\xbf"  # RFC 5424 6.4: MSG encoded in UTF-8 starts with the byte order mark
NILVALUE = "-"

# BCP 195 (RFC 9325 4.2) TLS 1.2 suites: forward-secret key exchange, AEAD ciphers (TLS 1.3 suites all are).
TLS12_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384",
])

_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$")


# -- RFC 5424 ---------------------------------------------------------------------------------------------------
def _header_field(value: str, limit: int) -> str:
    """A HEADER field: 1..limit PRINTUSASCII characters (RFC 5424 6), or the NILVALUE."""
    clean = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value)[:limit]
    return clean or NILVALUE


def _timestamp(at: str) -> str:
    """RFC 5424 6.2.3 TIMESTAMP (RFC 3339, at most six fractional digits); the record's own if it fits."""
    if _TIMESTAMP.match(at):
        return at
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_message(msg: bytes, *, severity: int, timestamp: str, hostname: str, app_name: str = APP_NAME,
                   procid: str | None = None, msgid: str = MSGID, facility: int = FACILITY_AUTHPRIV) -> bytes:
    """One RFC 5424 SYSLOG-MSG: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - BOM MSG``."""
    if not 0 <= severity <= 7 or not 0 <= facility <= 23:
        raise ValueError("syslog facility 0..23, severity 0..7 (RFC 5424 6.2.1)")
    header = " ".join([
        f"<{facility * 8 + severity}>1", _timestamp(timestamp), _header_field(hostname, 255),
        _header_field(app_name, 48), _header_field(str(os.getpid()) if procid is None else procid, 128),
        _header_field(msgid, 32), NILVALUE,
    ])
    return header.encode("ascii") + b" " + BOM + msg


def frame(message: bytes) -> bytes:
    """RFC 5425 4.3 octet-counting framing: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode("ascii") + b" " + message


def severity_of(row: AuditEvent) -> int:
    """Notice for a successful event, warning for a failure (outcome 4/8/12) or any Security Alert."""
    if row.outcome != 0 or event_id(row.action) == SECURITY_ALERT:
        return SEVERITY_WARNING
    return SEVERITY_NOTICE


def syslog_message(row: AuditEvent, *, ae_title: str, hostname: str, procid: str | None = None) -> bytes:
    """The RFC 5424 message (unframed) that carries the DICOM audit message of ``row``."""
    xml = to_audit_message(row, ae_title=ae_title, host=hostname)
    return format_message(xml, severity=severity_of(row), timestamp=row.at, hostname=hostname, procid=procid)


# -- RFC 5425 ---------------------------------------------------------------------------------------------------
def tls_context(settings: Settings) -> ssl.SSLContext:
    """Client context for RFC 5425: TLS >= 1.2, server verified against ``audit_syslog_ca`` (the system trust
    store when unset), host name checked, client certificate when configured."""
    if bool(settings.audit_syslog_cert) != bool(settings.audit_syslog_key):
        raise ValueError("audit syslog TLS needs both audit_syslog_cert and audit_syslog_key")
    ca = settings.audit_syslog_ca
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if settings.audit_syslog_cert and settings.audit_syslog_key:
        ctx.load_cert_chain(str(settings.audit_syslog_cert), str(settings.audit_syslog_key))
    return ctx


def connect(settings: Settings, *, timeout: float = 10.0, context: ssl.SSLContext | None = None) -> ssl.SSLSocket:
    """An established, verified TLS connection to the configured collector."""
    context = context or tls_context(settings)
    raw = socket.create_connection((settings.audit_syslog_host, settings.audit_syslog_port), timeout=timeout)
    try:
        sock = context.wrap_socket(raw, server_hostname=settings.audit_syslog_host)
    except BaseException:
        raw.close()
        raise
    try:
        if sock.version() == "TLSv1.3":
            _await_verdict(sock, min(timeout, 2.0))
    except BaseException:
        sock.close()
        raise
    return sock


def _await_verdict(sock: ssl.SSLSocket, timeout: float) -> None:
    """TLS 1.3 ends the client's handshake before the server has judged the client certificate (RFC 8446
    4.4.2): a collector that refuses it says so with an alert just after, when bytes sent meanwhile would be
    lost. Wait briefly for that alert or for the session tickets an accepting server sends."""
    readable, _, _ = select.select([sock], [], [], timeout)
    if not readable:
        return  # no tickets from this server, and no refusal within the wait
    previous = sock.gettimeout()
    sock.setblocking(False)
    try:
        if sock.recv(1) == b"":
            raise ConnectionResetError("the collector closed the connection after the TLS handshake")
    except ssl.SSLWantReadError:
        pass  # session tickets processed: the collector accepted this client
    finally:
        sock.settimeout(previous)


def _peer_closed(sock: ssl.SSLSocket) -> bool:
    """Whether the collector has closed (or broken) the connection. A syslog receiver never sends application
    data, so a readable socket means end of stream, an alert, or a TLS 1.3 session ticket (harmless)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    if not readable:
        return False
    timeout = sock.gettimeout()
    try:
        sock.setblocking(False)
        return sock.recv(1) == b""
    except ssl.SSLWantReadError:
        return False
    except OSError:  # includes ssl.SSLError (alerts, close_notify handling)
        return True
    finally:
        try:
            sock.settimeout(timeout)
        except OSError:
            pass


# -- store-and-forward ------------------------------------------------------------------------------------------
class AuditExporter:
    """Delivers the audit trail to one syslog collector, in order, surviving collector and process restarts.

    :meth:`start` runs a daemon thread that calls :meth:`run_once` every ``poll_seconds``; :meth:`run_once`
    can also be called directly (it delivers everything pending and returns how many records it sent, or
    raises the connection error after recording it in ``audit_export.last_error``).
    """

    def __init__(self, db: Database, settings: Settings, *, hostname: str | None = None,
                 poll_seconds: float = 1.0, batch_size: int = 200, max_retry_seconds: float = 60.0,
                 connect_timeout: float = 10.0, audit: AuditLog | None = None) -> None:
        if not settings.audit_syslog_host:
            raise ValueError("audit_syslog_host is not set")
        self.db = db
        self.settings = settings
        self.name = f"syslog:{settings.audit_syslog_host}:{settings.audit_syslog_port}"[:64]
        self.hostname = hostname or socket.gethostname() or NILVALUE
        self.poll_seconds = poll_seconds
        self.batch_size = batch_size
        self.retry_seconds = max(settings.audit_syslog_retry_seconds, 0.01)
        self.max_retry_seconds = max(max_retry_seconds, self.retry_seconds)
        self.connect_timeout = connect_timeout
        self._audit = audit
        self._context = tls_context(settings)  # configuration errors surface at start, not in the thread
        self._sock: ssl.SSLSocket | None = None
        self._leader: Connection | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> AuditExporter:
        """Start the delivery thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="telerad-audit-export", daemon=True)
            self._thread.start()
        return self

    def stop(self, *, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop the thread; with ``drain``, first try once to deliver what is pending (e.g. Application Stop).
        Whatever cannot be delivered now stays in the trail and goes out after the next start."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if drain:
            try:
                if self._audit is not None:
                    self._audit.flush(timeout=5.0)
                self.run_once()
            except Exception as exc:  # collector or database unreachable: the records wait for the next start
                log.warning("audit export %s: %d records not delivered at stop: %s", self.name, self.pending(), exc)
        with self._lock:
            self._close_socket()
            self._release_leader()

    # -- delivery -------------------------------------------------------------------------------------------------
    def run_once(self) -> int:
        """Send every record after the cursor, batch by batch; returns the number sent."""
        with self._lock:
            if not self._lead():
                return 0
            sent = 0
            while True:
                rows = self._pending_rows()
                if not rows:
                    return sent
                payload = b"".join(frame(syslog_message(r, ae_title=self.settings.ae_title, hostname=self.hostname))
                                   for r in rows)
                try:
                    self._connection().sendall(payload)
                except OSError as exc:  # refused, unreachable, TLS verification or protocol failure, reset
                    self._close_socket()
                    self._record_error(exc)
                    raise
                self._advance(rows[-1].seq)
                sent += len(rows)
                if len(rows) < self.batch_size:
                    return sent

    def cursor(self) -> AuditExportCursor:
        """The durable position (a detached copy): last record delivered, last error."""
        with self.db.session() as s:
            row = s.get(AuditExportCursor, self.name)
            if row is None:
                return AuditExportCursor(name=self.name, last_seq=0, last_error="", updated_at=None)
            s.expunge(row)
            return row

    def pending(self) -> int:
        """How many records wait for delivery."""
        last = self.cursor().last_seq
        with self.db.session() as s:
            return int(s.execute(sql_select(func.count()).select_from(AuditEvent)
                                 .where(AuditEvent.seq > last)).scalar_one())

    # -- internals --------------------------------------------------------------------------------------------------
    def _run(self) -> None:
        delay = self.retry_seconds
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:
                log.warning("audit export %s failed (%s); retrying in %.1f s", self.name, exc, delay)
                wait, delay = delay, min(delay * 2, self.max_retry_seconds)
            else:
                wait, delay = self.poll_seconds, self.retry_seconds
            self._stop.wait(wait)

    def _pending_rows(self) -> Sequence[AuditEvent]:
        with self.db.session() as s:
            last = s.execute(sql_select(AuditExportCursor.last_seq)
                             .where(AuditExportCursor.name == self.name)).scalar_one_or_none()
        if last is None:
            last = 0
            self._create_cursor()
        with self.db.session() as s:
            return s.execute(sql_select(AuditEvent).where(AuditEvent.seq > last).order_by(AuditEvent.seq)
                             .limit(self.batch_size)).scalars().all()

    def _create_cursor(self) -> None:
        try:
            with self.db.session(write=True) as s:
                s.add(AuditExportCursor(name=self.name, last_seq=0, last_error="", updated_at=_now()))
        except IntegrityError:  # created meanwhile by another process
            pass

    def _advance(self, seq: int) -> None:
        with self.db.session(write=True) as s:
            s.execute(update(AuditExportCursor).where(AuditExportCursor.name == self.name)
                      .values(last_seq=seq, last_error="", updated_at=_now()))

    def _record_error(self, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}"[:2000]
        try:
            with self.db.session(write=True) as s:
                s.execute(update(AuditExportCursor).where(AuditExportCursor.name == self.name)
                          .values(last_error=message, updated_at=_now()))
        except Exception:
            log.exception("audit export %s: cannot record the error %s", self.name, message)

    def _connection(self) -> ssl.SSLSocket:
        if self._sock is not None and _peer_closed(self._sock):
            self._close_socket()
        if self._sock is None:
            self._sock = connect(self.settings, timeout=self.connect_timeout, context=self._context)
            self._sock.settimeout(max(self.connect_timeout, 30.0))
        return self._sock

    def _close_socket(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def _lead(self) -> bool:
        """On PostgreSQL, hold a session advisory lock named after the cursor: one exporter per collector."""
        if self.db.engine.dialect.name != "postgresql":
            return True
        if self._leader is not None:
            try:
                self._leader.execute(text("SELECT 1"))
                return True
            except Exception:
                self._release_leader()
        conn = self.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        if conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self._lock_key}).scalar_one():
            self._leader = conn
            return True
        conn.close()
        return False

    @property
    def _lock_key(self) -> int:
        return int.from_bytes(hashlib.sha256(f"telerad:{self.name}".encode()).digest()[:8], "big", signed=True)

    def _release_leader(self) -> None:
        """Unlock before the connection goes back to the pool (a pooled session would keep the lock)."""
        if self._leader is None:
            return
        conn, self._leader = self._leader, None
        try:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._lock_key})
            conn.close()
        except Exception:
            with contextlib.suppress(Exception):
                conn.invalidate()  # discard the DBAPI connection: the server ends the session and its lock


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def start_exporter(ctx: Context) -> AuditExporter | None:
    """Start exporting ``ctx``'s audit trail to ``audit_syslog_host`` (None when that is empty: export off)."""
    if not ctx.settings.audit_syslog_host:
        return None
    return AuditExporter(ctx.db, ctx.settings, audit=ctx.audit).start()
