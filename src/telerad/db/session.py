"""Engine and session factory; SQLite runs in WAL mode with a busy timeout so readers never block writers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

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
            write = conn.get_execution_options().get("telerad_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        # Let SQLAlchemy not emit its own BEGIN (pysqlite's legacy transaction handling).
        @event.listens_for(engine, "connect")
        def _no_autobegin(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None

        return engine
    return create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)


class Database:
    """Holds the engine and hands out sessions; one per process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self, write: bool = False) -> Iterator[Session]:
        s = self._factory()
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
        with self.engine.connect() as conn:
            conn.execution_options(telerad_write=True)
            with conn.begin():
                yield conn

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
        """
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "sqlite":
                conn.exec_driver_sql("PRAGMA analysis_limit=2000")
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
        if self.engine.dialect.name == "sqlite":
            self.engine.dispose()

    def count_instances(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT count(*) FROM instances").scalar_one())

    def dispose(self) -> None:
        self.engine.dispose()
