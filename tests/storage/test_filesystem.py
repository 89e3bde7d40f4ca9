from __future__ import annotations

import hashlib
import os

import pytest
from support import leftovers

from telerad.storage import filesystem
from telerad.storage.filesystem import LAYOUT_VERSION, FileSystemStore, InvalidKey


@pytest.fixture(params=["unnamed", "named"])
def temp_files(request, monkeypatch) -> str:
    """Each staging test runs with unnamed temporary files (O_TMPFILE, where the file system has them) and with
    the named ones a store uses elsewhere."""
    if request.param == "named":
        monkeypatch.setattr(filesystem, "_links_unnamed", lambda directory: False)
    return request.param


def test_content_addressed_and_idempotent(tmp_path, temp_files):
    store = FileSystemStore(tmp_path)
    key, size = store.put(b"hello")
    assert key == hashlib.sha256(b"hello").hexdigest() and size == 5
    assert store.put_chunks([b"he", b"llo"]) == (key, 5)
    assert store.path(key).read_bytes() == b"hello"
    assert store.read_range(key, 1, 3) == b"ell"
    assert leftovers(tmp_path) == []


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


def test_one_level_fan_out_made_when_the_store_is_opened(tmp_path):
    store = FileSystemStore(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if len(p.name) == 2) == [f"{i:02x}" for i in range(256)]
    assert (tmp_path / "layout").read_bytes() == LAYOUT_VERSION
    key, _ = store.put(b"one level")
    assert store.path(key) == tmp_path / key[:2] / key and store.path(key).read_bytes() == b"one level"


def test_a_store_in_the_two_level_layout_is_moved_into_one_level_when_opened(tmp_path):
    blobs = {hashlib.sha256(b"blob %d" % i).hexdigest(): b"blob %d" % i for i in range(20)}
    for key, data in blobs.items():
        (tmp_path / key[:2] / key[2:4]).mkdir(parents=True, exist_ok=True)
        (tmp_path / key[:2] / key[2:4] / key).write_bytes(data)
    stray_key = next(iter(blobs))
    (tmp_path / stray_key[:2] / stray_key[2:4] / "notes.txt").write_text("not a blob")

    store = FileSystemStore(tmp_path)
    for key, data in blobs.items():
        assert store.path(key).read_bytes() == data and store.verify(key)
        assert not (tmp_path / key[:2] / key[2:4] / key).exists()
    leaves = [p for fan in tmp_path.iterdir() if fan.is_dir() for p in fan.iterdir() if p.is_dir()]
    assert leaves == [tmp_path / stray_key[:2] / stray_key[2:4]]  # kept: it holds something not a blob
    assert (tmp_path / "layout").exists()
    assert store.put(b"blob 3") == (hashlib.sha256(b"blob 3").hexdigest(), 6)  # already there: no new copy


def test_the_layout_is_upgraded_once(tmp_path):
    FileSystemStore(tmp_path)
    (tmp_path / "ab" / "cd").mkdir()
    (tmp_path / "ab" / "cd" / ("ab" + "0" * 62)).write_bytes(b"x")
    FileSystemStore(tmp_path)  # the layout file says it is done: nothing is walked or moved again
    assert (tmp_path / "ab" / "cd" / ("ab" + "0" * 62)).exists()


def test_a_removed_fan_out_directory_is_made_again(tmp_path, temp_files):
    store = FileSystemStore(tmp_path)
    key = hashlib.sha256(b"again").hexdigest()
    (tmp_path / key[:2]).rmdir()
    assert store.put(b"again") == (key, 5) and store.path(key).read_bytes() == b"again"


def test_a_staged_blob_is_invisible_until_placed(tmp_path, temp_files):
    store = FileSystemStore(tmp_path)
    staged = store.stage(b"staged bytes")
    assert staged.key == hashlib.sha256(b"staged bytes").hexdigest() and staged.size == 12
    assert not store.exists(staged.key)
    assert staged.path is not None and open(staged.path, "rb").read() == b"staged bytes"
    assert store.place(staged) == (staged.key, 12)
    assert store.path(staged.key).read_bytes() == b"staged bytes"
    assert leftovers(tmp_path) == []
    again = store.stage(b"staged bytes")  # stored already: nothing is written
    assert again.path is None and store.place(again) == (staged.key, 12)


def test_a_discarded_stage_leaves_nothing(tmp_path, temp_files):
    store = FileSystemStore(tmp_path)
    staged = store.stage_in_background(b"rejected object").result()
    store.discard(staged)
    assert leftovers(tmp_path) == [] and not store.exists(staged.key)
    store.discard(staged)  # twice is harmless
    store.close()


def test_background_staging_runs_on_staging_threads_of_this_process(tmp_path, temp_files):
    import threading

    store = FileSystemStore(tmp_path)
    real = store._write_staged
    names: list[str] = []

    def spy(*args):
        names.append(threading.current_thread().name)
        return real(*args)

    store._write_staged = spy  # type: ignore[method-assign]
    futures = [store.stage_in_background(bytes([i]) * 1000) for i in range(20)]
    keys = {store.place(f.result())[0] for f in futures}
    assert len(keys) == 20 and all(store.exists(k) for k in keys)
    assert len(names) == 20 and all(n.startswith("blob-stage") for n in names)
    assert leftovers(tmp_path) == []
    store.close()


def test_a_background_staging_is_writing_when_it_returns(tmp_path, temp_files, monkeypatch):
    """The staging thread has begun the write by the time stage_in_background returns, so the caller's parse
    overlaps it (a thread started while the caller holds the GIL would otherwise wait for the parse to end)."""
    import threading

    entered = threading.Event()
    release = threading.Event()
    real = filesystem._write_all

    def slow_write(fd: int, data: bytes) -> None:
        entered.set()
        assert release.wait(10)
        real(fd, data)

    monkeypatch.setattr(filesystem, "_write_all", slow_write)
    store = FileSystemStore(tmp_path)
    future = store.stage_in_background(b"parsed meanwhile")
    assert entered.wait(5) and not future.done()
    release.set()
    staged = future.result()
    assert staged.path is not None and open(staged.path, "rb").read() == b"parsed meanwhile"
    assert store.place(staged)[0] == staged.key and store.path(staged.key).read_bytes() == b"parsed meanwhile"
    store.close()


def test_a_failed_write_leaves_no_staged_file(tmp_path, temp_files, monkeypatch):
    import errno

    def full(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(filesystem, "_write_all", full)
    store = FileSystemStore(tmp_path)
    for stage in (store.stage, lambda data: store.stage_in_background(data).result()):
        with pytest.raises(OSError):
            stage(b"no room")
        assert leftovers(tmp_path) == []
    store.close()


def test_close_stops_the_staging_threads(tmp_path):
    import threading

    def staging() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("blob-stage")}

    others = staging()  # other tests' stores
    store = FileSystemStore(tmp_path)
    store.place(store.stage_in_background(b"x").result())
    assert staging() - others
    store.close()
    assert not staging() - others
    assert store.place(store.stage_in_background(b"y").result())[1] == 1  # usable again after close
    store.close()
    assert not staging() - others


@pytest.mark.parametrize("direct_write", [False, True], ids=["buffered", "direct"])
def test_background_staging_of_stored_content_keeps_the_stored_blob_and_removes_its_write(tmp_path, temp_files,
                                                                                          direct_write):
    """The write starts before the hash tells that the content is stored already: the stored blob stays as it
    is, and the new write's temporary file is removed once it ends."""
    import time

    store = FileSystemStore(tmp_path, direct_write=direct_write)
    data = os.urandom(300_000)
    key, _ = store.put(data)
    os.utime(store.path(key), (1_000_000, 1_000_000))  # written long ago
    before = store.path(key).stat()
    again = store.stage_in_background(data).result()
    assert (again.key, again.size, again.path) == (key, len(data), None)
    assert store.place(again) == (key, len(data))
    deadline = time.monotonic() + 10
    while leftovers(tmp_path):
        assert time.monotonic() < deadline, "the redundant write's file stayed behind"
        time.sleep(0.01)
    after = store.path(key).stat()
    assert after.st_ino == before.st_ino and after.st_size == before.st_size
    assert after.st_mtime > time.time() - 60  # claimed: wanted again now (telerad.storage.collect)
    assert store.verify(key)
    store.close()


def test_staged_files_are_unnamed_where_the_file_system_allows(tmp_path):
    """ext4 (this machine's, and CI's) has O_TMPFILE: a staged blob has no name anywhere until it is placed."""
    store = FileSystemStore(tmp_path, direct_write=True)
    assert store.unnamed_temp
    staged = store.stage(b"x" * 5000)
    assert staged.tmp is None and staged.unnamed is not None
    assert list((tmp_path / "tmp").iterdir()) == [] and len(leftovers(tmp_path)) == 1
    assert not store.exists(staged.key)
    store.place(staged)
    assert store.path(staged.key).read_bytes() == b"x" * 5000 and store.path(staged.key).stat().st_nlink == 1
    assert leftovers(tmp_path) == []


def test_the_same_content_staged_twice_is_placed_once(tmp_path, temp_files):
    """Two writers of the same object at once (the key was free when each started): both succeed, one blob."""
    store = FileSystemStore(tmp_path)
    first, second = store.stage(b"same bytes"), store.stage(b"same bytes")
    assert first.path is not None and second.path is not None
    assert store.place(first) == store.place(second) == (hashlib.sha256(b"same bytes").hexdigest(), 10)
    assert store.path(first.key).read_bytes() == b"same bytes" and leftovers(tmp_path) == []
    assert [p.name for p in (tmp_path / first.key[:2]).iterdir()] == [first.key]
