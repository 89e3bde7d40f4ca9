"""One SQLite writer at a time, queued rather than polled, across threads and processes.

SQLite allows one write transaction at a time (https://sqlite.org/lockingv3.html, WAL: https://sqlite.org/wal.html
section 2.2). A writer that finds the lock taken is not woken when it is released: SQLite's busy handler sleeps
1, 2, 5, 10, 15, 20, 25 ... ms between tries, so a writer that arrives while another commits (0.4 ms) waits
a millisecond or more, every time. Ingest runs one write transaction per object, from every association of
``telerad serve``, from its DIMSE worker processes and from ``telerad import`` processes alike.

:class:`WriteLock` queues them instead: the threads of one process on an :class:`threading.RLock`, and the
processes on an exclusive ``flock(2)`` of a lock file next to the database (``<database>-writelock``), which
the kernel hands to the next waiter the moment it is released. SQLite's own lock and busy timeout stay
underneath, for writers that do not take this lock (another program, an older telerad).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from types import TracebackType

from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)
SUFFIX = "-writelock"


def lock_path(url: str) -> str | None:
    """The lock file of the SQLite database at ``url``; None for an in-memory or URI-named database."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database + SUFFIX


class WriteLock:
    """Re-entrant per thread (a write inside a write takes nothing more); the file lock is taken by the
    outermost holder in this process and released when it leaves."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._threads = threading.RLock()
        self._depth = 0  # changed only by the thread holding ``_threads``
        self._fd: int | None = None

    def __enter__(self) -> WriteLock:
        self._threads.acquire()
        if self._depth == 0:
            try:
                self._lock_file()
            except BaseException:
                self._threads.release()
                raise
        self._depth += 1
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._depth -= 1
        try:
            if self._depth == 0 and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def _lock_file(self) -> None:
        if self.path is None:
            return
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:  # a read-only directory: SQLite's own lock still serialises writers
                log.warning("cannot open the SQLite write lock %s (%s); writers poll SQLite's lock instead",
                            self.path, exc.strerror or exc)
                self.path = None
                return
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # blocks without the GIL until the other process releases it

    def close(self) -> None:
        with self._threads:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
