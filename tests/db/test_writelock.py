"""SQLite writers queue on one lock across threads and processes (telerad.db.writelock)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from telerad.db.session import Database
from telerad.db.writelock import WriteLock, lock_path

# Another process writing to the same database through telerad's Database: says when it asked and when it got in.
_OTHER_WRITER = """
import errno, fcntl, os, sys
from telerad.db.session import Database
from telerad.db.writelock import lock_path
fd = os.open(lock_path(sys.argv[1]), os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("file lock free", flush=True)
except BlockingIOError:
    print("file lock held", flush=True)
os.close(fd)
db = Database(sys.argv[1])
print("asking", flush=True)
with db.dbapi_write() as cur:
    cur.execute("INSERT INTO t VALUES (2)")
print("written", flush=True)
"""


def test_lock_file_sits_next_to_the_database(tmp_path: Path) -> None:
    assert lock_path(f"sqlite:///{tmp_path}/index.db") == f"{tmp_path}/index.db-writelock"
    assert lock_path("sqlite://") is None
    assert lock_path("sqlite:///:memory:") is None


def test_a_writer_in_another_process_waits_for_the_lock_and_then_writes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/index.db"
    db = Database(url)
    with db.dbapi_write() as cur:
        cur.execute("CREATE TABLE t (v INTEGER)")
    with db.dbapi_write() as cur:
        cur.execute("INSERT INTO t VALUES (1)")
        other = subprocess.Popen([sys.executable, "-c", _OTHER_WRITER, url], stdout=subprocess.PIPE, text=True)
        assert other.stdout is not None
        assert other.stdout.readline() == "file lock held\n"  # by this process's write transaction
        assert other.stdout.readline() == "asking\n"
        with pytest.raises(subprocess.TimeoutExpired):
            other.wait(timeout=1.0)  # queued on the file lock, not failing and not writing
    out, _ = other.communicate(timeout=30)
    assert other.returncode == 0 and out == "written\n"
    with db.engine.connect() as conn:
        assert [r[0] for r in conn.exec_driver_sql("SELECT v FROM t ORDER BY rowid")] == [1, 2]
    db.dispose()


def test_nested_writes_in_one_thread_and_queued_threads(tmp_path: Path) -> None:
    lock = WriteLock(str(tmp_path / "db-writelock"))
    order: list[str] = []
    with lock:
        with lock:  # re-entrant: a write inside a write takes nothing more
            order.append("outer")
        waiting = threading.Thread(target=lambda: (lock.__enter__(), order.append("second"), lock.__exit__(
            None, None, None)))
        waiting.start()
        waiting.join(timeout=0.5)
        assert waiting.is_alive()  # the other thread waits until the outermost holder leaves
        order.append("released")
    waiting.join(timeout=10)
    assert order == ["outer", "released", "second"]
    lock.close()


def test_an_unwritable_directory_leaves_sqlite_to_serialise(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lock = WriteLock(str(tmp_path / "missing" / "db-writelock"))
    with lock:
        pass
    assert lock.path is None and "writers poll SQLite's lock instead" in caplog.text
