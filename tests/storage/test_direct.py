"""Blobs written with O_DIRECT (storage/direct.py through FileSystemStore(direct_write=True))."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading

import pytest
from support import leftovers, resident_pages

from telerad.storage import direct
from telerad.storage.filesystem import FileSystemStore

SIZES = [0, 1, direct.ALIGN - 1, direct.ALIGN, direct.ALIGN + 1, 512 * 512 * 2 + 1234,
         direct.BUFFER_BYTES + direct.ALIGN + 7]


@pytest.mark.parametrize("size", SIZES)
def test_direct_write_stores_exact_bytes_and_length(tmp_path, size):
    store = FileSystemStore(tmp_path, direct_write=True)
    data = os.urandom(size)
    key, n = store.put(data)
    assert (key, n) == (hashlib.sha256(data).hexdigest(), size)
    assert store.path(key).stat().st_size == size  # the padding to a whole block is cut off
    assert store.path(key).read_bytes() == data and store.verify(key)
    assert store.direct_write  # ext4 took O_DIRECT: no fallback
    assert leftovers(tmp_path) == []


def test_direct_write_bypasses_the_page_cache_and_buffered_does_not(tmp_path):
    data = os.urandom(1 << 20)
    direct_key, _ = FileSystemStore(tmp_path / "d", direct_write=True).put(data)
    buffered_key, _ = FileSystemStore(tmp_path / "b").put(data)
    assert resident_pages(tmp_path / "d" / direct_key[:2] / direct_key) == 0
    assert resident_pages(tmp_path / "b" / buffered_key[:2] / buffered_key) == len(data) // 4096


def test_concurrent_direct_writes_do_not_mix_buffers(tmp_path):
    store = FileSystemStore(tmp_path, direct_write=True)
    blobs = [os.urandom(300_000 + i) for i in range(24)]
    keys: list[str] = []
    errors: list[BaseException] = []

    def put(chunk: list[bytes]) -> None:
        try:
            keys.extend(store.put(b)[0] for b in chunk)
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(blobs[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(keys) == sorted(hashlib.sha256(b).hexdigest() for b in blobs)
    for b in blobs:
        assert store.path(hashlib.sha256(b).hexdigest()).read_bytes() == b


def test_a_failed_direct_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    """Whatever stops a write half-way (here a MemoryError, injected: it cannot be provoked on demand), the
    temporary file goes and the error reaches the caller: nothing half-written is ever renamed into place."""
    store = FileSystemStore(tmp_path, direct_write=True)

    def fail(fd: int, data: bytes) -> None:
        raise MemoryError("injected")

    monkeypatch.setattr(direct, "write_all", fail)
    with pytest.raises(MemoryError):
        store.put(b"x" * 10_000)
    assert leftovers(tmp_path) == []
    assert not store.path(hashlib.sha256(b"x" * 10_000).hexdigest()).exists()
    assert store.direct_write


_RAMFS_SCRIPT = """
import hashlib, json, logging, os, sys
from telerad.storage.filesystem import FileSystemStore
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
store = FileSystemStore(sys.argv[1], direct_write=True)
first, second = os.urandom(70000), os.urandom(5000)
keys = [store.put(first)[0], store.put(second)[0]]
print(json.dumps({"direct": store.direct_write,
                  "ok": [store.path(k).read_bytes() == d for k, d in zip(keys, (first, second))],
                  "keys": keys == [hashlib.sha256(first).hexdigest(), hashlib.sha256(second).hexdigest()],
                  "tmp": os.listdir(os.path.join(sys.argv[1], "tmp"))}))
"""


def test_a_file_system_that_refuses_o_direct_gets_buffered_writes(tmp_path):
    """ramfs refuses O_DIRECT (EINVAL at open): the first put falls back, stores the blob, and says so once.
    Mounted in a new user and mount namespace, so this needs no privileges and leaves nothing mounted."""
    mnt = tmp_path / "ramfs"
    mnt.mkdir()
    r = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
         f'mount -t ramfs none "$1" && exec "{sys.executable}" -c "$2" "$1"', "sh", str(mnt), _RAMFS_SCRIPT],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"direct": False, "ok": [True, True], "keys": True, "tmp": []}
    assert r.stderr.count("refuses O_DIRECT") == 1
