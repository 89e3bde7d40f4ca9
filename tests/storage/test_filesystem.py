from __future__ import annotations

import hashlib

import pytest

from telerad.storage.filesystem import FileSystemStore, InvalidKey


def test_content_addressed_and_idempotent(tmp_path):
    store = FileSystemStore(tmp_path)
    key, size = store.put(b"hello")
    assert key == hashlib.sha256(b"hello").hexdigest() and size == 5
    assert store.put_chunks([b"he", b"llo"]) == (key, 5)
    assert store.path(key).read_bytes() == b"hello"
    assert store.read_range(key, 1, 3) == b"ell"
    assert list((tmp_path / "tmp").iterdir()) == []


def test_keys_cannot_traverse(tmp_path):
    store = FileSystemStore(tmp_path)
    for bad in ["../../etc/passwd", "A" * 64, "", "0" * 63]:
        with pytest.raises(InvalidKey):
            store.path(bad)


def test_verify_detects_corruption(tmp_path):
    store = FileSystemStore(tmp_path)
    key, _ = store.put(b"payload")
    assert store.verify(key)
    store.path(key).write_bytes(b"tampered")
    assert not store.verify(key)
    store.delete(key)
    assert not store.verify(key)
