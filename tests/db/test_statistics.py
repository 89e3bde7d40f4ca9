"""Planner statistics on a small SQLite index (telerad.db.statistics): the lookups of one study start from the
study, never from every instance of the site."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.dialects import sqlite

from telerad.archive import query, retrieve
from telerad.archive.demo import ct_series
from telerad.archive.ingest import store
from telerad.db import statistics

SITE_WALKS = ("ix_instances_site_id", "ix_series_site_id", "ix_studies_site_id")


def _plan(conn: Any, stmt: Any, params: dict[str, Any]) -> str:
    compiled = stmt.compile(dialect=sqlite.dialect())
    values = compiled.construct_params(params)
    rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + str(compiled),
                                tuple(values[k] for k in compiled.positiontup)).all()
    return " | ".join(str(r[-1]) for r in rows)


def _study_lookups(site_id: int, study: str, series: str) -> dict[str, tuple[Any, dict[str, Any]]]:
    """The statements of the lookups scoped to one study or series, as the archive runs them."""
    out: dict[str, tuple[Any, dict[str, Any]]] = {}
    for columns in ("metadata", "instances", "blobs"):
        for by_series in (False, True):
            stmt = retrieve._scoped(select(*retrieve._COLUMNS[columns]), by_series, False)
            out[f"retrieve {columns}{' of a series' if by_series else ''}"] = (
                stmt, {"site": site_id, "study": study, "series": series})
    for level, keys in (("SERIES", {"0020000D": study}), ("IMAGE", {"0020000D": study}),
                        ("IMAGE", {"0020000D": study, "0020000E": series})):
        specs = query._specs(level, keys)
        _, stmt = query._statement(level, False, specs, True)
        params: dict[str, Any] = {"site": site_id, "offset": 0, "limit": 100}
        params.update({f"q{i}": v for i, v in enumerate(v for spec in specs for v in spec.values)})
        out[f"QIDO {level} {sorted(keys)}"] = (stmt, params)
    stored = query._joined("IMAGE", select(query.Instance.sop_uid)).where(
        query.Instance.site_id == site_id, *query._build_all(query._specs("IMAGE", {"0020000D": study})))
    out["C-GET / C-MOVE lookup"] = (stored, {})
    return out


def _store_study(ctx: Any, site_id: int, pid: str, n: int) -> tuple[str, str]:
    study = generate_uid()
    series = ""
    for raw in ct_series(("Stat^Pat", pid, "19700101", "F"), study, "A" + pid, n, 16):
        result = store(ctx, site_id, raw)
        assert result.ok
    with ctx.db.engine.connect() as conn:
        series = conn.exec_driver_sql(
            "SELECT series.series_uid FROM series JOIN studies ON series.study_fk = studies.id "
            "WHERE studies.study_uid = ?", (study,)).scalar_one()
    return study, series


def test_a_small_index_plans_study_lookups_from_the_study(ctx, site):
    if ctx.db.engine.dialect.name != "sqlite":  # PostgreSQL keeps its own statistics (autovacuum)
        assert ctx.db.engine.dialect.name == "postgresql"
        return
    study, series = _store_study(ctx, site.id, "S1", 3)
    _store_study(ctx, site.id, "S2", 2)
    with ctx.db.engine.connect() as conn:
        unseeded = {name: _plan(conn, stmt, p) for name, (stmt, p) in _study_lookups(site.id, study, series).items()}
    ctx.db.analyze()  # as at server start and as the index grows
    with ctx.db.engine.connect() as conn:
        stat = dict(conn.exec_driver_sql("SELECT idx, stat FROM sqlite_stat1 WHERE tbl = 'instances'").all())
        seeded = {name: _plan(conn, stmt, p) for name, (stmt, p) in _study_lookups(site.id, study, series).items()}
    assert stat["ix_instances_series_fk"] == "40000000 100"  # the archive's shape, not the 5 rows stored
    # Before: with no figures SQLite walks the site for at least the study's instances (what was measured).
    assert any("ix_instances_site_id" in plan for plan in unseeded.values()), unseeded
    for name, plan in seeded.items():
        assert not any(walk in plan for walk in SITE_WALKS), (name, plan)
        first = plan.split(" | ")[0]
        assert "study_uid=?" in first or "series_uid=?" in first, (name, plan)  # from the study or series UID
        if "instances" in plan:
            assert "instances USING INDEX ix_instances_series_fk" in plan, (name, plan)


def test_measured_figures_stay_once_the_index_is_large(ctx, site, monkeypatch: pytest.MonkeyPatch):
    if ctx.db.engine.dialect.name != "sqlite":
        assert ctx.db.engine.dialect.name == "postgresql"
        return
    monkeypatch.setattr(statistics, "SEED_BELOW_INSTANCES", 4)
    _store_study(ctx, site.id, "S1", 3)
    ctx.db.analyze()
    with ctx.db.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT stat FROM sqlite_stat1 WHERE idx = 'ix_instances_series_fk'"
                                    ).scalar_one().startswith("40000000 ")
    _store_study(ctx, site.id, "S2", 1)  # 4 instances: as large as this test's threshold
    ctx.db.analyze()
    with ctx.db.engine.connect() as conn:
        figures = dict(conn.exec_driver_sql("SELECT idx, stat FROM sqlite_stat1 WHERE tbl = 'instances'").all())
    assert figures["ix_instances_series_fk"] == "4 2"  # measured: 4 rows, 2 per series
    assert figures["ix_instances_sop_uid"] == "4 1"


def test_every_index_of_the_archive_gets_figures(ctx):
    """A new index (a migration) gets its figures from the shape as well, by its columns."""
    if ctx.db.engine.dialect.name != "sqlite":
        assert ctx.db.engine.dialect.name == "postgresql"
        return
    with ctx.db.engine.connect() as conn:
        rows = statistics.shape_rows(conn)
        indexes = {(t, r[1]) for t in statistics.ARCHIVE_SHAPE
                   for r in conn.exec_driver_sql(f'PRAGMA index_list("{t}")').all()}
    assert {(t, i) for t, i, _ in rows} == indexes
    by_index = {i: s for _, i, s in rows}
    assert by_index["ix_studies_site_date"] == "400000 20000 100"  # a prefix: its most selective column
    assert by_index["sqlite_autoindex_instances_1"] == "40000000 2000000 1"  # (site_id, sop_uid)
