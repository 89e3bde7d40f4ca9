"""Engine and session factory; SQLite runs in WAL mode with a busy timeout so readers never block writers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from telerad.db import statistics
from telerad.db.writelock import WriteLock, lock_path


def make_engine(url: str, pool_size: int | None = None) -> Engine:
    """The engine for ``url``; ``pool_size`` bounds its pool (default: SQLAlchemy's for SQLite, 20 + 20 for
    PostgreSQL)."""
    pool = {} if pool_size is None else {"pool_size": pool_size, "max_overflow": pool_size}
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **pool)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")  # durable before success
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA case_sensitive_like=ON")  # DICOM matching is case-sensitive (PS3.4 C.2.2.2)
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin_immediate(conn: Any) -> None:
            # Writers take the write lock at BEGIN so two writers never deadlock on lock upgrade;
            # readers use a deferred BEGIN and, in WAL mode, never wait for writers.
            # On the driver's connection: through ``exec_driver_sql``, SQLAlchemy's execution machinery cost
            # ~25-30 us of CPU per transaction (of ~160 us for connect, one SELECT and close), for a statement
            # with no parameters and no result.
            write = conn.get_execution_options().get("telerad_write", False)
            conn.connection.driver_connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")

        # Let SQLAlchemy not emit its own BEGIN (pysqlite's legacy transaction handling).
        @event.listens_for(engine, "connect")
        def _no_autobegin(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None

        return engine
    return create_engine(url, **(pool or {"pool_size": 20, "max_overflow": 20}), pool_pre_ping=True)


class Database:
    """Holds the engines and hands out sessions; one per process.

    The HTTP server's event loop thread runs short index-bound reads itself (see
    :mod:`telerad.adapters.http.offload`) and registers with :meth:`serve_event_loop`: from then on the
    connections it takes come from a small pool of its own. Taken from the shared pool, a burst of
    thread-pool requests holding every connection would stop the event loop, and with it every HTTP
    request, until one came back. Its one-statement reads (:meth:`dbapi_read`: the bearer-token check, a frame's
    instance lookup, QIDO-RS) go through one connection it keeps instead (:class:`_Reader`). Measured per
    read of ``SELECT 1``: 640 -> 160-196 us on PostgreSQL (the pool's liveness check and reset are round trips),
    18.4 -> 6.6 us on SQLite.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._shared = make_engine(url)
        self._loop_engine: Engine | None = None
        self._loop_thread: int | None = None
        self._loop_reader: _Reader | None = None
        self._factory = sessionmaker(expire_on_commit=False)
        # SQLite has one writer at a time, and its busy handler polls: writers queue on a lock instead, this
        # process's threads and other processes (DIMSE workers, ``telerad import``) alike (:mod:`.writelock`).
        self._writer = WriteLock(lock_path(url)) if self._shared.dialect.name == "sqlite" else None

    @property
    def engine(self) -> Engine:
        """The engine for the calling thread: the event loop's own, or the shared one."""
        return self._loop_engine if self._loop_engine is not None and self.on_event_loop() else self._shared

    def on_event_loop(self) -> bool:
        """Whether the calling thread is the registered event loop thread."""
        return threading.get_ident() == self._loop_thread

    def serve_event_loop(self) -> None:
        """Give the calling thread (the HTTP server's event loop) a connection pool of its own."""
        if self._shared.url.database in (None, "", ":memory:"):
            return  # an in-memory SQLite database exists once per engine: there is no second pool to open
        if self._loop_engine is None:
            self._loop_engine = make_engine(self.url, pool_size=2)
            self._loop_reader = _Reader(self._loop_engine)
        self._loop_thread = threading.get_ident()

    def _engines(self) -> list[Engine]:
        return [self._shared] + ([self._loop_engine] if self._loop_engine is not None else [])

    @contextmanager
    def session(self, write: bool = False) -> Iterator[Session]:
        with self._writing(write):
            s = self._factory(bind=self.engine)
            if write:
                s.connection(execution_options={"telerad_write": True})
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise
            finally:
                s.close()

    @contextmanager
    def write_connection(self) -> Iterator[Connection]:
        """A write transaction on a bare connection, for Core statements where an ORM session's bookkeeping
        would cost more than the statements (ingest): committed when the block ends, rolled back if it raises.
        """
        with self._writing(True), self.engine.connect() as conn:
            conn.execution_options(telerad_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def dbapi_write(self) -> Iterator[Any]:
        """A write transaction as a bare DBAPI cursor (sqlite3 or psycopg), for the few statements of ingest's
        common path: SQLAlchemy's execution machinery costs ~0.1 ms a statement, held under the GIL every
        association shares, against ~0.02 ms for the driver. Committed when the block ends, rolled back if it
        raises; driver exceptions (``dbapi_errors``) come through as they are."""
        sqlite = self.engine.dialect.name == "sqlite"
        with self._writing(True):
            raw = self.engine.raw_connection()
            try:
                cur = raw.cursor()
                if sqlite:  # autocommit mode on these connections (see make_engine): the transaction is ours
                    cur.execute("BEGIN IMMEDIATE")
                try:
                    yield cur
                except BaseException:
                    raw.rollback()
                    raise
                finally:
                    cur.close()
                raw.commit()
            finally:
                raw.close()  # back to the pool

    @contextmanager
    def dbapi_read(self) -> Iterator[Any]:
        """A bare DBAPI cursor for a read of one statement (:mod:`telerad.db.compiled`): the bearer-token check
        and QIDO-RS run one per request. SQLite runs it in autocommit mode (see make_engine), one statement
        being its own read transaction; on PostgreSQL the pool rolls the driver's transaction back when the
        connection returns.

        On the event loop thread the cursor comes from one connection kept open for its reads (:class:`_Reader`),
        not from the pool: a frame request reads twice (the token, then the instance), and a read of ``SELECT 1``
        took 18.4 us through the pool against 6.6 kept on SQLite, 640 against 160-196 on PostgreSQL."""
        reader = self._loop_reader
        if reader is not None and self.on_event_loop():
            with reader.cursor() as cur:
                yield cur
            return
        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            try:
                yield cur
            finally:
                cur.close()
        finally:
            raw.close()  # back to the pool

    @property
    def dbapi_errors(self) -> tuple[type[Exception], ...]:
        """The driver's IntegrityError and OperationalError (PEP 249), raised through :meth:`dbapi_write`."""
        dbapi: Any = self.engine.dialect.dbapi
        return (dbapi.IntegrityError, dbapi.OperationalError)

    def _writing(self, write: bool) -> AbstractContextManager[object]:
        """This process's turn to write to SQLite (see ``_writer``); nothing to wait for on PostgreSQL."""
        return self._writer if write and self._writer is not None else nullcontext()

    def analyze(self) -> None:
        """Refresh the query planner's statistics.

        Without them SQLite plans a QIDO by Patient ID through the studies' site index and walks every study
        of the site (measured: QIDO p95 x2.5 at 100k instances); with them it starts from the patient.
        ``analysis_limit`` bounds the work on a large index. PostgreSQL's autovacuum does this by itself,
        but an explicit ANALYZE after a bulk import helps there too.

        SQLite loads the statistics when a connection reads the schema, and a later ANALYZE (this one, or
        one by another process such as ``telerad import``) does not change the schema: every other open
        connection would keep planning with the old figures. So the pool is emptied afterwards and
        connections reopen with the new ones (connections in use are closed when they are returned).

        While the index is small, SQLite gets the shape of an archive in use instead of what ANALYZE measured
        (:mod:`telerad.db.statistics`): on no figures, or a handful of rows, it walks a site's instances for
        one study's.
        """
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "sqlite":
                conn.exec_driver_sql("PRAGMA analysis_limit=2000")
            conn.exec_driver_sql("ANALYZE")
            if self.engine.dialect.name == "sqlite":
                statistics.seed(conn)  # a small index: the shape of an archive instead
            conn.commit()
        if self.engine.dialect.name == "sqlite":
            for engine in self._engines():
                engine.dispose()
            if self._loop_reader is not None:
                self._loop_reader.reopen()

    def count_instances(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT count(*) FROM instances").scalar_one())

    def dispose(self) -> None:
        if self._loop_reader is not None:
            self._loop_reader.close()
        for engine in self._engines():
            engine.dispose()
        if self._writer is not None:
            self._writer.close()


class _Reader:
    """One driver connection kept open for a single thread's one-statement reads (the event loop's).

    In autocommit mode, so each statement is its own read transaction, as a pooled connection's read is:
    SQLite's connections are in it already (see :func:`make_engine`), psycopg's is put in it. A driver error
    closes the connection, and the next read opens a new one (after a database restart, say). :meth:`reopen`
    may be called from any thread: the owner replaces its connection before its next read.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Any = None
        self._wanted = 0  # bumped by reopen(); the connection in use was opened at generation ``_opened``
        self._opened = 0
        self._open_cursors = 0  # a read inside another's block keeps the connection the outer one reads from

    @contextmanager
    def cursor(self) -> Iterator[Any]:
        if self._conn is None or (self._opened != self._wanted and not self._open_cursors):
            self.close()
            self._opened = self._wanted
            self._conn = self._open()
        conn = self._conn
        cur = conn.cursor()
        self._open_cursors += 1
        try:
            yield cur
        except self._engine.dialect.dbapi.Error:  # type: ignore[union-attr]
            if self._conn is conn:
                self.close()
            raise
        finally:
            self._open_cursors -= 1
            cur.close()

    def _open(self) -> Any:
        fairy = self._engine.raw_connection()  # through the pool's connect hooks (SQLite's pragmas)
        conn: Any = fairy.driver_connection
        fairy.detach()  # then out of the pool: this reader closes it
        if self._engine.dialect.name != "sqlite":
            conn.rollback()  # out of the transaction the pool's liveness check may have begun
            conn.autocommit = True
        return conn

    def reopen(self) -> None:
        self._wanted += 1

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001, S110 - a broken connection is being dropped anyway
                pass
