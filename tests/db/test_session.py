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


def _study_by_patient_plan(conn, site_id: int) -> str:
    """SQLite's plan for the query QIDO-RS runs for ``studies?PatientID=`` (telerad.archive.query)."""
    from sqlalchemy.dialects import sqlite

    from telerad.archive.query import ATTRIBUTES, Study, _base, _match

    q = _base("STUDY", site_id).where(_match(ATTRIBUTES["00100020"], "P000042")).order_by(Study.id)
    sql = str(q.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
    return " | ".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql).all())


def test_statistics_reach_connections_opened_before_analyze(ctx, site):
    """SQLite reads planner statistics when a connection loads the schema; an ANALYZE on one connection (or in
    another process) does not reload them on the others. Database.analyze() empties the pool, so every
    connection then plans a QIDO by Patient ID from the patient instead of walking the site's studies."""
    if ctx.db.engine.dialect.name != "sqlite":  # PostgreSQL shares statistics between sessions
        assert ctx.db.engine.dialect.name == "postgresql"
        return
    with ctx.db.engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO patients (site_id, patient_id, issuer, patient_name, birth_date, sex) VALUES "
            + ",".join(f"({site.id}, 'P{i:06d}', '', '', '', '')" for i in range(3000)))
        conn.exec_driver_sql(
            "INSERT INTO studies (site_id, patient_fk, study_uid, study_date, study_time, accession_number, "
            "study_id, description, referring_physician, attributes_json, num_series, num_instances, modalities) "
            "SELECT site_id, id, '1.2.' || id, '', '', '', '', '', '', '{}', 0, 0, '' FROM patients")

    def plans() -> list[str]:
        with ctx.db.engine.connect() as a, ctx.db.engine.connect() as b:  # two pooled connections at once
            return [_study_by_patient_plan(a, site.id), _study_by_patient_plan(b, site.id)]

    # No figures, as before any ANALYZE: the connections opened now plan without any.
    with ctx.db.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
        conn.exec_driver_sql("DELETE FROM sqlite_stat1")
    ctx.db.engine.dispose()
    stale = plans()
    ctx.db.analyze()
    fresh = plans()
    assert all("ix_studies_site_id" in p for p in stale), stale  # every study of the site is walked
    assert all(p.startswith("SEARCH patients USING") and "ix_studies_site_id" not in p for p in fresh), fresh


def test_the_event_loop_thread_has_a_pool_of_its_own(ctx):
    """A burst of thread-pool requests holding every shared connection must not stop the event loop."""
    import threading

    from sqlalchemy.exc import TimeoutError as PoolTimeout

    db = ctx.db
    shared = db.engine
    loop_side: dict[str, object] = {}

    def event_loop_thread() -> None:
        db.serve_event_loop()
        loop_side["engine"] = db.engine
        loop_side["on_loop"] = db.on_event_loop()
        with db.engine.connect() as conn:  # while the shared pool is exhausted
            loop_side["answer"] = conn.execute(text("SELECT 1")).scalar()

    held = []
    shared.pool._timeout = 0.2  # type: ignore[attr-defined]  # QueuePool: wait 0.2 s, not 30, when exhausted
    try:
        while len(held) <= 100:  # take every connection the shared pool will give
            try:
                held.append(shared.connect())
            except PoolTimeout:
                break
        t = threading.Thread(target=event_loop_thread)
        t.start()
        t.join(10)
        assert not t.is_alive()
    finally:
        for conn in held:
            conn.close()
    assert len(held) >= 5
    assert loop_side == {"engine": loop_side["engine"], "on_loop": True, "answer": 1}
    assert loop_side["engine"] is not shared
    assert db.engine is shared and not db.on_event_loop()  # other threads keep the shared pool


def test_writers_of_one_process_take_turns_without_sqlite_busy_waits(ctx):
    """On SQLite a second writer thread queues on the process's write lock (woken when the first commits) rather
    than in SQLite's busy handler, which sleeps 1 ms or more between tries; on PostgreSQL writers run together."""
    import threading

    sqlite = ctx.db.engine.dialect.name == "sqlite"
    first_in, release, order = threading.Event(), threading.Event(), []

    def first() -> None:
        with ctx.db.write_connection() as conn:
            conn.execute(text("SELECT 1"))
            first_in.set()
            assert release.wait(10)
            order.append("first commits")

    def second() -> None:
        with ctx.db.session(write=True) as s:
            s.execute(text("SELECT 1"))
            order.append("second writes")

    a = threading.Thread(target=first)
    a.start()
    assert first_in.wait(10)
    b = threading.Thread(target=second)
    b.start()
    b.join(0.3)
    assert b.is_alive() is sqlite  # SQLite: waiting for its turn; PostgreSQL: done
    if sqlite:  # queued before it took a connection, not inside SQLite's BEGIN IMMEDIATE
        assert ctx.db.engine.pool.checkedout() == 1
    release.set()
    a.join(10)
    b.join(10)
    assert not a.is_alive() and not b.is_alive()
    expected = ["first commits", "second writes"] if sqlite else ["second writes", "first commits"]
    assert order == expected


def test_a_dbapi_write_commits_at_the_end_and_rolls_back_on_error(ctx, site):
    """Database.dbapi_write (ingest's common path): one transaction on the driver's cursor, under the same
    writer lock as the other write transactions."""
    import pytest

    mark = "?" if ctx.db.engine.dialect.name == "sqlite" else "%s"
    update = f"UPDATE sites SET name = {mark} WHERE id = {mark}"
    with pytest.raises(RuntimeError), ctx.db.dbapi_write() as cur:
        cur.execute(update, ("Renamed", site.id))
        raise RuntimeError("after the update")
    with ctx.db.engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM sites WHERE id = :i"), {"i": site.id}).scalar() == site.name
    with ctx.db.dbapi_write() as cur:
        cur.execute(update, ("Renamed", site.id))
    with ctx.db.engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM sites WHERE id = :i"), {"i": site.id}).scalar() == "Renamed"
    assert ctx.db.engine.pool.checkedout() == 0
