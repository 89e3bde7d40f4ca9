"""DIMSE worker processes: more than one CPU core for the DICOM listener.

Ingest is CPU work in Python (parsing, hashing, the index transaction) and one process runs Python on one core
at a time. With ``dimse_workers = N`` (N > 1), ``telerad serve`` starts N - 1 more processes
(``telerad dimse-worker``). ``telerad serve`` alone listens on the DICOM port; it hands each accepted
connection (association) to whichever process serves the fewest at that moment, itself included (ties stay
with it), by passing the socket over a Unix socket pair (``SCM_RIGHTS``, Linux); the worker reports each
connection's end on the same pair. The kernel's ``SO_REUSEPORT`` spreading, used before, hashes the
connection's addresses: two storescu senders landed on the same process in half of the runs (measured in
docs/benchmarks.md). Every process serves every DIMSE service through the same code
(:func:`telerad.adapters.dimse.server.start_dimse`) on the same database, blob store and audit trail (the audit
chain is extended under a database lock, so several writers keep one chain). ``dimse_max_associations``
applies to each process.

The workers read the same settings as ``telerad serve`` (environment and TOML file). ``telerad serve`` restarts
a worker that exits unexpectedly (after 1 s, doubling up to 30 s while it keeps failing) and stops them all when
it stops; a worker whose parent has gone stops by itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from telerad.context import Context

log = logging.getLogger(__name__)
RESTART_DELAY_S = 1.0
RESTART_DELAY_MAX_S = 30.0
STOP_TIMEOUT_S = 15.0
PARENT_CHECK_S = 1.0
READY_TIMEOUT_S = 60.0
READY_FD_ENV = "TELERAD_WORKER_READY_FD"  # where a worker says it is ready (not a setting)
HANDOFF_FD_ENV = "TELERAD_WORKER_HANDOFF_FD"  # its end of the socket pair connections arrive on (not a setting)
FINISHED = b"-"  # worker -> telerad serve: one connection handed to it has ended


def claim_port(port: int) -> socket.socket:
    """Hold the DICOM port for this ``telerad serve`` (an abstract Unix socket named after it, released when the
    process ends), so that a second ``telerad serve`` with workers on the same port (a stale one, or one with
    another home and database) stops at start with a clear message, before it starts any worker."""
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind(f"\0telerad-dicom-port-{port}")
    except OSError:
        lock.close()
        raise RuntimeError(f"another telerad serve already serves DICOM port {port}") from None
    return lock


def require_fd_passing() -> None:
    """Handing connections to workers needs descriptor passing over Unix sockets (``socket.send_fds``)."""
    if not sys.platform.startswith("linux") or not hasattr(socket, "send_fds"):
        raise RuntimeError("dimse_workers > 1 needs Linux (SCM_RIGHTS); set dimse_workers = 1")


class Workers:
    """The N - 1 worker processes of ``telerad serve``, kept running until :meth:`stop`."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * count
        self._started = [0.0] * count
        self._pairs: list[socket.socket | None] = [None] * count  # telerad serve's end of each handoff pair
        self._load = [0] * count  # connections handed to each worker and not reported finished
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
        """Start the worker of ``slot``; the read end of the pipe on which it says "1" once it is ready."""
        read, write = os.pipe()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen([sys.executable, "-m", "telerad.cli", "dimse-worker"],
                                    pass_fds=(write, theirs.fileno()),
                                    env={**os.environ, READY_FD_ENV: str(write), HANDOFF_FD_ENV: str(theirs.fileno())})
        except BaseException:
            os.close(read)
            ours.close()
            raise
        finally:
            os.close(write)
            theirs.close()
        with self._lock:
            old = self._pairs[slot]
            self._procs[slot], self._started[slot] = proc, time.monotonic()
            self._pairs[slot], self._load[slot] = ours, 0
        if old is not None:
            old.close()
        threading.Thread(target=self._count_finished, args=(slot, ours), name=f"dimse-worker-{slot + 1}",
                         daemon=True).start()
        log.info("DIMSE worker %d started (pid %d)", slot + 1, proc.pid)
        return read

    def _count_finished(self, slot: int, pair: socket.socket) -> None:
        """Count down the worker's load as it reports connections ended, until its end of the pair closes."""
        while True:
            try:
                msg = pair.recv(16)
            except OSError:
                msg = b""
            with self._lock:
                if self._pairs[slot] is not pair:  # replaced by a restart
                    return
                if not msg:  # the worker is gone: nothing more goes to this pair
                    self._pairs[slot], self._load[slot] = None, 0
                    return
                self._load[slot] = max(self._load[slot] - msg.count(FINISHED), 0)

    def handoff(self, conn: socket.socket, address: Any, local_load: int) -> bool:
        """Pass ``conn`` to the least-loaded worker if one serves fewer connections than ``local_load`` (this
        process's); False to serve it here. Called from the accept loop."""
        while True:
            with self._lock:
                loads = [(load, slot) for slot, load in enumerate(self._load) if self._pairs[slot] is not None]
                if not loads or min(loads)[0] >= local_load:
                    return False
                load, slot = min(loads)
                pair = self._pairs[slot]
                self._load[slot] += 1
            assert pair is not None
            try:
                socket.send_fds(pair, [json.dumps(list(address)[:2]).encode()], [conn.fileno()],
                                socket.MSG_DONTWAIT)
                return True
            except BlockingIOError:  # its queue is full (a worker that has stopped reading): serve it here
                log.warning("DIMSE worker %d takes no more connections now; serving one here", slot + 1)
                with self._lock:
                    if self._pairs[slot] is pair:
                        self._load[slot] -= 1
                return False
            except OSError as exc:  # the worker went away meanwhile: try the next, or serve it here
                log.warning("cannot hand a connection to DIMSE worker %d: %s", slot + 1, exc)
                with self._lock:
                    if self._pairs[slot] is pair:
                        self._pairs[slot], self._load[slot] = None, 0

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
        with self._lock:
            pairs, self._pairs = [p for p in self._pairs if p is not None], [None] * self.count
        for pair in pairs:  # no more connections to hand over
            pair.close()
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
    """``telerad dimse-worker``: serves the DICOM connections ``telerad serve`` hands it, until SIGTERM or until
    the parent ``telerad serve`` is gone."""
    from telerad.adapters.dimse.server import start_dimse
    from telerad.server import configure_logging, keep_statistics_fresh, settle_heap

    handoff_fd = os.environ.pop(HANDOFF_FD_ENV, "")
    if not handoff_fd.isdigit():
        raise SystemExit("telerad dimse-worker is started by telerad serve (setting dimse_workers > 1), "
                         "which hands it DICOM connections; it is not run by hand")
    configure_logging()
    parent = os.getppid()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    # Ctrl-C in a terminal reaches the whole process group: telerad serve stops and then ends its workers with
    # SIGTERM; a worker leaving by itself first would only be restarted.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Each process plans its own queries: statistics gathered elsewhere do not reach its pooled connections.
    threading.Thread(target=keep_statistics_fresh, args=(ctx,), name="db-analyze", daemon=True).start()
    pair = socket.socket(fileno=int(handoff_fd))
    dimse = start_dimse(ctx, listen=False)
    server = dimse.server
    send_lock = threading.Lock()

    def finished() -> None:
        with send_lock, contextlib.suppress(OSError):
            pair.send(FINISHED)

    server.on_finished = finished
    threading.Thread(target=_receive_connections, args=(pair, server, done), name="dimse-handoff",
                     daemon=True).start()
    settle_heap()
    log.info("DIMSE worker ready for connections from telerad serve (pid %d)", parent)
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


def _receive_connections(pair: socket.socket, server: Any, done: threading.Event) -> None:
    """Serve each connection ``telerad serve`` passes over ``pair``; the worker stops when the pair closes."""
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(pair, 1024, 1)
        except OSError:
            msg, fds = b"", []
        if not msg:
            for fd in fds:
                os.close(fd)
            log.info("telerad serve closed the connection hand-off; the DIMSE worker stops")
            done.set()
            return
        if not fds:
            continue
        conn = socket.socket(fileno=fds[0])
        for extra in fds[1:]:
            os.close(extra)
        try:
            host, port = json.loads(msg)
            address = (str(host), int(port))
        except (ValueError, TypeError):
            address = ("", 0)
        server.process_request(conn, address)
