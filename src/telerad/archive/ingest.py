"""The one ingest path: C-STORE, STOW-RS and ``telerad import`` all call :func:`store`.

Order of durability (issue #2 §3): the blob is fsync'd and renamed into place, then the index row is
committed, and only then does the caller answer success. A failure never answers success.

A SOP Instance UID stored already: the same bytes are a duplicate (success, nothing new). Other bytes are
compared with the kept file's (:mod:`telerad.archive.sameness`): the same Data Set in another file (other File
Meta) or another lossless native transfer syntax is a duplicate too; anything else is a conflict, recorded,
the first copy kept, the sender told. The received file of a duplicate found that way stays in the store
unindexed, an orphan for ``telerad check --remove-orphans`` (:mod:`telerad.storage.collect`).

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
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import ClauseElement, Dialect, bindparam, insert, select, update
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
from telerad.archive.sameness import same_instance
from telerad.context import Context
from telerad.db.compiled import Compiled, PerDialect
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
        # Encoded now, while the blob's write runs, rather than in the index transaction: the database's write
        # lock, which every association's transaction waits for, is then held for the statements only.
        try:
            encoded = _encoded(obj)
        except (TypeError, ValueError) as exc:  # as any other failure to index it: refused, never raised
            log.exception("index failure")
            return _result(obj, Outcome.REJECTED, PROCESSING_FAILURE, f"index failure: {exc}")
        try:
            placed = ctx.blobs.place(staging.result())
        except OSError as exc:
            log.exception("blob write failed")
            return _result(obj, Outcome.REJECTED, OUT_OF_RESOURCES, f"storage failure: {exc.strerror or exc}")
    finally:
        if placed is None:  # rejected, failed or interrupted: nothing may stay behind in the store
            _discard(ctx, staging)
    key, size = placed
    indexed = _write_index(ctx, site_id, obj, key, size, source, encoded, record_conflict=False)
    if isinstance(indexed, StoreResult):
        return _kept(ctx, indexed, key, data) if indexed.outcome is Outcome.STORED else indexed
    # The UID is stored with other bytes. Told apart outside the write lock, as it reads the kept file.
    if _same_instance(ctx, indexed.key, data):
        log.info("%s from %s: the instance stored already, in another file or transfer syntax",
                 obj.sop_instance_uid, source)
        return _result(obj, Outcome.DUPLICATE)
    recorded = _write_index(ctx, site_id, obj, key, size, source, encoded, record_conflict=True)
    return recorded if isinstance(recorded, StoreResult) else _conflict(obj)  # the latter never comes back


def _kept(ctx: Context, result: StoreResult, key: str, data: bytes) -> StoreResult:
    """The blob of a new row still there, or written again, before the sender hears of success. It can only
    have gone when the store found it stored already (written by an earlier store, unindexed: an orphan until
    this commit) and a collection (:mod:`telerad.storage.collect`) moved it aside between the claim's path
    lookup and its timestamp; one ``access(2)``, ~1 us, rules that out for every new row."""
    if ctx.blobs.exists(key):
        return result
    log.warning("blob %s went while %s was indexed; written again", key, result.sop_instance_uid)
    try:
        ctx.blobs.put(data)
    except OSError as exc:
        log.exception("blob write failed")
        return replace(result, outcome=Outcome.REJECTED, status=OUT_OF_RESOURCES,
                       reason=f"storage failure: {exc.strerror or exc}")
    return result


@dataclass(frozen=True)
class _Kept:
    """The index holds the object's SOP Instance UID with another blob: ``key``, the first copy's."""

    key: str


def _write_index(ctx: Context, site_id: int, obj: ParsedObject, key: str, size: int, source: str,
                 encoded: tuple[str, str], record_conflict: bool) -> StoreResult | _Kept:
    races: tuple[type[Exception], ...] = (IntegrityError, OperationalError, *ctx.db.dbapi_errors)
    for attempt in range(5):
        try:
            with ctx.db.dbapi_write() as cur:
                return _index(cur, ctx.db.engine.dialect, site_id, obj, key, size, source, encoded,
                              record_conflict)
        except races as exc:
            # A concurrent association created the same patient/study/series first: retry sees it.
            log.info("index race on %s (attempt %d): %s", obj.sop_instance_uid, attempt + 1, exc)
        except Exception as exc:
            log.exception("index failure")
            return _result(obj, Outcome.REJECTED, PROCESSING_FAILURE, f"index failure: {exc}")
    return _result(obj, Outcome.REJECTED, OUT_OF_RESOURCES, "database busy, try again")


def _same_instance(ctx: Context, kept_key: str, data: bytes) -> bool:
    """Whether ``data`` is the instance kept under ``kept_key`` (:func:`~telerad.archive.sameness.same_instance`);
    False when the kept file cannot be read, so the sender hears of a conflict rather than of a success."""
    try:
        return same_instance(ctx.blobs.path(kept_key).read_bytes(), data)
    except Exception:  # noqa: BLE001 - the kept file unreadable (or its key, or memory short): a conflict
        log.warning("instance %s not compared with the one received", kept_key, exc_info=True)
        return False


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


def _conflict(obj: ParsedObject) -> StoreResult:
    return _result(obj, Outcome.CONFLICT, DUPLICATE_SOP_INSTANCE,
                   "an instance with this SOP Instance UID and different content is already stored; "
                   "the first copy was kept")


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


# The index statements, built once and compiled once per dialect for the bare driver (sqlite3 or psycopg,
# :mod:`telerad.db.compiled`): SQLAlchemy's execution machinery costs ~0.1 ms a statement, held under the GIL
# every association shares, against ~0.02 ms for the driver. A new series (and its study and patient) takes
# eight statements, and an X-ray study is one or two instances per series, so the first instance of a series
# is as common as the next ones.
_EXISTING = (
    select(Instance.blob_key)
    .where(Instance.site_id == bindparam("p_site_id"), Instance.sop_uid == bindparam("p_sop_uid"))
)
# One lookup gives the series, its study's UID and the blob key of an instance already stored under the UID.
_SERIES_AND_EXISTING = (
    select(Series.id, Series.study_fk, Study.study_uid, _EXISTING.scalar_subquery())
    .join(Study, Series.study_fk == Study.id)
    .where(Series.site_id == bindparam("p_site_id"), Series.series_uid == bindparam("p_series_uid"))
)
_STUDY = select(Study.id).where(Study.site_id == bindparam("p_site_id"), Study.study_uid == bindparam("p_study_uid"))
_PATIENT = select(Patient.id).where(Patient.site_id == bindparam("p_site_id"),
                                    Patient.patient_id == bindparam("p_patient_id"),
                                    Patient.issuer == bindparam("p_issuer"))
# Row lock (PostgreSQL; SQLite holds the database write lock already): two new series of one study arriving
# together must not lose a modality.
_STUDY_MODALITIES = select(Study.modalities).where(Study.id == bindparam("p_study_id")).with_for_update()
_BUMP_SERIES = (
    update(Series).where(Series.id == bindparam("p_series_id")).values(num_instances=Series.num_instances + 1)
)
_BUMP_STUDY = (
    update(Study).where(Study.id == bindparam("p_study_id")).values(num_instances=Study.num_instances + 1)
)
_BUMP_STUDY_NEW_SERIES = (
    update(Study).where(Study.id == bindparam("p_study_id"))
    .values(num_instances=Study.num_instances + 1, num_series=Study.num_series + 1,
            modalities=bindparam("p_modalities"))
)
_INSTANCE_COLUMNS = ["site_id", "series_fk", "sop_uid", "sop_class_uid", "instance_number", "transfer_syntax_uid",
                     "rows", "columns", "number_of_frames", "blob_key", "size", "metadata_json", "frames_json",
                     "source_ae"]
_PATIENT_COLUMNS = ["site_id", "patient_id", "issuer", "patient_name", "birth_date", "sex"]
_STUDY_COLUMNS = ["site_id", "patient_fk", "study_uid", "study_date", "study_time", "accession_number", "study_id",
                  "description", "referring_physician", "attributes_json", "num_series", "num_instances",
                  "modalities"]
_SERIES_COLUMNS = ["site_id", "study_fk", "series_uid", "modality", "series_number", "description", "body_part",
                   "pps_start_date", "pps_start_time", "attributes_json", "num_instances"]
_CONFLICT_COLUMNS = ["site_id", "sop_uid", "kept_blob_key", "received_sha256", "received_size", "source"]


class _Statements:
    def __init__(self, dialect: Dialect) -> None:
        def c(stmt: ClauseElement, keys: list[str] | None = None) -> Compiled:
            return Compiled(stmt, dialect, keys)

        self.series_and_existing, self.existing = c(_SERIES_AND_EXISTING), c(_EXISTING)
        self.study, self.patient, self.study_modalities = c(_STUDY), c(_PATIENT), c(_STUDY_MODALITIES)
        self.insert_instance = c(insert(Instance), _INSTANCE_COLUMNS)
        self.insert_patient = c(insert(Patient).returning(Patient.id), _PATIENT_COLUMNS)
        self.insert_study = c(insert(Study).returning(Study.id), _STUDY_COLUMNS)
        self.insert_series = c(insert(Series).returning(Series.id), _SERIES_COLUMNS)
        self.insert_conflict = c(insert(StoreConflict), _CONFLICT_COLUMNS)
        self.bump_series, self.bump_study = c(_BUMP_SERIES), c(_BUMP_STUDY)
        self.bump_study_new_series = c(_BUMP_STUDY_NEW_SERIES)


_statements = PerDialect(_Statements)


def _index(cur: Any, dialect: Dialect, site_id: int, obj: ParsedObject, key: str, size: int,
           source: str, encoded: tuple[str, str], record_conflict: bool = True) -> StoreResult | _Kept:
    """Index one placed blob in the caller's write transaction on the bare driver (``cur``); ``encoded``: the
    object's metadata and frames as JSON (:func:`_encoded`). The UID stored already with another blob: the
    conflict recorded when ``record_conflict``, else nothing written and the kept blob's key returned."""
    q = _statements(dialect)
    # Common case first: the series exists already (one indexed lookup gives series, study and duplicate).
    row = q.series_and_existing.first(cur, {"p_site_id": site_id, "p_sop_uid": obj.sop_instance_uid,
                                            "p_series_uid": obj.series_uid})
    if row is None:
        existing = q.existing.scalar(cur, {"p_site_id": site_id, "p_sop_uid": obj.sop_instance_uid})
    else:
        existing = row[3]
    if existing is not None:
        if existing == key:
            return _result(obj, Outcome.DUPLICATE)
        if not record_conflict:
            return _Kept(existing)
        q.insert_conflict.run(cur, {"site_id": site_id, "sop_uid": obj.sop_instance_uid, "kept_blob_key": existing,
                                    "received_sha256": key, "received_size": size, "source": source[:64]})
        return _conflict(obj)
    if row is None:
        series_id, study_id = _new_series(cur, q, site_id, obj)
    else:
        series_id, study_id, stored_study_uid = row[0], row[1], row[2]
        if stored_study_uid != obj.study_uid:
            return _result(obj, Outcome.REJECTED, DATASET_MISMATCH,
                           f"series {obj.series_uid} already belongs to another study")
    q.insert_instance.run(cur, _instance_values(site_id, series_id, obj, key, size, source, encoded))
    q.bump_series.run(cur, {"p_series_id": series_id})
    if row is not None:
        q.bump_study.run(cur, {"p_study_id": study_id})
        return _result(obj, Outcome.STORED)
    modalities = [m for m in q.study_modalities.scalar(cur, {"p_study_id": study_id}).split("\\") if m]
    modality = _s(obj.dataset, "Modality", 16)
    if modality and modality not in modalities:
        modalities = sorted([*modalities, modality])
    q.bump_study_new_series.run(cur, {"p_study_id": study_id, "p_modalities": "\\".join(modalities)})
    return _result(obj, Outcome.STORED)


def _encoded(obj: ParsedObject) -> tuple[str, str]:
    """The instance row's DICOM JSON metadata and frame index, as stored."""
    return (json.dumps(obj.metadata, separators=(",", ":")),
            json.dumps(obj.frames, separators=(",", ":")) if obj.frames is not None else "")


def _instance_values(site_id: int, series_id: int, obj: ParsedObject, key: str, size: int,
                     source: str, encoded: tuple[str, str]) -> dict[str, Any]:
    return {
        "site_id": site_id, "series_fk": series_id, "sop_uid": obj.sop_instance_uid,
        "sop_class_uid": obj.sop_class_uid, "instance_number": obj.instance_number,
        "transfer_syntax_uid": obj.transfer_syntax_uid, "rows": obj.rows, "columns": obj.columns,
        "number_of_frames": obj.number_of_frames, "blob_key": key, "size": size,
        "metadata_json": encoded[0], "frames_json": encoded[1],
        "source_ae": source[:64],
    }


def _new_series(cur: Any, q: _Statements, site_id: int, obj: ParsedObject) -> tuple[int, int]:
    """Create the series (and its study and patient when new); return (series id, study id)."""
    ds = obj.dataset
    study_id = q.study.scalar(cur, {"p_site_id": site_id, "p_study_uid": obj.study_uid})
    if study_id is None:
        study_id = q.insert_study.scalar(cur, {
            "site_id": site_id, "patient_fk": _patient(cur, q, site_id, ds), "study_uid": obj.study_uid,
            "study_date": _da(ds, "StudyDate"), "study_time": _tm(ds, "StudyTime"),
            "accession_number": _s(ds, "AccessionNumber", 16), "study_id": _s(ds, "StudyID", 16),
            "description": _s(ds, "StudyDescription", 64),
            "referring_physician": _s(ds, "ReferringPhysicianName", 324),
            "attributes_json": level_json(obj.metadata, STUDY_TAGS), "num_series": 0, "num_instances": 0,
            "modalities": "",
        })
    series_id = q.insert_series.scalar(cur, {
        "site_id": site_id, "study_fk": study_id, "series_uid": obj.series_uid, "modality": _s(ds, "Modality", 16),
        "series_number": _n(ds, "SeriesNumber"), "description": _s(ds, "SeriesDescription", 64),
        "body_part": _s(ds, "BodyPartExamined", 16),
        "pps_start_date": _da(ds, "PerformedProcedureStepStartDate"),
        "pps_start_time": _tm(ds, "PerformedProcedureStepStartTime"),
        "attributes_json": level_json(obj.metadata, SERIES_TAGS), "num_instances": 0,
    })
    return int(series_id), int(study_id)


def _patient(cur: Any, q: _Statements, site_id: int, ds: object) -> int:
    """The patient's row id, the row created when new."""
    pid, issuer = _s(ds, "PatientID", 64), _s(ds, "IssuerOfPatientID", 64)
    patient_id = q.patient.scalar(cur, {"p_site_id": site_id, "p_patient_id": pid, "p_issuer": issuer})
    if patient_id is None:
        patient_id = q.insert_patient.scalar(cur, {
            "site_id": site_id, "patient_id": pid, "issuer": issuer, "patient_name": _s(ds, "PatientName", 324),
            "birth_date": _da(ds, "PatientBirthDate"), "sex": _s(ds, "PatientSex", 16),
        })
    return int(patient_id)
