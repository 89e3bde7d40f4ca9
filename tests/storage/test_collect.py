"""Orphan blobs removed only when nothing wanted them since the cut-off, and never lost to a store."""

from __future__ import annotations

import hashlib
import os
import time

import pytest
from support import leftovers

from telerad.storage import collect, filesystem
from telerad.storage.filesystem import FileSystemStore

LONG_AGO = 1_000_000.0


@pytest.fixture(params=["unnamed", "named"])
def store(request, tmp_path, monkeypatch) -> FileSystemStore:
    """Stores that write through unnamed temporary files (O_TMPFILE, linked) and through named ones (renamed)."""
    if request.param == "named":
        monkeypatch.setattr(filesystem, "_links_unnamed", lambda directory: False)
    return FileSystemStore(tmp_path)


def aged(store: FileSystemStore, data: bytes) -> str:
    key, _ = store.put(data)
    os.utime(store.path(key), (LONG_AGO, LONG_AGO))
    return key


def aside(tmp_path) -> list[str]:
    return [p.name for p in (tmp_path / "tmp").iterdir()]


def during(monkeypatch, name: str, action) -> None:
    """Run ``action`` just before the collection's own ``os.<name>`` of a file moved aside (``collect-...``);
    every other call goes straight through."""
    real = getattr(os, name)

    def wrapped(*args, **kwargs):
        if any("/tmp/collect-" in str(a) for a in args):
            action()
        return real(*args, **kwargs)

    monkeypatch.setattr(collect.os, name, wrapped)


def test_an_orphan_not_wanted_since_the_cut_off_is_removed(store, tmp_path):
    key = aged(store, b"orphan")
    assert collect.remove_unclaimed(store, key, since=time.time() - 60)
    assert not store.exists(key) and aside(tmp_path) == []


def test_a_blob_written_or_claimed_after_the_cut_off_stays(store):
    fresh, _ = store.put(b"written just now")
    claimed = aged(store, b"stored long ago, wanted again")
    assert store.claim(claimed)  # a store found it stored already and will index it
    since = time.time() - 60
    assert not collect.remove_unclaimed(store, fresh, since)
    assert not collect.remove_unclaimed(store, claimed, since)
    assert store.path(fresh).read_bytes() == b"written just now"
    assert store.path(claimed).read_bytes() == b"stored long ago, wanted again"


def test_a_store_of_the_same_content_claims_the_stored_file(store):
    """Through either way of staging (in the background as ingest does, or not), content found stored is
    claimed, and its name made durable again, before the caller indexes it."""
    key = aged(store, b"sent twice")
    assert store.put(b"sent twice") == (key, 10)
    assert store.path(key).stat().st_mtime > LONG_AGO
    os.utime(store.path(key), (LONG_AGO, LONG_AGO))
    assert store.place(store.stage_in_background(b"sent twice").result()) == (key, 10)
    assert store.path(key).stat().st_mtime > LONG_AGO
    store.close()


def test_claimed_between_the_first_look_and_the_rename_it_goes_back(store, tmp_path, monkeypatch):
    """The race the protocol is for: a store claims the file just as it is being moved aside."""
    key = aged(store, b"wanted at the last moment")
    real_rename = os.rename

    def claim_then_rename(src, dst):
        if "/tmp/collect-" in str(dst):
            store.claim(key)
        real_rename(src, dst)

    monkeypatch.setattr(collect.os, "rename", claim_then_rename)
    assert not collect.remove_unclaimed(store, key, since=time.time() - 60)
    assert store.path(key).read_bytes() == b"wanted at the last moment"
    assert aside(tmp_path) == []


def test_once_moved_aside_a_store_writes_its_own_copy(store, tmp_path, monkeypatch):
    """A store that looks for the content after the rename does not find it: it writes and names its own."""
    data = b"stored again while collected"
    key = aged(store, data)
    placed = []
    during(monkeypatch, "unlink", lambda: placed.append(store.put(data)))
    assert collect.remove_unclaimed(store, key, since=time.time() - 60)  # the old copy went
    assert placed == [(key, len(data))]
    assert store.path(key).read_bytes() == data and store.verify(key)
    assert leftovers(tmp_path) == []


def test_two_collections_at_once_never_remove_a_new_copy(store, tmp_path, monkeypatch):
    """Collection A has moved K aside and is about to remove it; a store writes a new K; collection B, which
    had looked at K while it was old, moves the new K aside, under a name of its own, sees the new copy's
    mtime and puts it back; then A removes its own file: the old copy only, and no error. (With one aside
    name for both, B's rename would replace A's file, and A would remove the new copy or fail.)"""
    data = b"collected twice at once"
    key = aged(store, data)
    since = time.time() - 60

    def store_and_collection_b() -> None:
        store.put(data)  # A's copy is aside: a new one is written
        monkeypatch.undo()
        os.utime(store.path(key), (LONG_AGO, LONG_AGO))  # B looked while K was old: as if the write were old
        real_stat = os.stat
        looks = []

        def stat_once_old(path, *args, **kwargs):
            result = real_stat(path, *args, **kwargs)
            looks.append(path)
            return result

        monkeypatch.setattr(collect.os, "stat", stat_once_old)
        original_rename = os.rename

        def rename_after_write(src, dst):
            original_rename(src, dst)
            if "/tmp/collect-" in str(dst):
                os.utime(dst)  # the new copy's real mtime: written just now
        monkeypatch.setattr(collect.os, "rename", rename_after_write)
        assert not collect.remove_unclaimed(store, key, since)  # B puts the new copy back
        monkeypatch.undo()

    during(monkeypatch, "unlink", store_and_collection_b)
    assert collect.remove_unclaimed(store, key, since)  # A removed its own aside file: the old copy
    assert store.path(key).read_bytes() == data and store.verify(key)
    assert aside(tmp_path) == []


def test_a_recovery_during_a_collection_keeps_the_blob(store, tmp_path, monkeypatch):
    """Another process opens the store (recover) right after the collection moved the file aside."""
    key = aged(store, b"put back by another process")
    real_rename = os.rename

    def rename_then_recover(src, dst):
        real_rename(src, dst)
        if "/tmp/collect-" in str(dst):
            assert collect.recover(store) == [key]

    monkeypatch.setattr(collect.os, "rename", rename_then_recover)
    assert not collect.remove_unclaimed(store, key, since=time.time() - 60)
    assert store.path(key).read_bytes() == b"put back by another process" and aside(tmp_path) == []


def test_a_collection_cut_short_is_put_back_when_the_store_is_opened(tmp_path):
    store = FileSystemStore(tmp_path)
    key = aged(store, b"moved aside, then the process died")
    os.rename(store.path(key), tmp_path / "tmp" / f"collect-{key}-0123456789abcdef")
    other = hashlib.sha256(b"a copy stored meanwhile").hexdigest()
    store.put(b"a copy stored meanwhile")
    os.link(store.path(other), tmp_path / "tmp" / f"collect-{other}-fedcba9876543210")
    (tmp_path / "tmp" / "collect-not-a-key").write_bytes(b"left alone")
    reopened = FileSystemStore(tmp_path)
    assert reopened.path(key).read_bytes() == b"moved aside, then the process died"
    assert reopened.path(other).read_bytes() == b"a copy stored meanwhile"
    assert aside(tmp_path) == ["collect-not-a-key"]


def test_claim_says_whether_the_blob_is_stored(store):
    key = aged(store, b"here")
    assert store.claim(key) and store.path(key).stat().st_mtime > LONG_AGO
    assert not store.claim(hashlib.sha256(b"never stored").hexdigest())


def test_a_stored_file_the_store_may_not_claim_is_replaced_by_its_own_copy(store, monkeypatch):
    """A blob another user wrote (restored from a backup, say): ``utime`` is refused, so a claim would not be
    recorded and a collection could take the file. The store writes its copy and renames it over the old one."""
    data = os.urandom(5000)
    key = aged(store, data)
    before = store.path(key).stat().st_ino
    real_utime = os.utime

    def refused(path, *args, **kwargs):
        if str(path).endswith(key) and not args and not kwargs:
            raise PermissionError(1, "Operation not permitted", str(path))
        return real_utime(path, *args, **kwargs)

    monkeypatch.setattr(filesystem.os, "utime", refused)
    assert not store.claim(key)
    assert store.put(data) == (key, len(data))
    assert store.path(key).stat().st_ino != before and store.verify(key)
    assert store.place(store.stage_in_background(data).result()) == (key, len(data)) and store.verify(key)
    assert store.path(key).stat().st_mtime > LONG_AGO
    store.close()


def test_an_interrupted_collection_puts_the_file_back(store, tmp_path, monkeypatch):
    key = aged(store, b"collection stopped by Ctrl-C")

    interrupted = []

    def interrupt() -> None:
        if not interrupted:  # once, just before the removal
            interrupted.append(True)
            raise KeyboardInterrupt

    during(monkeypatch, "unlink", interrupt)
    with pytest.raises(KeyboardInterrupt):
        collect.remove_unclaimed(store, key, since=time.time() - 60)
    assert store.path(key).read_bytes() == b"collection stopped by Ctrl-C" and aside(tmp_path) == []


def test_a_file_that_cannot_be_put_back_does_not_stop_the_store_opening(tmp_path, monkeypatch, caplog):
    store = FileSystemStore(tmp_path)
    key = aged(store, b"stuck aside")
    os.rename(store.path(key), tmp_path / "tmp" / f"collect-{key}-0123456789abcdef")

    def refused(aside: str, path: str) -> None:
        raise PermissionError(1, "Operation not permitted", aside)

    monkeypatch.setattr(collect, "_put_back", refused)
    FileSystemStore(tmp_path)
    assert "cannot be put back" in caplog.text and aside(tmp_path) == [f"collect-{key}-0123456789abcdef"]
