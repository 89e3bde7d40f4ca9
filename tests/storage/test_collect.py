"""Orphan blobs removed only when nothing wanted them since the cut-off, and never lost to a store."""

from __future__ import annotations

import hashlib
import os
import time

import pytest
from support import leftovers

from telerad.storage import collect
from telerad.storage.filesystem import FileSystemStore

LONG_AGO = 1_000_000.0


@pytest.fixture
def store(tmp_path) -> FileSystemStore:
    return FileSystemStore(tmp_path)


def aged(store: FileSystemStore, data: bytes) -> str:
    key, _ = store.put(data)
    os.utime(store.path(key), (LONG_AGO, LONG_AGO))
    return key


def test_an_orphan_not_wanted_since_the_cut_off_is_removed(store, tmp_path):
    key = aged(store, b"orphan")
    assert collect.remove_unclaimed(store, key, since=time.time() - 60)
    assert not store.exists(key) and list((tmp_path / "tmp").iterdir()) == []


def test_a_blob_written_or_claimed_after_the_cut_off_stays(store):
    fresh, _ = store.put(b"written just now")
    claimed = aged(store, b"stored long ago, wanted again")
    assert store.claim(claimed)  # a store found it stored already and will index it
    since = time.time() - 60
    assert not collect.remove_unclaimed(store, fresh, since)
    assert not collect.remove_unclaimed(store, claimed, since)
    assert store.path(fresh).read_bytes() == b"written just now"
    assert store.path(claimed).read_bytes() == b"stored long ago, wanted again"


def test_claimed_between_the_first_look_and_the_rename_it_goes_back(store, tmp_path, monkeypatch):
    """The race the protocol is for: a store claims the file just as it is being moved aside."""
    key = aged(store, b"wanted at the last moment")
    real_rename = os.rename

    def rename_after_a_claim(src, dst):
        store.claim(key)
        real_rename(src, dst)

    monkeypatch.setattr(collect.os, "rename", rename_after_a_claim)
    assert not collect.remove_unclaimed(store, key, since=time.time() - 60)
    assert store.path(key).read_bytes() == b"wanted at the last moment"
    assert list((tmp_path / "tmp").iterdir()) == []


def test_once_moved_aside_a_store_writes_its_own_copy(store, tmp_path, monkeypatch):
    """A store that looks for the content after the rename does not find it: it writes and names its own."""
    data = b"stored again while collected"
    key = aged(store, data)
    real_unlink = os.unlink
    placed = []

    def store_then_unlink(path, *args, **kwargs):
        placed.append(store.put(data))  # claim fails (moved aside): written and named anew
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(collect.os, "unlink", store_then_unlink)
    assert collect.remove_unclaimed(store, key, since=time.time() - 60)  # the old copy went
    assert placed == [(key, len(data))]
    assert store.path(key).read_bytes() == data and store.verify(key)
    assert leftovers(tmp_path) == []


def test_a_collection_cut_short_is_put_back_when_the_store_is_opened(tmp_path):
    store = FileSystemStore(tmp_path)
    key = aged(store, b"moved aside, then the process died")
    os.rename(store.path(key), tmp_path / "tmp" / f"collect-{key}")
    other = hashlib.sha256(b"a copy stored meanwhile").hexdigest()
    store.put(b"a copy stored meanwhile")
    os.link(store.path(other), tmp_path / "tmp" / f"collect-{other}")
    (tmp_path / "tmp" / "collect-not-a-key").write_bytes(b"left alone")
    reopened = FileSystemStore(tmp_path)
    assert reopened.path(key).read_bytes() == b"moved aside, then the process died"
    assert reopened.path(other).read_bytes() == b"a copy stored meanwhile"
    assert sorted(p.name for p in (tmp_path / "tmp").iterdir()) == ["collect-not-a-key"]


def test_claim_says_whether_the_blob_is_stored(store):
    key = aged(store, b"here")
    assert store.claim(key) and store.path(key).stat().st_mtime > LONG_AGO
    assert not store.claim(hashlib.sha256(b"never stored").hexdigest())
