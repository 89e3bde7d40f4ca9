"""Reading blobs into the page cache ahead of the reads a viewer is about to make.

A viewer that opens a series asks for one frame after another as the reader scrolls (PS3.18 10.4.1.1.6).
When the series' files are not in the page cache (written with ``O_DIRECT``, :mod:`.direct`, or evicted since),
each of those requests waits on the disk for its whole frame. :class:`Readahead` takes the first request as the
sign: on a thread of its own it looks up the rest of the series (a function the caller gives) and reads each
file into the page cache, one after another, in large folios (``FileSystemStore.populate``: a mapping advised
``MADV_HUGEPAGE``, faulted in with ``MADV_POPULATE_READ``), so that the next requests find their bytes in memory,
and every later read of them copies from large folios, with less work per byte (the measurements are at
``populate``). PACS do the same at series level ("prefetch"); the viewer's own prefetch (OHIF) then finds the
server's reads already under way. Where the kernel lacks that advice (before Linux 5.14) it asks the kernel to
read every file in the background instead (``POSIX_FADV_WILLNEED``), then reads each file's last partial page,
which those reads leave out.

Retrieves of a whole study or series (WADO-RS, C-GET, C-MOVE) read their files one after the other: the same
read-ahead, given the list, keeps the disk busy ahead of them.

At most about ``max_bytes`` per request, each group (a series) at most once per ``ttl`` seconds, a bounded queue that
drops rather than delays the request that asked; the work never raises into a request.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Protocol

log = logging.getLogger(__name__)

PAGE = mmap.PAGESIZE
Keys = Callable[[], Iterable[str]]  # the blobs to read, in the order they will be read


class _Store(Protocol):
    def populate(self, key: str) -> int: ...

    def will_need(self, key: str) -> int: ...

    def read_last_page(self, key: str, size: int) -> None: ...


class Readahead:
    """``request(group, keys)``: read the blobs ``keys()`` names into the page cache, on a background thread."""

    def __init__(self, store: _Store, max_bytes: int, ttl: float = 300.0, remember: int = 4096,
                 queue_size: int = 64) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._remember = remember
        self._seen: OrderedDict[Hashable, float] = OrderedDict()
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[Hashable, Keys] | None] = queue.Queue(queue_size)  # None: stop
        self._thread: threading.Thread | None = None
        self._pid = 0
        self.done = 0  # requests carried out (for tests and logs)
        self.populate = True  # read in large folios (FileSystemStore.populate) until the kernel refuses

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def request(self, group: Hashable, keys: Keys) -> bool:
        """Queue the read-ahead of ``group`` unless it ran within ``ttl`` or the queue is full; True if queued."""
        if not self.enabled:
            return False
        now = time.monotonic()
        with self._lock:
            last = self._seen.get(group)
            if last is not None and now - last < self.ttl:
                return False
            self._seen[group] = now
            self._seen.move_to_end(group)
            while len(self._seen) > self._remember:
                self._seen.popitem(last=False)
            self._start()
        try:
            self._queue.put_nowait((group, keys))
        except queue.Full:  # a burst of new series: the reads go on without it, as they would with none
            with self._lock:
                self._seen.pop(group, None)
            return False
        return True

    def _start(self) -> None:
        if self._thread is not None and self._pid == os.getpid():
            return
        self._pid = os.getpid()  # a forked child (a DIMSE worker) starts its own thread
        self._thread = threading.Thread(target=self._run, name="telerad-readahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            group, keys = item
            try:
                self._read(keys)
            except Exception:  # a lookup or file error costs the read-ahead only
                log.warning("read-ahead of %r failed", group, exc_info=True)
            self.done += 1

    def _read(self, keys: Keys) -> None:
        budget = self.max_bytes
        queued: list[tuple[str, int]] = []
        for key in keys():
            size = self._populate(key)
            if size is None:  # the kernel's reads of the file are queued (WILLNEED) ...
                size = self.store.will_need(key)
                queued.append((key, size))
            budget -= size
            if budget <= 0:
                break
        for key, size in queued:  # ... then the last partial pages, which those reads leave out, one by one
            if size % PAGE:
                self.store.read_last_page(key, size)

    def _populate(self, key: str) -> int | None:
        """The blob read in large folios (its size), or None when that failed: the caller asks WILLNEED."""
        if not self.populate:
            return None
        try:
            return self.store.populate(key)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOSYS):
                self.populate = False
                log.info("read-ahead in large folios unavailable (%s); asking the kernel to read instead", exc)
            else:
                log.debug("read-ahead of %s in large folios failed", key, exc_info=True)
            return None

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None and self._pid == os.getpid():
            try:
                self._queue.put(None, timeout=5)
            except queue.Full:  # the daemon thread ends with the process
                return
            thread.join(timeout=5)
