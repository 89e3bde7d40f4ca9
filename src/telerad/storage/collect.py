"""Removing orphan blobs: stored files that nothing indexes, without racing a store that wants them again.

Orphans are rare but real: a crash between a blob's naming and its index commit, an object refused at indexing
(its series belongs to another study), or the same instance received again in another file
(:mod:`telerad.archive.sameness`: the copy was made durable before the index was asked). ``telerad check``
lists them; ``telerad check --remove-orphans`` removes those older than a grace period.

The race to avoid: a store whose content is stored already writes nothing and indexes the existing file. It
*claims* the file first (:meth:`~telerad.storage.filesystem.FileSystemStore.claim` sets its mtime), then
commits its index row. A collection therefore (1) takes a file that the index did not reference when it was
listed and that was not claimed since ``since``, (2) moves it out of the store into ``tmp/`` (one rename,
atomic), (3) looks at its mtime again: claimed meanwhile, it goes back under its key; else it is removed. A
store that claims after step 2 finds no file and writes its own copy. A crash between steps 2 and 3 leaves
``tmp/collect-<key>``, which :func:`recover` puts back when the store is next opened.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from telerad.storage.filesystem import FileSystemStore

_PREFIX = "collect-"
_KEY = re.compile(r"[0-9a-f]{64}")


def remove_unclaimed(store: FileSystemStore, key: str, since: float) -> bool:
    """Remove the blob ``key`` unless it was claimed (or written) at or after ``since`` (a ``time.time()``);
    whether it was removed. The caller has checked that the index does not reference it."""
    path = store.path(key)
    aside = f"{store.root}/tmp/{_PREFIX}{key}"
    try:
        if os.stat(path).st_mtime >= since:
            return False
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    if os.stat(aside).st_mtime >= since:  # claimed between the first look and the rename: it stays
        _put_back(aside, str(path))
        return False
    os.unlink(aside)
    return True


def recover(store: FileSystemStore) -> list[str]:
    """Blobs a collection had moved aside when it stopped (a crash): each back under its key, unless a new copy
    was stored meanwhile. Their keys."""
    tmp = f"{store.root}/tmp"
    found = []
    for name in os.listdir(tmp):
        key = name[len(_PREFIX):]
        if name.startswith(_PREFIX) and _KEY.fullmatch(key):
            _put_back(f"{tmp}/{name}", str(store.path(key)))
            found.append(key)
    return found


def _put_back(aside: str, path: str) -> None:
    """Name ``aside`` ``path`` again, durably, then drop the name ``aside``."""
    with contextlib.suppress(FileExistsError):  # never over a copy stored meanwhile: the same bytes
        os.link(aside, path)
    fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(aside)
