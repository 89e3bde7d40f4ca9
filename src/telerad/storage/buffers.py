"""Page-aligned anonymous buffers kept for reuse across calls and threads.

A buffer taken fresh for every object or response costs its first touch of every page (the guest's and, on a
virtual machine that backs memory lazily, the host's page faults); kept buffers have those pages already.
Used by the ``O_DIRECT`` writes of new blobs (:mod:`.direct`) and the copies of stored files into a loopback
socket (:mod:`telerad.adapters.http.sendfile`).
"""

from __future__ import annotations

import mmap
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class BufferPool:
    """Buffers of ``size`` bytes, one per concurrent user: :meth:`take` lends one (a kept one or a new one) and
    keeps it again afterwards while fewer than ``keep`` are kept."""

    def __init__(self, size: int, keep: int) -> None:
        if size <= 0 or size % mmap.PAGESIZE:
            raise ValueError(f"buffer size must be a positive multiple of {mmap.PAGESIZE}, not {size}")
        self.size = size
        self.keep = keep
        self._free: list[mmap.mmap] = []
        self._lent = 0
        self._lock = threading.Lock()

    @contextmanager
    def take(self) -> Iterator[mmap.mmap]:
        with self._lock:
            buf = self._free.pop() if self._free else None
            self._lent += 1
        try:
            if buf is None:  # anonymous mappings are page-aligned; private, so never shared with a forked child
                buf = mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            yield buf
        finally:
            with self._lock:
                self._lent -= 1
                if buf is not None and len(self._free) < self.keep:
                    self._free.append(buf)
                    buf = None
            if buf is not None:
                buf.close()

    @property
    def kept(self) -> int:
        """How many buffers wait for reuse now."""
        with self._lock:
            return len(self._free)

    @property
    def lent(self) -> int:
        """How many buffers are in use now."""
        with self._lock:
            return self._lent
