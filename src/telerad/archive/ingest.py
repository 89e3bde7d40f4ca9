"""The one ingest path: C-STORE, STOW-RS and ``telerad import`` all call :func:`store`.

Order of durability (issue #2 §3): the blob is fsync'd and renamed into place, then the index row is
committed, and only then does the caller answer success. A failure never answers success.

The blob's temporary file is written and synced on a staging thread while this thread parses the object
(:meth:`~telerad.storage.filesystem.FileSystemStore.stage_in_background`): one association's objects come one
after another, so each one's parse and its write no longer add up. The file gets its key (the rename) only
once the parse accepted the object; a rejected object's temporary file is removed.
"""

from __future__ import annotations

import enum
import json
import logging
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ClauseElement, Connection, Dialect, Insert, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from telerad.archive.errors import (
    DATASET_MISMATCH,
    DUPLICATE_SOP_INSTANCE,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    RejectedObject,
)
from telerad.archive.parse import (
    SERIES_TAGS,
    STUDY_TAGS,
    ParsedObject,
    level_json,
    normalise_part10,
    parse_object,
)
from telerad.context import Context
from telerad.db.models import Instance, Patient, Series, StoreConflict, Study
from telerad.storage.filesystem import Staged

log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # same UID, same bytes: success, nothing new written
    CONFLICT = "conflict"  # same UID, different bytes: first kept, conflict recorded, sender told
    REJECTED = "rejected"


@dataclass(frozen=True)
class StoreResult:
    outcome: Outcome
    sop_instance_uid: str = ""
    sop_class_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""
    status: int = 0x0000  # DICOM status (PS3.4 B.2.3) that reports this outcome
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome in (Outcome.STORED, Outcome.DUPLICATE)


def store(ctx: Context, site_id: int, raw: bytes, source: str = "") -> StoreResult:
    """Store one DICOM object for ``site_id``. Never raises for bad input: the result says why."""
    s = ctx.settings
    if len(raw) > s.max_object_bytes:
        return StoreResult(Outcome.REJECTED, status=OUT_OF_RESOURCES,
                           reason=f"object of {len(raw)} bytes exceeds the maximum of {s.max_object_bytes}")
    try:
        data = normalise_part10(raw)
    except RejectedObject as exc:
        return StoreResult(Outcome.REJECTED, status=exc.status, reason=exc.reason)
    except Exception as exc:  # pydicom failing on a malformed raw data set: refused, never raised
        log.exception("unexpected failure reading an object from %s", source)
        return StoreResult(Outcome.REJECTED, status=PROCESSING_FAILURE, reason=f"cannot process object: {exc}")
    # The blob is written and fsync'd on a staging thread while this one parses the same bytes; it is renamed
    # into place only once the object is accepted (issue #2 section 3: blob durable, then index, then success).
    staging = ctx.blobs.stage_in_background(data)
    placed: tuple[str, int] | None = None
    try:
        parsed = _parse(ctx, data, source)
        if isinstance(parsed, StoreResult):
            return parsed
        obj = parsed
        try:
            placed = ctx.blobs.place(staging.result())
        except OSError as exc:
            log.exception("blob write failed")
            return _result(obj, Outcome.REJECTED, OUT_OF_RESOURCES, f"storage failure: {exc.strerror or exc}")
    finally:
        if placed is None:  # rejected, failed or interrupted: nothing may stay behind in the store
            _discard(ctx, staging)
    key, size = placed

    races: tuple[type[Exception], ...] = (IntegrityError, OperationalError, *ctx.db.dbapi_errors)
    for attempt in range(5):
        try:
            with ctx.db.dbapi_write() as cur:
                done = _index_common(cur, ctx.db.engine.dialect, site_id, obj, key, size, source)
            if done is not None:
                return done
            with ctx.db.write_connection() as conn:
                return _index(conn, site_id, obj, key, size, source)
        except races as exc:
            # A concurrent association created the same patient/study/series first: retry sees it.
            log.info("index race on %s (attempt %d): %s", obj.sop_instance_uid, attempt + 1, exc)
        except Exception as exc:
            log.exception("index failure")
            return _result(obj, Outcome.REJECTED, PROCESSING_FAILURE, f"index failure: {exc}")
    return _result(obj, Outcome.REJECTED, OUT_OF_RESOURCES, "database busy, try again")


def _parse(ctx: Context, data: bytes, source: str) -> ParsedObject | StoreResult:
    s = ctx.settings
    try:
        return parse_object(data, max_rows=s.max_rows, max_columns=s.max_columns, max_frames=s.max_frames)
    except RejectedObject as exc:
        return StoreResult(Outcome.REJECTED, status=exc.status, reason=exc.reason)
    except Exception as exc:  # a parser bug must not take the server down or answer success
        log.exception("unexpected failure parsing an object from %s", source)
        return StoreResult(Outcome.REJECTED, status=PROCESSING_FAILURE, reason=f"cannot process object: {exc}")


def _discard(ctx: Context, staging: Future[Staged]) -> None:
    """Remove the staged blob of an object that will not be placed, once its write is over."""
    try:
        ctx.blobs.discard(staging.result())
    except Exception:  # noqa: BLE001 - its write failed: nothing to remove, and the caller's answer stands
        log.debug("staged blob of a rejected object: its write had failed", exc_info=True)


def _result(obj: ParsedObject, outcome: Outcome, status: int = 0, reason: str = "") -> StoreResult:
    return StoreResult(outcome, obj.sop_instance_uid, obj.sop_class_uid, obj.study_uid, obj.series_uid,
                       status, reason)


def _s(ds: object, keyword: str, limit: int) -> str:
    v = getattr(ds, keyword, None)
    if v is None:
        return ""
    return str(v).strip("\0 ")[:limit]


def _da(ds: object, keyword: str) -> str:
    """A date as YYYYMMDD (PS3.5 DA; the ACR-NEMA form 2020.01.31 too), "" when absent or invalid."""
    v = _s(ds, keyword, 10).replace(".", "")
    return v if len(v) == 8 and v.isdigit() else ""


def _tm(ds: object, keyword: str) -> str:
    """A time as HHMMSS[.ffffff] (PS3.5 TM; omitted minutes/seconds are zero, ACR-NEMA 09:30:00 too), so
    the index compares times as strings; "" when absent or invalid."""
    v = _s(ds, keyword, 16).replace(":", "")
    digits, _, frac = v.partition(".")
    if not digits.isdigit() or len(digits) not in (2, 4, 6) or (frac and not frac.isdigit()):
        return ""
    return digits.ljust(6, "0") + ("." + frac if frac else "")


def _n(ds: object, keyword: str) -> int | None:
    try:
        v = getattr(ds, keyword, None)
        return int(v) if v not in (None, "") else None
    except (TypeError, ValueError):
        return None


# Statements of the common path (the series exists), built once: Core statements on a bare connection skip
# the ORM and reuse SQLAlchemy's compiled-statement cache without rebuilding a statement per call.
# One lookup gives the series, its study's UID and the blob key of an instance already stored under the UID.
_EXISTING = (
    select(Instance.blob_key)
    .where(Instance.site_id == bindparam("p_site_id"), Instance.sop_uid == bindparam("p_sop_uid"))
)
_SERIES_AND_EXISTING = (
    select(Series.id, Series.study_fk, Study.study_uid, _EXISTING.scalar_subquery())
    .join(Study, Series.study_fk == Study.id)
    .where(Series.site_id == bindparam("p_site_id"), Series.series_uid == bindparam("p_series_uid"))
)
_INSERT_INSTANCE = insert(Instance)
_BUMP_SERIES = (
    update(Series).where(Series.id == bindparam("p_series_id")).values(num_instances=Series.num_instances + 1)
)
_BUMP_STUDY = (
    update(Study).where(Study.id == bindparam("p_study_id")).values(num_instances=Study.num_instances + 1)
)


class _Compiled:
    """A Core statement compiled once per dialect for a DBAPI cursor: its SQL and its parameters' order
    (positional paramstyles, as sqlite3's) or None (named ones, as psycopg's)."""

    def __init__(self, stmt: ClauseElement, dialect: Dialect, keys: list[str] | None = None) -> None:
        compiled = stmt.compile(dialect=dialect, column_keys=keys)
        self.sql = compiled.string
        order = getattr(compiled, "positiontup", None)  # SQLCompiler's: the bind names in positional order
        self.order = tuple(order) if order else None
        # Values the statement carries itself (the 1 of ``num_instances + 1``); bindparam() ones come per call.
        binds = getattr(compiled, "binds", {})
        self.fixed = {name: value for name, value in compiled.params.items()
                      if value is not None and name in binds and not binds[name].required}

    def params(self, values: dict[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        if self.fixed:
            values = {**self.fixed, **values}
        return values if self.order is None else tuple(values[k] for k in self.order)


_INSTANCE_COLUMNS = ["site_id", "series_fk", "sop_uid", "sop_class_uid", "instance_number", "transfer_syntax_uid",
                     "rows", "columns", "number_of_frames", "blob_key", "size", "metadata_json", "frames_json",
                     "source_ae"]
_COMPILED: dict[str, tuple[_Compiled, _Compiled, _Compiled, _Compiled]] = {}


def _compiled(dialect: Dialect) -> tuple[_Compiled, _Compiled, _Compiled, _Compiled]:
    found = _COMPILED.get(dialect.name)
    if found is None:
        found = _COMPILED[dialect.name] = (
            _Compiled(_SERIES_AND_EXISTING, dialect), _Compiled(_INSERT_INSTANCE, dialect, _INSTANCE_COLUMNS),
            _Compiled(_BUMP_SERIES, dialect), _Compiled(_BUMP_STUDY, dialect))
    return found


def _index_common(cur: Any, dialect: Dialect, site_id: int, obj: ParsedObject, key: str, size: int,
                  source: str) -> StoreResult | None:
    """The common case on the bare driver: another instance of a series already indexed, new UID. Its four
    statements are those of :func:`_index`; None (nothing written) when the case is another one."""
    series_and_existing, insert_instance, bump_series, bump_study = _compiled(dialect)
    cur.execute(series_and_existing.sql, series_and_existing.params(
        {"p_site_id": site_id, "p_sop_uid": obj.sop_instance_uid, "p_series_uid": obj.series_uid}))
    row = cur.fetchone()
    if row is None or row[3] is not None or row[2] != obj.study_uid:
        return None  # a new series, a UID stored already, or a series of another study: the general path
    series_id, study_id = row[0], row[1]
    cur.execute(insert_instance.sql, insert_instance.params(_instance_values(site_id, series_id, obj, key, size,
                                                                             source)))
    cur.execute(bump_series.sql, bump_series.params({"p_series_id": series_id}))
    cur.execute(bump_study.sql, bump_study.params({"p_study_id": study_id}))
    return _result(obj, Outcome.STORED)


def _instance_values(site_id: int, series_id: int, obj: ParsedObject, key: str, size: int,
                     source: str) -> dict[str, Any]:
    return {
        "site_id": site_id, "series_fk": series_id, "sop_uid": obj.sop_instance_uid,
        "sop_class_uid": obj.sop_class_uid, "instance_number": obj.instance_number,
        "transfer_syntax_uid": obj.transfer_syntax_uid, "rows": obj.rows, "columns": obj.columns,
        "number_of_frames": obj.number_of_frames, "blob_key": key, "size": size,
        "metadata_json": json.dumps(obj.metadata, separators=(",", ":")),
        "frames_json": json.dumps(obj.frames, separators=(",", ":")) if obj.frames is not None else "",
        "source_ae": source[:64],
    }


def _index(conn: Connection, site_id: int, obj: ParsedObject, key: str, size: int, source: str) -> StoreResult:
    # Common case first: the series exists already (one indexed lookup gives series, study and duplicate).
    row = conn.execute(_SERIES_AND_EXISTING, {
        "p_site_id": site_id, "p_sop_uid": obj.sop_instance_uid, "p_series_uid": obj.series_uid}).first()
    if row is None:
        existing = conn.execute(_EXISTING, {"p_site_id": site_id, "p_sop_uid": obj.sop_instance_uid}).scalar()
    else:
        existing = row[3]
    if existing is not None:
        if existing == key:
            return _result(obj, Outcome.DUPLICATE)
        conn.execute(insert(StoreConflict).values(
            site_id=site_id, sop_uid=obj.sop_instance_uid, kept_blob_key=existing, received_sha256=key,
            received_size=size, source=source[:64]))
        return _result(obj, Outcome.CONFLICT, DUPLICATE_SOP_INSTANCE,
                       "an instance with this SOP Instance UID and different content is already stored; "
                       "the first copy was kept")

    ds = obj.dataset
    new_series = row is None
    if row is None:
        series_id, study_id = _new_series(conn, site_id, obj)
    else:
        series_id, study_id, stored_study_uid = row[0], row[1], row[2]
        if stored_study_uid != obj.study_uid:
            return _result(obj, Outcome.REJECTED, DATASET_MISMATCH,
                           f"series {obj.series_uid} already belongs to another study")
    conn.execute(_INSERT_INSTANCE, _instance_values(site_id, series_id, obj, key, size, source))
    conn.execute(_BUMP_SERIES, {"p_series_id": series_id})
    if not new_series:
        conn.execute(_BUMP_STUDY, {"p_study_id": study_id})
        return _result(obj, Outcome.STORED)
    values: dict[str, object] = {"num_instances": Study.num_instances + 1, "num_series": Study.num_series + 1}
    # Row lock (PostgreSQL; SQLite holds the database write lock already): two new series of one study
    # arriving together must not lose a modality.
    current = conn.execute(
        select(Study.modalities).where(Study.id == study_id).with_for_update()).scalar_one()
    modalities = [m for m in current.split("\\") if m]
    modality = _s(ds, "Modality", 16)
    if modality and modality not in modalities:
        values["modalities"] = "\\".join(sorted([*modalities, modality]))
    conn.execute(update(Study).where(Study.id == study_id).values(**values))
    return _result(obj, Outcome.STORED)


def _new_series(conn: Connection, site_id: int, obj: ParsedObject) -> tuple[int, int]:
    """Create the series (and its study and patient when new); return (series id, study id)."""
    ds = obj.dataset
    study_id = conn.execute(
        select(Study.id).where(Study.site_id == site_id, Study.study_uid == obj.study_uid)
    ).scalar_one_or_none()
    if study_id is None:
        patient_id = _patient(conn, site_id, ds)
        study_id = _insert(conn, insert(Study).values(
            site_id=site_id, patient_fk=patient_id, study_uid=obj.study_uid,
            study_date=_da(ds, "StudyDate"), study_time=_tm(ds, "StudyTime"),
            accession_number=_s(ds, "AccessionNumber", 16), study_id=_s(ds, "StudyID", 16),
            description=_s(ds, "StudyDescription", 64), referring_physician=_s(ds, "ReferringPhysicianName", 324),
            attributes_json=level_json(obj.metadata, STUDY_TAGS), num_series=0, num_instances=0, modalities="",
        ))
    series_id = _insert(conn, insert(Series).values(
        site_id=site_id, study_fk=study_id, series_uid=obj.series_uid, modality=_s(ds, "Modality", 16),
        series_number=_n(ds, "SeriesNumber"), description=_s(ds, "SeriesDescription", 64),
        body_part=_s(ds, "BodyPartExamined", 16),
        pps_start_date=_da(ds, "PerformedProcedureStepStartDate"),
        pps_start_time=_tm(ds, "PerformedProcedureStepStartTime"),
        attributes_json=level_json(obj.metadata, SERIES_TAGS), num_instances=0,
    ))
    return series_id, study_id


def _patient(conn: Connection, site_id: int, ds: object) -> int:
    """The patient's row id, the row created when new."""
    pid, issuer = _s(ds, "PatientID", 64), _s(ds, "IssuerOfPatientID", 64)
    patient_id = conn.execute(
        select(Patient.id).where(Patient.site_id == site_id, Patient.patient_id == pid, Patient.issuer == issuer)
    ).scalar_one_or_none()
    if patient_id is None:
        patient_id = _insert(conn, insert(Patient).values(
            site_id=site_id, patient_id=pid, issuer=issuer, patient_name=_s(ds, "PatientName", 324),
            birth_date=_da(ds, "PatientBirthDate"), sex=_s(ds, "PatientSex", 16),
        ))
    return int(patient_id)


def _insert(conn: Connection, stmt: Insert) -> int:
    """Insert one row; its new primary key."""
    key = conn.execute(stmt).inserted_primary_key
    assert key is not None
    return int(key[0])
