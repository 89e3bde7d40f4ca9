"""Attribute matching for QIDO-RS and C-FIND: one implementation for both transports.

Matching follows PS3.4 C.2.2.2: single value, list of UIDs (C.2.2.2.2), universal (empty value or "*",
C.2.2.2.3), wild card ``*``/``?`` (C.2.2.2.4), date/time range (C.2.2.2.5). Person names match
case-insensitively (PS3.4 C.2.2.2.1 leaves PN case sensitivity to the SCP; dcm4chee and Orthanc do the same).
Queries are relational (PS3.4 C.4.1.2.2): any supported key at or above the queried level may be matched.
Every query is scoped to one site: the caller passes the site id it resolved once at the edge.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, exists, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, aliased

from telerad.context import Context
from telerad.db.compiled import CompiledCache
from telerad.db.models import Instance, Patient, Series, Study

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
_RANK = {lvl: i for i, lvl in enumerate(LEVELS)}


class QueryError(ValueError):
    """A key or value that cannot be matched (maps to HTTP 400 / C-FIND 0xA900)."""


@dataclass(frozen=True)
class Attr:
    tag: str
    vr: str
    level: str
    column: Any  # InstrumentedAttribute, or None for computed return keys
    matchable: bool = True


def _a(tag: str, vr: str, level: str, column: Any, matchable: bool = True) -> Attr:
    return Attr(tag, vr, level, column, matchable)


ATTRIBUTES: dict[str, Attr] = {a.tag: a for a in [
    _a("00100010", "PN", "PATIENT", Patient.patient_name),
    _a("00100020", "LO", "PATIENT", Patient.patient_id),
    _a("00100021", "LO", "PATIENT", Patient.issuer),
    _a("00100030", "DA", "PATIENT", Patient.birth_date),
    _a("00100040", "CS", "PATIENT", Patient.sex),
    _a("00201200", "IS", "PATIENT", None, False),  # Number of Patient Related Studies
    _a("00201202", "IS", "PATIENT", None, False),  # ... Series
    _a("00201204", "IS", "PATIENT", None, False),  # ... Instances
    _a("0020000D", "UI", "STUDY", Study.study_uid),
    _a("00080020", "DA", "STUDY", Study.study_date),
    _a("00080030", "TM", "STUDY", Study.study_time),
    _a("00080050", "SH", "STUDY", Study.accession_number),
    _a("00200010", "SH", "STUDY", Study.study_id),
    _a("00081030", "LO", "STUDY", Study.description),
    _a("00080090", "PN", "STUDY", Study.referring_physician),
    _a("00080061", "CS", "STUDY", Study.modalities),  # Modalities in Study: matched against its series
    _a("00201206", "IS", "STUDY", Study.num_series, False),
    _a("00201208", "IS", "STUDY", Study.num_instances, False),
    _a("0020000E", "UI", "SERIES", Series.series_uid),
    _a("00080060", "CS", "SERIES", Series.modality),
    _a("00200011", "IS", "SERIES", Series.series_number),
    _a("0008103E", "LO", "SERIES", Series.description),
    _a("00180015", "CS", "SERIES", Series.body_part),
    _a("00400244", "DA", "SERIES", Series.pps_start_date),
    _a("00400245", "TM", "SERIES", Series.pps_start_time),
    _a("00201209", "IS", "SERIES", Series.num_instances, False),
    _a("00080018", "UI", "IMAGE", Instance.sop_uid),
    _a("00080016", "UI", "IMAGE", Instance.sop_class_uid),
    _a("00200013", "IS", "IMAGE", Instance.instance_number),
    _a("00280010", "US", "IMAGE", Instance.rows),
    _a("00280011", "US", "IMAGE", Instance.columns),
    _a("00280008", "IS", "IMAGE", Instance.number_of_frames),
    _a("00083002", "UI", "IMAGE", Instance.transfer_syntax_uid),  # Available Transfer Syntax UID
]}


def supported_keys(level: str) -> set[str]:
    """Tags that can be matched at ``level`` (its own and its parents' attributes)."""
    rank = _level_rank(level)
    return {t for t, a in ATTRIBUTES.items() if a.matchable and _RANK[a.level] <= rank}


def _level_rank(level: str) -> int:
    try:
        return _RANK[level.upper()]
    except KeyError:
        raise QueryError(f"unknown query level {level!r}") from None


def search(
    ctx: Context,
    site_id: int,
    level: str,
    keys: dict[str, str],
    *,
    limit: int | None = None,
    offset: int = 0,
    include_instance_metadata: bool = False,
) -> list[dict[str, Any]]:
    """Find the entities at ``level`` of one site whose attributes match ``keys``; DICOM JSON per match.

    Keys the archive does not index are ignored (treated as universal matching); adapters that must tell
    the caller use :func:`supported_keys`. With ``include_instance_metadata`` an IMAGE-level result also
    carries the instance's stored attributes (QIDO ``includefield=all``).
    """
    level = level.upper()
    if limit is not None and limit < 0 or offset < 0:
        raise QueryError("limit and offset must not be negative")
    specs = _specs(level, keys)
    if level == "PATIENT":
        q = _base(level, site_id).where(*_build_all(specs)).order_by(Patient.id).offset(offset)
        if limit is not None:
            q = q.limit(limit)
        with ctx.db.session() as s:
            return [_patient_json(row) for row in s.execute(q).all()]
    plan = _plan(level, include_instance_metadata)
    params: dict[str, Any] = {f"q{i}": v for i, v in enumerate(v for spec in specs for v in spec.values)}
    params.update(site=site_id, offset=offset, limit=limit)
    shape, stmt = _statement(level, include_instance_metadata, specs, limit is not None)
    compiled = _COMPILED.get(shape, stmt, ctx.db.engine.dialect)
    if compiled is not None:  # rows of plain columns on the bare driver (:mod:`telerad.db.compiled`)
        with ctx.db.dbapi_read() as cur:
            rows = compiled.all(cur, params)
    else:  # a list of UIDs or values (an expanding IN): SQLAlchemy renders it per call
        with ctx.db.engine.connect() as conn:
            rows = list(conn.execute(stmt, params).all())
    return [plan.render(row) for row in rows]


_STATEMENTS: dict[tuple[Any, ...], Any] = {}
_STATEMENTS_MAX = 512  # query shapes kept; a client inventing more only costs the building again
_COMPILED = CompiledCache(_STATEMENTS_MAX)


def _statement(level: str, with_metadata: bool, specs: list[_Spec], limited: bool) -> tuple[Any, Any]:
    """The shape of a query (level, columns, which keys with which kind of matching) and its select, built once:
    its values are bind parameters (``site``, ``offset``, ``limit``, ``q0``, ``q1``... in the order of
    ``specs``' values). Building a select (its conditions, joins, cache key) was ~half of a QIDO's work in
    the server, the SQL statement itself ~6 %."""
    shape = (level, with_metadata, limited, tuple((spec.attr.tag, spec.shape) for spec in specs))
    q = _STATEMENTS.get(shape)
    if q is None:
        q = (_joined(level, select(*_plan(level, with_metadata).columns))
             .where(_ENTITY[level].site_id == bindparam("site"), *_build_all(specs))
             .order_by(_ENTITY[level].id).offset(bindparam("offset")))
        if limited:
            q = q.limit(bindparam("limit"))
        if len(_STATEMENTS) >= _STATEMENTS_MAX:
            _STATEMENTS.clear()
        _STATEMENTS[shape] = q
    return shape, q


_ENTITY: dict[str, Any] = {"PATIENT": Patient, "STUDY": Study, "SERIES": Series, "IMAGE": Instance}


def find_stored(ctx: Context, site_id: int, keys: dict[str, str]) -> list[tuple[str, str, str, str, str]]:
    """(SOP Instance UID, SOP Class UID, Transfer Syntax UID, blob key, Study Instance UID) of the instances
    matching ``keys``, in archive order: what C-GET and C-MOVE need, without the DICOM JSON of :func:`search`."""
    q = _joined("IMAGE", select(Instance.sop_uid, Instance.sop_class_uid, Instance.transfer_syntax_uid,
                                Instance.blob_key, Study.study_uid))
    q = q.where(Instance.site_id == site_id, *_build_all(_specs("IMAGE", keys))).order_by(Instance.id)
    with ctx.db.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(q)]  # type: ignore[misc]


@dataclass(frozen=True)
class _Spec:
    """One matching key, parsed: the kind of matching (``shape``, hashable) and its values in the order the
    condition binds them."""

    attr: Attr
    shape: tuple[Any, ...]
    values: tuple[Any, ...]


def _specs(level: str, keys: dict[str, str]) -> list[_Spec]:
    rank = _level_rank(level)
    specs: list[_Spec] = []
    for tag, value in keys.items():
        attr = ATTRIBUTES.get(tag.upper())
        if attr is None or not attr.matchable or _RANK[attr.level] > rank:
            continue
        spec = _spec(attr, value)
        if spec is not None:
            specs.append(spec)
    return specs


def _build_all(specs: list[_Spec]) -> list[ColumnElement[bool]]:
    """The conditions of ``specs``, their values bound as ``q0``, ``q1``... in order (each parameter also
    carries its value, so the statement runs as it is)."""
    counter = iter(range(1 << 30))

    def bind(value: Any, expanding: bool = False) -> Any:
        return bindparam(f"q{next(counter)}", value, expanding=expanding)

    return [_build(spec, bind) for spec in specs]


def _base(level: str, site_id: int) -> Any:
    """The query of ``level`` and its parents, selecting ORM entities (the patient level's counts; tests)."""
    if level == "PATIENT":
        n_studies = select(func.count(Study.id)).where(Study.patient_fk == Patient.id).scalar_subquery()
        n_series = select(func.coalesce(func.sum(Study.num_series), 0)).where(
            Study.patient_fk == Patient.id).scalar_subquery()
        n_inst = select(func.coalesce(func.sum(Study.num_instances), 0)).where(
            Study.patient_fk == Patient.id).scalar_subquery()
        return select(Patient, n_studies, n_series, n_inst).where(Patient.site_id == site_id)
    entities = [_ENTITY[lv] for lv in reversed(LEVELS[1:_RANK[level] + 1])] + [Patient]
    return _joined(level, select(*entities)).where(_ENTITY[level].site_id == site_id)


def _joined(level: str, q: Any) -> Any:
    """``q`` joined from ``level`` up to the patient."""
    if level == "IMAGE":
        q = q.select_from(Instance).join(Series, Instance.series_fk == Series.id)
    if level in ("IMAGE", "SERIES"):
        q = (q if level == "IMAGE" else q.select_from(Series)).join(Study, Series.study_fk == Study.id)
    return (q if level != "STUDY" else q.select_from(Study)).join(Patient, Study.patient_fk == Patient.id)


# --- matching -----------------------------------------------------------------------------------------

def _match(attr: Attr, raw: str) -> ColumnElement[bool] | None:
    """The condition matching ``raw`` on ``attr`` (None: universal matching)."""
    spec = _spec(attr, raw)
    return None if spec is None else _build_all([spec])[0]


def _spec(attr: Attr, raw: str) -> _Spec | None:
    """Parse and check one key's value (no SQL yet): which matching of PS3.4 C.2.2.2 applies, with what."""
    value = (raw or "").strip()
    if value in ("", "*"):
        return None  # universal matching
    if attr.tag == "00080061":  # Modalities in Study: any of the study's series has one of them
        kinds = [_string_kind(m.strip(), False) for m in value.split("\\") if m.strip()]
        return _Spec(attr, ("modalities", tuple(k for k, _ in kinds)), tuple(v for _, v in kinds))
    if attr.vr == "UI":
        uids = [u.strip() for u in value.split("\\") if u.strip()]
        if not uids:
            raise QueryError(f"({attr.tag[:4]},{attr.tag[4:]}) has an empty list of UIDs")
        return _Spec(attr, ("in",), (uids,)) if len(uids) > 1 else _Spec(attr, ("=",), (uids[0],))
    if attr.vr in ("DA", "TM", "DT"):
        return _range_spec(attr, value)
    if attr.vr in ("IS", "US"):
        try:
            nums = [int(v) for v in value.split("\\")]
        except ValueError:
            raise QueryError(f"({attr.tag[:4]},{attr.tag[4:]}) expects an integer, got {value!r}") from None
        low, high = (0, 65535) if attr.vr == "US" else (-(2**31), 2**31 - 1)  # PS3.5 6.2 value ranges
        if any(not low <= n <= high for n in nums):
            raise QueryError(f"({attr.tag[:4]},{attr.tag[4:]}) {attr.vr} values lie in {low}..{high}, "
                             f"got {value[:40]!r}")
        return _Spec(attr, ("in",), (nums,))
    pn = attr.vr == "PN"
    kinds = [_string_kind(v, pn) for v in value.split("\\")]
    return _Spec(attr, ("strings", pn, tuple(k for k, _ in kinds)), tuple(v for _, v in kinds))


def _string_kind(value: str, case_insensitive: bool) -> tuple[str, str]:
    """("like", SQL pattern) for a value with wild cards (PS3.4 C.2.2.2.4), else ("=", value)."""
    v = value.upper() if case_insensitive else value
    if "*" in v or "?" in v:
        return "like", (v.replace("!", "!!").replace("%", "!%").replace("_", "!_").replace("*", "%")
                        .replace("?", "_"))
    return "=", v


def _range_spec(attr: Attr, value: str) -> _Spec:
    norm: Callable[[str, bool], str] = _norm_date if attr.vr == "DA" else _norm_time
    if "-" not in value:
        if attr.vr == "DA":
            return _Spec(attr, ("=",), (norm(value, False),))
        lo = hi = value  # a single time covers its omitted components (e.g. "0900" is 09:00:00-09:00:59.9)
    else:
        lo, _, hi = value.partition("-")
    if not lo and not hi:
        raise QueryError(f"empty range {value!r}")
    bounds = ((norm(lo, False),) if lo else ()) + ((norm(hi, True),) if hi else ())
    return _Spec(attr, ("range", bool(lo), bool(hi)), bounds)


def _build(spec: _Spec, bind: Callable[..., Any]) -> ColumnElement[bool]:
    """The SQL condition of a parsed key; every value goes through ``bind``, in ``spec.values`` order."""
    col, kind, values = spec.attr.column, spec.shape[0], spec.values
    if kind == "modalities":
        # An alias: at the series and instance levels Series is in the outer query too, and the subquery must
        # look at all the study's series, not correlate to the outer row's own.
        other = aliased(Series)
        sub = select(other.id).where(other.study_fk == Study.id).correlate(Study)
        return exists(sub.where(or_(*[_compare(other.modality, k, bind(v), False)
                                      for k, v in zip(spec.shape[1], values, strict=True)])))
    if kind == "=":
        return col == bind(values[0])  # type: ignore[no-any-return]
    if kind == "in":
        return col.in_(bind(values[0], expanding=True))  # type: ignore[no-any-return]
    if kind == "range":
        bounds = iter(values)
        conds = []
        if spec.shape[1]:
            conds.append(col >= bind(next(bounds)))
        if spec.shape[2]:
            conds.append(col <= bind(next(bounds)))
        return and_(*conds, col != "")
    pn = spec.shape[1]
    conds = [_compare(col, k, bind(v), pn) for k, v in zip(spec.shape[2], values, strict=True)]
    return or_(*conds) if len(conds) > 1 else conds[0]


def _compare(col: InstrumentedAttribute[Any] | Any, kind: str, value: Any, case_insensitive: bool
             ) -> ColumnElement[bool]:
    target: Any = func.upper(col) if case_insensitive else col
    if kind == "like":
        return target.like(value, escape="!")  # type: ignore[no-any-return]
    return target == value  # type: ignore[no-any-return]


def _norm_date(v: str, _upper: bool) -> str:
    v = v.strip().replace(".", "")  # ACR-NEMA style dates 2020.01.31
    if len(v) != 8 or not v.isdigit():
        raise QueryError(f"invalid date {v!r}, expected YYYYMMDD (PS3.5 DA)")
    return v


def _norm_time(v: str, upper: bool) -> str:
    v = v.strip().replace(":", "")
    digits, _, frac = v.partition(".")
    if not digits.isdigit() or len(digits) not in (2, 4, 6) or (frac and not frac.isdigit()):
        raise QueryError(f"invalid time {v!r}, expected HHMMSS.FFFFFF (PS3.5 TM)")
    if upper:
        return digits.ljust(6, "9") + "." + frac.ljust(6, "9")
    return digits.ljust(6, "0") + (("." + frac) if frac else "")


# --- results ------------------------------------------------------------------------------------------

def _elem(vr: str, value: Any) -> dict[str, Any]:
    if value is None or value == "":
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": value}]}
    if vr == "CS" and isinstance(value, str) and "\\" in value:
        return {"vr": vr, "Value": value.split("\\")}
    return {"vr": vr, "Value": [value]}


def _patient_json(row: Any) -> dict[str, Any]:
    patient, n_studies, n_series, n_inst = row
    out = {tag: _elem(a.vr, getattr(patient, a.column.key)) for tag, a in ATTRIBUTES.items()
           if a.level == "PATIENT" and a.column is not None}
    out["00201200"] = _elem("IS", int(n_studies))
    out["00201202"] = _elem("IS", int(n_series))
    out["00201204"] = _elem("IS", int(n_inst))
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class _Plan:
    """The columns a STUDY / SERIES / IMAGE query selects, and how a row of them becomes DICOM JSON.

    Each level contributes its stored DICOM JSON (study and series attributes of the first instance; the
    instance's metadata with ``includefield=all``), then its indexed columns, which win over the JSON.
    """

    columns: tuple[Any, ...]
    steps: tuple[tuple[str, str, int], ...]  # ("json", "", index) or (tag, vr, index)

    def render(self, row: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for tag, vr, i in self.steps:
            if tag == "json":
                out.update(json.loads(row[i] or "{}"))
            else:
                out[tag] = _elem(vr, row[i])
        return dict(sorted(out.items()))


_JSON_COLUMN = {"STUDY": Study.attributes_json, "SERIES": Series.attributes_json, "IMAGE": Instance.metadata_json}
_PLANS: dict[tuple[str, bool], _Plan] = {}


def _plan(level: str, with_metadata: bool) -> _Plan:
    plan = _PLANS.get((level, with_metadata))
    if plan is None:
        columns: list[Any] = []
        steps: list[tuple[str, str, int]] = []
        for lv in ("STUDY", "PATIENT", "SERIES", "IMAGE")[:_RANK[level] + 1]:  # the order values are merged in
            if lv in _JSON_COLUMN and (lv != "IMAGE" or with_metadata):
                steps.append(("json", "", len(columns)))
                columns.append(_table_column(_JSON_COLUMN[lv]))
            if lv == "STUDY":
                continue  # its columns come after the patient's, as the study JSON may repeat patient values
            _plan_columns(lv, columns, steps)
            if lv == "PATIENT":
                _plan_columns("STUDY", columns, steps)
        plan = _PLANS[(level, with_metadata)] = _Plan(tuple(columns), tuple(steps))
    return plan


def _plan_columns(level: str, columns: list[Any], steps: list[tuple[str, str, int]]) -> None:
    for tag, attr in ATTRIBUTES.items():
        if attr.level == level and attr.column is not None:
            steps.append((tag, attr.vr, len(columns)))
            columns.append(_table_column(attr.column))


def _table_column(attr: Any) -> Any:
    """The table's own Column behind a mapped attribute. A result of ORM-annotated columns costs SQLAlchemy
    an ``==`` (a new SQL expression) per column and query to match its cached result map; the plain Column
    matches by identity."""
    return attr.class_.__table__.c[attr.key]
