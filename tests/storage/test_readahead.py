"""Read-ahead into the page cache (storage/readahead.py), checked on the page cache itself (``fincore``): blobs
written with O_DIRECT start outside it, but for a last partial page (written through the cache)."""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

import pytest
from support import (
    pages_in_large_folios,
    resident_pages,
    transparent_hugepages_enabled,
    wait_until_resident,
    written_through_cache,
)

from telerad.storage.filesystem import FileSystemStore
from telerad.storage.readahead import Readahead

SIZE = 300_000


@pytest.fixture
def store(tmp_path):
    return FileSystemStore(tmp_path, direct_write=True)


@pytest.fixture
def blobs(store) -> list[str]:
    keys = [store.put(os.urandom(SIZE))[0] for _ in range(3)]
    assert [resident_pages(store.path(k)) for k in keys] == [written_through_cache(store.path(k)) for k in keys]
    return keys


def _wait_done(ra: Readahead, n: int) -> None:
    deadline = time.monotonic() + 10
    while ra.done < n:
        assert time.monotonic() < deadline, "read-ahead did not run"
        time.sleep(0.01)


def _paths(store: FileSystemStore, keys: list[str]) -> list[Path]:
    return [store.path(k) for k in keys]


def test_a_request_reads_the_blobs_into_the_page_cache(store, blobs):
    ra = Readahead(store, 1 << 30)
    assert ra.request("series-1", lambda: blobs)
    _wait_done(ra, 1)
    assert wait_until_resident(_paths(store, blobs))
    ra.close()


def test_reading_stops_once_the_budget_is_spent(store, blobs):
    ra = Readahead(store, SIZE + 1)  # the first blob leaves 1 byte: the second is read, the third is not
    assert ra.request("s", lambda: blobs)
    _wait_done(ra, 1)
    assert wait_until_resident(_paths(store, blobs[:2]))
    assert resident_pages(store.path(blobs[2])) == written_through_cache(store.path(blobs[2]))


def test_a_group_is_read_once_per_ttl(store, blobs):
    calls: list[str] = []

    def keys() -> list[str]:
        calls.append("x")
        return blobs[:1]

    ra = Readahead(store, 1 << 30, ttl=3600)
    assert ra.request("s", keys)
    assert not ra.request("s", keys)  # within the ttl: not queued again
    assert ra.request("other", keys)
    _wait_done(ra, 2)
    assert calls == ["x", "x"]
    again = Readahead(store, 1 << 30, ttl=0)
    assert again.request("s", keys) and again.request("s", keys)
    _wait_done(again, 2)
    assert len(calls) == 4


def test_zero_budget_turns_it_off(store, blobs):
    ra = Readahead(store, 0)
    assert not ra.enabled and not ra.request("s", lambda: blobs)
    time.sleep(0.1)
    assert [resident_pages(p) for p in _paths(store, blobs)] == [written_through_cache(p) for p in _paths(store, blobs)]


def test_a_failing_lookup_or_a_missing_blob_costs_only_the_read_ahead(store, blobs, caplog):
    ra = Readahead(store, 1 << 30)

    def broken() -> list[str]:
        raise RuntimeError("index unavailable")

    assert ra.request("broken", broken)
    missing = "0" * 64
    assert ra.request("gap", lambda: [missing, *blobs])
    _wait_done(ra, 2)
    assert "read-ahead of 'broken' failed" in caplog.text
    assert wait_until_resident(_paths(store, blobs))  # the missing blob is skipped, the rest read


def test_will_need_returns_the_size_or_zero(store, blobs):
    assert store.will_need(blobs[0]) == SIZE
    assert store.will_need("f" * 64) == 0



def test_populate_reads_a_blob_in_large_folios_and_returns_its_size(store, blobs):
    """What the read-ahead is for beyond having the bytes in memory: after ``POSIX_FADV_WILLNEED`` the pages are
    single ones; after ``populate`` they are large folios, cheaper to read (measured in FileSystemStore.populate)."""
    path = store.path(blobs[0])
    store.will_need(blobs[0])
    assert wait_until_resident([path])
    assert pages_in_large_folios(path) == 0
    assert store.populate(blobs[1]) == SIZE
    assert resident_pages(store.path(blobs[1])) == -(-SIZE // 4096)  # every page, the last partial one too
    if transparent_hugepages_enabled():
        assert pages_in_large_folios(store.path(blobs[1])) >= SIZE // 4096 // 2
    assert store.populate("f" * 64) == 0
    assert store.populate(store.put(b"")[0]) == 0


def test_without_the_madvise_advice_the_kernel_is_asked_to_read_instead(store, blobs, monkeypatch, caplog):
    """Before Linux 5.14 MADV_POPULATE_READ is EINVAL: the read-ahead falls back to POSIX_FADV_WILLNEED and
    the last pages, for this request and the next."""
    calls: list[str] = []

    def unsupported(key: str) -> int:
        calls.append(key)
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(store, "populate", unsupported)
    caplog.set_level(logging.INFO, logger="telerad.storage.readahead")
    ra = Readahead(store, 1 << 30)
    assert ra.request("old-kernel", lambda: blobs)
    _wait_done(ra, 1)
    assert wait_until_resident(_paths(store, blobs))
    assert calls == blobs[:1] and not ra.populate
    assert "unavailable" in caplog.text
