"""Read-ahead into the page cache (storage/readahead.py), checked on the page cache itself (``fincore``): blobs
written with O_DIRECT start outside it, but for a last partial page (written through the cache)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from support import resident_pages, wait_until_resident, written_through_cache

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

