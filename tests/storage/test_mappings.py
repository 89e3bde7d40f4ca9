"""The cache of blob mappings (storage/mappings.py): bounds, order of eviction, readers' own views."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from telerad.storage.filesystem import FileSystemStore
from telerad.storage.mappings import MappingCache


def _mapping(tmp_path: Path, name: str, data: bytes) -> mmap.mmap:
    p = tmp_path / name
    p.write_bytes(data)
    with p.open("rb") as f:
        return mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)


def test_least_recently_used_go_first_by_bytes(tmp_path: Path) -> None:
    cache = MappingCache(max_bytes=3 * 4096)
    for k in "abc":
        assert cache.put(k, _mapping(tmp_path, k, k.encode() * 4096))
    assert cache.get("a") is not None  # a is now the most recently used
    assert cache.put("d", _mapping(tmp_path, "d", b"d" * 4096))
    assert [k for k in "abcd" if cache.get(k) is not None] == ["a", "c", "d"]
    assert cache.mapped_bytes == 3 * 4096 and len(cache) == 3


def test_bounded_by_count(tmp_path: Path) -> None:
    cache = MappingCache(max_bytes=1 << 30, max_files=2)
    for k in "abc":
        cache.put(k, _mapping(tmp_path, k, b"x" * 100))
    assert cache.get("a") is None and bytes(cache.get("c") or b"") == b"x" * 100 and len(cache) == 2


def test_a_reader_keeps_its_view_when_the_mapping_is_dropped(tmp_path: Path) -> None:
    cache = MappingCache(max_bytes=4096)
    cache.put("a", _mapping(tmp_path, "a", b"a" * 4096))
    view = cache.get("a")
    assert view is not None
    cache.put("b", _mapping(tmp_path, "b", b"b" * 4096))  # evicts a
    cache.discard("b")
    cache.clear()
    assert cache.get("a") is None and len(cache) == 0 and cache.mapped_bytes == 0
    assert bytes(view[:3]) == b"aaa" and len(view) == 4096  # still mapped: the reader's view holds it
    view.release()


def test_off_too_large_empty_and_repeated_mappings_are_not_kept(tmp_path: Path) -> None:
    assert not MappingCache(0).put("a", _mapping(tmp_path, "a", b"a"))
    cache = MappingCache(max_bytes=4096)
    assert not cache.put("big", _mapping(tmp_path, "big", b"b" * 5000))
    first = _mapping(tmp_path, "a", b"1" * 10)
    assert cache.put("a", first)
    assert not cache.put("a", _mapping(tmp_path, "a2", b"2" * 10))  # the first stays
    assert bytes(cache.get("a") or b"") == b"1" * 10 and cache.mapped_bytes == 10


@pytest.mark.parametrize("mapping_bytes", [0, 1 << 20])
def test_populate_leaves_its_mapping_to_the_senders_and_delete_drops_it(tmp_path: Path, mapping_bytes: int) -> None:
    store = FileSystemStore(tmp_path, mapping_bytes=mapping_bytes)
    data = bytes(range(256)) * 2051  # 525,056 bytes, not a whole number of pages
    key, _ = store.put(data)
    assert store.mapped(key) is None  # nothing is mapped until the read-ahead reads the blob
    assert store.populate(key) == len(data)
    view = store.mapped(key)
    if not mapping_bytes:
        assert view is None
        return
    assert view is not None and bytes(view) == data
    store.delete(key)
    assert store.mapped(key) is None and not store.exists(key)
    assert bytes(view[-4:]) == data[-4:]  # a sender's view outlives the blob's entry


def test_populate_of_a_kept_blob_faults_in_its_mapping_again_without_a_new_one(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The study retrieve after a viewer's series: the read-ahead finds the blobs mapped and faults their pages
    in through the kept mappings instead of opening, mapping and unmapping each file once more."""
    store = FileSystemStore(tmp_path, mapping_bytes=1 << 20)
    data = bytes(range(256)) * 2051
    key, _ = store.put(data)
    assert store.populate(key) == len(data)
    first = store.mappings.kept(key)
    assert first is not None

    def no_open(*_args: object, **_kwargs: object) -> int:
        raise AssertionError("a kept blob was opened again")

    monkeypatch.setattr(os, "open", no_open)
    assert store.populate(key) == len(data)
    monkeypatch.undo()
    assert store.mappings.kept(key) is first and len(store.mappings) == 1
    view = store.mapped(key)
    assert view is not None and bytes(view) == data
