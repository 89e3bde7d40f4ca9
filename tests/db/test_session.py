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


def _on_event_loop_thread(ctx, work):
    """Run ``work()`` on a thread registered as the event loop's; its result (or its exception, raised here)."""
    import threading

    out: dict[str, object] = {}

    def run() -> None:
        ctx.db.serve_event_loop()
        try:
            out["result"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    assert not t.is_alive()
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["result"]


def _idle(conn) -> bool:
    """Whether the driver connection is outside any transaction (sqlite3 or psycopg)."""
    if hasattr(conn, "in_transaction"):
        return not conn.in_transaction
    from psycopg.pq import TransactionStatus

    return conn.info.transaction_status == TransactionStatus.IDLE


def test_the_event_loop_reads_on_one_kept_connection_outside_any_transaction(ctx, site):
    """The event loop's reads (token checks, frame lookups) share one driver connection instead of a checkout
    from the pool each, and leave no transaction open: a write committed by another thread in between is seen
    by the next read."""
    db = ctx.db

    def count() -> tuple[int, object, bool]:
        with db.dbapi_read() as cur:
            cur.execute("SELECT count(*) FROM instances")
            n = cur.fetchone()[0]
            conn = cur.connection
        return n, conn, _idle(conn)

    def work() -> list[tuple[int, object, bool]]:
        first = count()
        for raw in ct_series(("Kept^Conn", "K1", "19700101", "F"), generate_uid(), "A", 2, 16):
            t = threading.Thread(target=lambda raw=raw: store(ctx, site.id, raw))  # another thread writes
            t.start()
            t.join(30)
        return [first, count()]

    import threading

    checkouts: list[bool] = []  # per checkout from any pool: whether the event loop thread made it

    def work_counted() -> list[tuple[int, object, bool]]:
        count()  # opens the kept connection
        from sqlalchemy import event

        loop = threading.get_ident()
        for engine in db._engines():
            event.listen(engine, "checkout", lambda *a: checkouts.append(threading.get_ident() == loop))
        return work()

    (before, conn1, idle1), (after, conn2, idle2) = _on_event_loop_thread(ctx, work_counted)
    assert (before, after) == (0, 2)
    assert conn1 is conn2
    assert idle1 and idle2
    assert checkouts and not any(checkouts)  # the stores took connections; the event loop's reads none


def test_the_kept_connection_is_replaced_after_analyze_and_after_a_driver_error(ctx):
    """After ANALYZE the next read opens a new connection (SQLite plans with the statistics a connection loaded),
    but never under a read still in progress; a driver error drops the connection and the next read opens one."""
    db = ctx.db
    sqlite = db.engine.dialect.name == "sqlite"

    def conn_of_read() -> object:
        with db.dbapi_read() as cur:
            cur.execute("SELECT 1")
            cur.fetchall()
            return cur.connection

    def work() -> dict[str, object]:
        seen: dict[str, object] = {"first": conn_of_read()}
        with db.dbapi_read() as outer:
            db.analyze()
            seen["nested"] = conn_of_read()  # the outer read's connection stays
            outer.execute("SELECT 2")
            seen["outer"] = outer.fetchall()[0][0]
        seen["after_analyze"] = conn_of_read()
        try:
            with db.dbapi_read() as cur:
                cur.execute("SELECT * FROM no_such_table")
        except db.engine.dialect.dbapi.Error as exc:
            seen["error"] = type(exc).__name__
        seen["after_error"] = conn_of_read()
        return seen

    seen = _on_event_loop_thread(ctx, work)
    assert seen["nested"] is seen["first"] and seen["outer"] == 2
    assert "error" in seen
    assert seen["after_error"] is not seen["after_analyze"]
    if sqlite:
        assert seen["after_analyze"] is not seen["first"]
    else:  # PostgreSQL shares statistics between sessions: nothing to reopen for
        assert seen["after_analyze"] is seen["first"]


def test_dispose_closes_the_kept_connection(ctx):
    def work() -> object:
        with ctx.db.dbapi_read() as cur:
            return cur.connection

    conn = _on_event_loop_thread(ctx, work)
    ctx.db.dispose()
    import pytest

    with pytest.raises(ctx.db.engine.dialect.dbapi.Error):
        conn.cursor().execute("SELECT 1")
