"""DIMSE worker processes: more than one CPU core for the DICOM listener.

Ingest is CPU work in Python (parsing, hashing, the index transaction) and one process runs Python on one core
at a time. With ``dimse_workers = N`` (N > 1), ``telerad serve`` starts N - 1 more processes
(``telerad dimse-worker``), each with its own DICOM listener bound to the same address and port with
``SO_REUSEPORT`` (Linux): the kernel spreads incoming connections (associations) over the N listeners.
Every process serves every DIMSE service through the same code (:func:`telerad.adapters.dimse.server.start_dimse`)
on the same database, blob store and audit trail (the audit chain is extended under a database lock, so several
writers keep one chain). ``dimse_max_associations`` applies to each process.

The workers read the same settings as ``telerad serve`` (environment and TOML file). ``telerad serve`` restarts
a worker that exits unexpectedly (after 1 s, doubling up to 30 s while it keeps failing) and stops them all when
it stops; a worker whose parent has gone stops by itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

from telerad.context import Context

log = logging.getLogger(__name__)
RESTART_DELAY_S = 1.0
RESTART_DELAY_MAX_S = 30.0
STOP_TIMEOUT_S = 15.0
PARENT_CHECK_S = 1.0
READY_TIMEOUT_S = 60.0
READY_FD_ENV = "TELERAD_WORKER_READY_FD"  # where a worker says it listens (not a setting)


def claim_port(port: int) -> socket.socket:
    """Hold the DICOM port for this ``telerad serve`` (an abstract Unix socket named after it, released when the
    process ends). Listeners with SO_REUSEPORT would let a second ``telerad serve`` on the same port (a stale
    one, or one with another home and database) bind it too, and the kernel would split the associations
    between two archives; this makes the second one stop at start instead."""
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind(f"\0telerad-dicom-port-{port}")
    except OSError:
        lock.close()
        raise RuntimeError(f"another telerad serve already serves DICOM port {port}") from None
    return lock


def require_reuse_port() -> None:
    """Several listeners on one port need SO_REUSEPORT with load balancing (Linux 3.9+)."""
    if not sys.platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT"):
        raise RuntimeError("dimse_workers > 1 needs Linux (SO_REUSEPORT); set dimse_workers = 1")


class Workers:
    """The N - 1 worker processes of ``telerad serve``, kept running until :meth:`stop`."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * count
        self._started = [0.0] * count
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._supervise, name="dimse-workers", daemon=True)

    def start(self) -> None:
        """Start the workers and return once each listens (or has failed to start: logged, and restarted)."""
        ready = [self._spawn(slot) for slot in range(self.count)]
        deadline = time.monotonic() + READY_TIMEOUT_S
        for slot, fd in enumerate(ready):
            try:
                readable, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
                if not readable:
                    log.error("DIMSE worker %d is not listening after %.0f s", slot + 1, READY_TIMEOUT_S)
                elif os.read(fd, 1) != b"1":  # end of file: it exited first
                    log.error("DIMSE worker %d ended before it listened", slot + 1)
            finally:
                os.close(fd)
        if self.count:
            self._thread.start()

    def _spawn(self, slot: int) -> int:
        """Start the worker of ``slot``; the read end of the pipe on which it says "1" once it listens."""
        read, write = os.pipe()
        try:
            proc = subprocess.Popen([sys.executable, "-m", "telerad.cli", "dimse-worker"], pass_fds=(write,),
                                    env={**os.environ, READY_FD_ENV: str(write)})
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        with self._lock:
            self._procs[slot], self._started[slot] = proc, time.monotonic()
        log.info("DIMSE worker %d started (pid %d)", slot + 1, proc.pid)
        return read

    def _supervise(self) -> None:
        delays = [RESTART_DELAY_S] * self.count
        while not self._stopping.wait(0.5):
            for slot in range(self.count):
                with self._lock:
                    proc, started = self._procs[slot], self._started[slot]
                if proc is None or proc.poll() is None:
                    continue
                # One that ran for a while gets the short delay again; one that keeps failing, longer ones.
                delay = RESTART_DELAY_S if time.monotonic() - started >= 60 else delays[slot]
                log.error("DIMSE worker %d (pid %d) exited with %s; restarting in %.0f s", slot + 1, proc.pid,
                          proc.returncode, delay)
                if self._stopping.wait(delay):
                    return
                os.close(self._spawn(slot))
                delays[slot] = min(delay * 2, RESTART_DELAY_MAX_S)

    def stop(self) -> None:
        """SIGTERM to every worker (each ends its associations and flushes its audit records), then wait."""
        self._stopping.set()
        if self._thread.is_alive():  # a restart in progress finishes first, so its worker is stopped too
            self._thread.join(timeout=STOP_TIMEOUT_S)
        with self._lock:
            procs = [p for p in self._procs if p is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.error("DIMSE worker pid %d did not stop in %.0f s; killing it", proc.pid, STOP_TIMEOUT_S)
                proc.kill()
                proc.wait()


def run_worker(ctx: Context) -> None:
    """``telerad dimse-worker``: one more DICOM listener on the shared port, until SIGTERM or until the parent
    ``telerad serve`` is gone."""
    from telerad.adapters.dimse.server import start_dimse
    from telerad.server import configure_logging, keep_statistics_fresh, settle_heap

    configure_logging()
    parent = os.getppid()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    # Ctrl-C in a terminal reaches the whole process group: telerad serve stops and then ends its workers with
    # SIGTERM; a worker leaving by itself first would only be restarted.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Each process plans its own queries: statistics gathered elsewhere do not reach its pooled connections.
    threading.Thread(target=keep_statistics_fresh, args=(ctx,), name="db-analyze", daemon=True).start()
    dimse = start_dimse(ctx, reuse_port=True)
    settle_heap()
    log.info("DIMSE worker listening on %s:%d", *dimse.address)
    ready_fd = os.environ.pop(READY_FD_ENV, "")
    if ready_fd.isdigit():
        with contextlib.suppress(OSError):
            os.write(int(ready_fd), b"1")
            os.close(int(ready_fd))
    try:
        while not done.wait(PARENT_CHECK_S):
            if os.getppid() != parent:
                log.warning("telerad serve (pid %d) is gone; the DIMSE worker stops", parent)
                break
    finally:
        dimse.shutdown()
