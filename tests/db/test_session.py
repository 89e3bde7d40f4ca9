"""Database plumbing: WAL + durability pragmas on SQLite, planner statistics on both backends."""

from __future__ import annotations

from pydicom.uid import generate_uid
from sqlalchemy import text

from telerad.archive.demo import ct_series
from telerad.archive.ingest import store


def test_sqlite_runs_in_wal_with_full_sync(ctx):
    if ctx.db.engine.dialect.name != "sqlite":
        assert ctx.db.engine.dialect.name == "postgresql"
        return
    with ctx.db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_analyze_records_statistics(ctx, site):
    for raw in ct_series(("Stat^Pat", "S1", "19700101", "F"), generate_uid(), "A", 2, 16):
        assert store(ctx, site.id, raw).ok
    ctx.db.analyze()
    with ctx.db.engine.connect() as conn:
        if ctx.db.engine.dialect.name == "sqlite":
            tables = {r[0] for r in conn.execute(text("SELECT tbl FROM sqlite_stat1"))}
        else:
            tables = {r[0] for r in conn.execute(text(
                "SELECT relname FROM pg_stat_user_tables WHERE last_analyze IS NOT NULL"))}
    assert {"patients", "studies", "instances"} <= tables
