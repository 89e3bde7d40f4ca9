"""The audit trail: append-only, hash-chained records of every PHI access and security event (IHE ATNA,
HIPAA 164.312(b)).

Callers describe what happened with an :class:`Event` and hand it to :meth:`AuditLog.record`; a writer
thread appends queued events in batches (one transaction per batch, so auditing a frame request costs no
extra commit on the request's path). Security events and permission changes pass ``wait=True`` and return
only once their record is durable.

Each record carries ``mac = HMAC-SHA256(key, prev_mac + "\\n" + canonical(record))``. The key lives in a
file outside the database (``audit_key_file``): someone who can write to the database but not read that file
cannot rewrite history without :func:`verify` noticing. The single ``audit_head`` row holds the newest
``seq``/``mac``; every append locks it (``SELECT ... FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on
SQLite), so several processes extend one chain.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Dialect, bindparam, func, insert, select, update

from telerad.db.compiled import Compiled, PerDialect
from telerad.db.models import AuditEvent, AuditHead, Patient, Study
from telerad.db.session import Database

log = logging.getLogger(__name__)

# EventOutcomeIndicator (PS3.15 A.5.3, RFC 3881)
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = 0, 4, 8, 12


class Action:
    """Audited actions. ``security.atna`` maps each to its DICOM audit message (PS3.15 A.5.3)."""

    APPLICATION_START = "application.start"  # A.5.3.1 Application Activity
    APPLICATION_STOP = "application.stop"
    LOGIN = "login"  # A.5.3.17 User Authentication
    LOGOUT = "logout"
    QUERY = "query"  # A.5.3.13 Query: QIDO-RS, C-FIND
    RETRIEVE = "retrieve"  # A.5.3.5 DICOM Instances Transferred (sent): WADO-RS/URI, C-GET, C-MOVE
    STORE = "store"  # A.5.3.5 DICOM Instances Transferred (received): STOW-RS, C-STORE, import
    EXPORT = "export"  # A.5.3.8 Export
    ACCESS_DENIED = "access.denied"  # A.5.3.14 Security Alert: use of a restricted function
    NODE_REJECTED = "node.rejected"  # A.5.3.14 Security Alert: node authentication failure
    BREAK_GLASS = "break_glass"  # A.5.3.14 Security Alert: emergency override started
    USER_CHANGE = "user.change"  # A.5.3.14 Security Alert: user security attributes changed
    TOKEN_CHANGE = "token.change"  # A.5.3.14 Security Alert: user security attributes changed
    SITE_CHANGE = "site.change"  # A.5.3.14 Security Alert: security configuration
    AUDIT_ACCESS = "audit.access"  # A.5.3.2 Audit Log Used


@dataclass(frozen=True)
class Actor:
    """Who makes a change, for the audit record."""

    kind: str = "system"  # user | token | system
    name: str = "cli"
    source: str = "cli"


CLI_ACTOR = Actor()


@dataclass
class Event:
    action: str
    outcome: int = SUCCESS
    actor_type: str = "system"  # user | token | node | system
    actor: str = "telerad"
    source: str = ""  # network address (or "cli")
    site_id: int | None = None
    site_code: str = ""
    patient_id: str = ""
    patient_name: str = ""
    study_uid: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    at: str = ""  # set when recorded


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(row: AuditEvent | dict[str, Any]) -> bytes:
    """The bytes the MAC covers: every field but the MACs, as JSON in a fixed order."""
    get = row.get if isinstance(row, dict) else lambda k: getattr(row, k)
    fields = [get("seq"), get("at"), get("action"), get("outcome"), get("actor_type"), get("actor"),
              get("source"), get("site_id"), get("site_code"), get("patient_id"), get("patient_name"),
              get("study_uid"), get("details")]
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()


def chain_mac(key: bytes, prev_mac: str, row: AuditEvent | dict[str, Any]) -> str:
    return hmac.new(key, prev_mac.encode() + b"\n" + canonical(row), hashlib.sha256).hexdigest()


def load_key(path: Path, db: Database) -> bytes:
    """The chain's HMAC key; created (0600) on first use, refused when missing for a non-empty chain."""
    if path.exists():
        key = path.read_bytes()
        if len(key) < 32:
            raise RuntimeError(f"audit key {path} is shorter than 32 bytes")
        return key
    with db.session() as s:
        count = s.execute(select(AuditHead.seq).where(AuditHead.id == 1)).scalar_one_or_none() or 0
    if count:
        raise RuntimeError(f"audit key file {path} is missing but the audit trail holds {count} records: restore "
                           "the key (without it the chain cannot be verified or extended)")
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())
    return key


class AuditLog:
    """Queue plus writer thread; one per process (``Context.audit``)."""

    BATCH = 500
    LINGER = 0.05  # seconds the writer waits for more records before a commit, when nobody waits for them

    def __init__(self, db: Database, key: bytes) -> None:
        self._db = db
        self.key = key
        self._queue: queue.Queue[Event | None] = queue.Queue()
        self._lock = threading.Condition()
        self._enqueued = 0
        self._written = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self._urgent = threading.Event()  # set when someone waits for the records: the writer stops lingering

    # -- public -------------------------------------------------------------------------------------------
    def record(self, event: Event, *, wait: bool = False) -> None:
        """Queue ``event``; with ``wait``, return once it (and everything before it) is committed."""
        event.at = event.at or now_iso()
        with self._lock:
            if self._closed:
                raise RuntimeError("audit log closed")
            self._enqueued += 1
            target = self._enqueued
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="telerad-audit", daemon=True)
                self._thread.start()
            # Queued under the lock, in the order of the counts: a record(wait=True) that counted its event
            # must not find it "written" because another thread's later event went first.
            self._queue.put(event)
        if wait:
            self._wait_for(target, timeout=30.0)

    def flush(self, timeout: float = 30.0) -> None:
        """Block until every event recorded so far is committed."""
        with self._lock:
            target = self._enqueued
        self._wait_for(target, timeout)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            if thread is not None:
                self._queue.put(None)  # after every recorded event: none is queued behind it
                self._urgent.set()
        if thread is not None:
            thread.join(timeout=30.0)

    # -- writer ---------------------------------------------------------------------------------------------
    def _wait_for(self, target: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._written < target:
                self._urgent.set()  # cut the writer's linger short
            while self._written < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("audit records not committed in time (is the database reachable?)")
                self._lock.wait(left)

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            # Linger so a stream of requests shares one commit (each is an fsync with SQLite's
            # synchronous=FULL), unless someone waits for the records (record(wait=True), flush(), close()).
            # The writer sleeps through the linger instead of taking each record as it comes: a wake-up per
            # record made it compete with the request threads for the GIL, and a QIDO loop's slowest
            # requests were those that met it.
            if self._urgent.wait(self.LINGER):
                self._urgent.clear()
            batch: list[Event] = []
            item: Event | None = first
            while True:
                if item is None:
                    stop = True
                elif isinstance(item, Event):
                    batch.append(item)
                if len(batch) >= self.BATCH:
                    self._write_until_done(batch)
                    batch = []
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write_until_done(batch)

    def _write_until_done(self, batch: list[Event]) -> None:
        delay = 0.1
        while True:
            try:
                append(self._db, self.key, batch)
                break
            except Exception:  # database down or locked: keep the events and try again, never drop them
                log.exception("audit: cannot append %d records; retrying in %.1f s", len(batch), delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        with self._lock:
            self._written += len(batch)
            self._lock.notify_all()


_HEAD = select(AuditHead.seq, AuditHead.mac).where(AuditHead.id == 1).with_for_update()
_PATIENT_OF_STUDY = (select(Patient.patient_id, Patient.patient_name).join(Study, Study.patient_fk == Patient.id)
                     .where(Study.site_id == bindparam("p_site_id"), Study.study_uid == bindparam("p_study_uid")))
_EVENT_COLUMNS = ["seq", "at", "action", "outcome", "actor_type", "actor", "source", "site_id", "site_code",
                  "patient_id", "patient_name", "study_uid", "details", "prev_mac", "mac"]
_MOVE_HEAD = update(AuditHead).where(AuditHead.id == 1).values(seq=bindparam("p_seq"), mac=bindparam("p_mac"))


class _Statements:
    """The writer's statements, compiled once per dialect (:mod:`telerad.db.compiled`)."""

    def __init__(self, dialect: Dialect) -> None:
        self.head, self.patient = Compiled(_HEAD, dialect), Compiled(_PATIENT_OF_STUDY, dialect)
        self.insert = Compiled(insert(AuditEvent), dialect, _EVENT_COLUMNS)
        self.move_head = Compiled(_MOVE_HEAD, dialect)


_statements = PerDialect(_Statements)


def _fill_patient(cur: Any, q: _Statements, batch: list[Event]) -> None:
    """Name the patient of events that name only a study (a WADO URL carries no Patient ID)."""
    wanted = {(e.site_id, e.study_uid) for e in batch if e.study_uid and e.site_id and not e.patient_id}
    for site_id, study_uid in wanted:
        row = q.patient.first(cur, {"p_site_id": site_id, "p_study_uid": study_uid})
        if row is None:
            continue
        for e in batch:
            if e.site_id == site_id and e.study_uid == study_uid and not e.patient_id:
                e.patient_id, e.patient_name = row[0], row[1]


def append(db: Database, key: bytes, batch: list[Event]) -> None:
    """Append ``batch`` to the chain in one transaction, on the bare driver, the records in one executemany.

    The writer runs beside the request threads and holds the GIL while it builds a batch: through SQLAlchemy
    (Core statements on a ``Connection``) a one-record batch cost ~2 ms of CPU in the server after a whole-study
    retrieve (caches cold; 0.5 ms in a loop), about as much as the requests' own routing, and it ran in the
    middle of the next request. Building ORM objects, before that, made the requests that coincided with a
    commit the slowest 5 % of every QIDO loop."""
    q = _statements(db.engine.dialect)
    with db.dbapi_write() as cur:
        seq, mac = q.head.first(cur, {})
        _fill_patient(cur, q, batch)
        rows = []
        for e in batch:
            seq += 1
            row: dict[str, Any] = {
                "seq": seq, "at": e.at, "action": e.action[:64], "outcome": e.outcome,
                "actor_type": e.actor_type[:16], "actor": e.actor[:128], "source": e.source[:128],
                "site_id": e.site_id, "site_code": e.site_code[:32], "patient_id": e.patient_id[:64],
                "patient_name": e.patient_name[:324], "study_uid": e.study_uid[:64],
                "details": json.dumps(e.details, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                      default=str),
            }
            row["prev_mac"] = mac
            row["mac"] = mac = chain_mac(key, mac, row)
            rows.append(q.insert.params(row))
        cur.executemany(q.insert.sql, rows)
        q.move_head.run(cur, {"p_seq": seq, "p_mac": mac})


@dataclass
class VerifyReport:
    checked: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(db: Database, key: bytes, max_problems: int = 100) -> VerifyReport:
    """Walk the chain: a changed record fails its MAC, a removed, inserted or reordered one breaks the links
    or the sequence, and removing the newest records no longer matches ``audit_head``."""
    problems: list[str] = []
    checked, prev_seq, prev_mac = 0, 0, ""
    with db.session() as s:
        rows: Iterator[AuditEvent] = s.execute(
            select(AuditEvent).order_by(AuditEvent.seq).execution_options(yield_per=1000)).scalars()
        for row in rows:
            checked += 1
            if row.seq != prev_seq + 1:
                problems.append(f"record {row.seq}: follows {prev_seq} (records {prev_seq + 1}..{row.seq - 1} "
                                "missing or reordered)")
            if row.prev_mac != prev_mac:
                problems.append(f"record {row.seq}: does not link to the record before it")
            if not hmac.compare_digest(row.mac, chain_mac(key, row.prev_mac, row)):
                problems.append(f"record {row.seq}: content does not match its MAC (changed)")
            prev_seq, prev_mac = row.seq, row.mac
            if len(problems) >= max_problems:
                return VerifyReport(checked, problems)
        head = s.execute(select(AuditHead).where(AuditHead.id == 1)).scalar_one()
        if (head.seq, head.mac) != (prev_seq, prev_mac):
            problems.append(f"chain ends at record {prev_seq} but the head says {head.seq}: newest records "
                            "removed, or the head changed")
    return VerifyReport(checked, problems)


def search(db: Database, *, patient_id: str = "", actor: str = "", site_codes: list[str] | None = None,
           action: str = "", study_uid: str = "", since: str = "", until: str = "", limit: int = 100,
           offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
    """Records matching every given filter, newest first, and how many match in all.

    ``since`` (inclusive) and ``until`` (exclusive) compare with the ISO 8601 UTC timestamps, so a date
    ``2026-11-28`` means its midnight.
    ``site_codes`` limits the result to those sites (``None``: all sites).
    """
    q = select(AuditEvent)
    if patient_id:
        q = q.where(AuditEvent.patient_id == patient_id)
    if actor:
        q = q.where(AuditEvent.actor == actor)
    if site_codes is not None:
        q = q.where(AuditEvent.site_code.in_(site_codes))
    if action:
        q = q.where(AuditEvent.action == action)
    if study_uid:
        q = q.where(AuditEvent.study_uid == study_uid)
    if since:
        q = q.where(AuditEvent.at >= since)
    if until:
        q = q.where(AuditEvent.at < until)
    with db.session() as s:
        total = s.execute(select(func.count()).select_from(q.subquery())).scalar_one()
        rows = s.execute(q.order_by(AuditEvent.seq.desc()).limit(limit).offset(offset)).scalars().all()
    return total, [to_dict(r) for r in rows]


def to_dict(r: AuditEvent) -> dict[str, Any]:
    return {"seq": r.seq, "at": r.at, "action": r.action, "outcome": r.outcome, "actor_type": r.actor_type,
            "actor": r.actor, "source": r.source, "site": r.site_code, "patient_id": r.patient_id,
            "patient_name": r.patient_name, "study_uid": r.study_uid, "details": json.loads(r.details or "{}")}
