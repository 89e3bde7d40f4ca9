"""Read-only mappings of blobs kept for reuse: a whole-study retrieve sent to a loopback peer writes from them.

Over loopback every byte of a WADO-RS response is copied out of the socket by the reader anyway. Sent with
``pread`` into a buffer and ``write`` (:mod:`telerad.adapters.http.sendfile`), each byte is copied twice in the
server: page cache -> buffer -> socket. Written from a mapping of the file, once: page cache -> socket. A mapping
made for one response costs its page faults and, later, its ``munmap`` (the TLB shootdown), which together cost
as much as the copy they save (measured on the AMD VM; docs/benchmarks.md). A mapping kept costs that once.

Who makes them: the read-ahead (:mod:`.readahead`) maps each blob of a series or study a viewer or a retrieve
has begun to read, to fault it into the page cache in large folios (``FileSystemStore.populate``); rather than
unmap it at once it leaves the mapping here. A sender that finds a blob here writes from its mapping; one that
does not reads the file as before, so a study read for the first time costs what it did.

The cache is bounded by the bytes mapped and the number of mappings (each is a VMA, and ``vm.max_map_count`` is
65,530 by default), and drops the least recently used first. Mapped pages are the page cache's own pages: they
use no memory of their own (a page table entry per 4 KB page, ~2 MB per GB mapped), but they count in the
process's resident size, and the kernel reclaims them less eagerly than unmapped ones. Dropping a mapping does not
unmap it under a reader: each reader gets a ``memoryview`` of its own, which keeps the ``mmap`` object, and the
mapping goes when the last of them does. Blobs are content-addressed and never rewritten in place, so a mapping
never shows other bytes than its key names; :meth:`MappingCache.discard` drops one whose blob is deleted.
"""

from __future__ import annotations

import mmap
import threading
from collections import OrderedDict

DEFAULT_MAX_FILES = 16384  # a quarter of vm.max_map_count's default


class MappingCache:
    """Mappings of blobs by key, at most ``max_bytes`` mapped and ``max_files`` of them, least recently used
    dropped first; ``max_bytes`` 0 keeps none."""

    def __init__(self, max_bytes: int, max_files: int = DEFAULT_MAX_FILES) -> None:
        self.max_bytes = max_bytes
        self.max_files = max_files
        self._maps: OrderedDict[str, mmap.mmap] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0 and self.max_files > 0

    def __len__(self) -> int:
        return len(self._maps)

    @property
    def mapped_bytes(self) -> int:
        return self._bytes

    def get(self, key: str) -> memoryview | None:
        """A read-only view of the blob's mapping (now the most recently used), the caller's own, or None."""
        with self._lock:
            mapping = self._maps.get(key)
            if mapping is None:
                return None
            self._maps.move_to_end(key)
        return memoryview(mapping)

    def kept(self, key: str) -> mmap.mmap | None:
        """The kept mapping itself (now the most recently used), or None: for the store to fault its pages in
        again, never to close (eviction only drops it)."""
        with self._lock:
            mapping = self._maps.get(key)
            if mapping is not None:
                self._maps.move_to_end(key)
            return mapping

    def put(self, key: str, mapping: mmap.mmap) -> bool:
        """Keep ``mapping`` (of the whole blob ``key``) unless it is larger than the cache or the cache is off;
        whether it was kept. A key already kept keeps its first mapping; this one is left to its caller."""
        size = len(mapping)
        if not self.enabled or size > self.max_bytes or size == 0:
            return False
        dropped: list[mmap.mmap] = []
        with self._lock:
            if key in self._maps:
                self._maps.move_to_end(key)
                return False
            self._maps[key] = mapping
            self._bytes += size
            while self._bytes > self.max_bytes or len(self._maps) > self.max_files:
                _, old = self._maps.popitem(last=False)
                self._bytes -= len(old)
                dropped.append(old)
        del dropped  # unmapped here, outside the lock, unless a reader still holds a view of one
        return True

    def discard(self, key: str) -> None:
        with self._lock:
            mapping = self._maps.pop(key, None)
            if mapping is not None:
                self._bytes -= len(mapping)

    def clear(self) -> None:
        with self._lock:
            self._maps.clear()
            self._bytes = 0
