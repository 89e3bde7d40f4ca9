"""Removing orphan blobs: stored files that nothing indexes, without racing a store that wants them again.

Orphans are rare but real: a crash between a blob's naming and its index commit, an object refused at indexing
(its series belongs to another study), or the same instance received again in another file
(:mod:`telerad.archive.sameness`: the copy was made durable before the index was asked). ``telerad check``
lists them; ``telerad check --remove-orphans`` removes those older than a grace period.

The race to avoid: a store whose content is stored already writes nothing and indexes the existing file. It
*claims* the file first (:meth:`~telerad.storage.filesystem.FileSystemStore.claim` sets its mtime), then
commits its index row. A collection therefore (1) takes a file that the index did not reference when it was
listed and that was not claimed since ``since``, (2) moves it out of the store into ``tmp/`` under a name of
its own (one rename, atomic), (3) looks at its mtime again: claimed meanwhile, it goes back under its key; else
it is removed. A store that claims after step 2 finds no file and writes its own copy. A crash between steps 2
and 3 leaves ``tmp/collect-<key>-<random>``, which :func:`recover` puts back when the store is next opened or
the next collection starts.

The grace period must be longer than any store takes from its claim to its commit (:data:`MIN_AGE`): a claim
older than the cut-off is not seen as one. A store that may not set a stored file's mtime (it belongs to another
user) does not rely on that file: it writes its own copy and renames it over the old one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from telerad.storage.filesystem import FileSystemStore

log = logging.getLogger(__name__)

MIN_AGE = 600.0  # seconds: far beyond a store's claim-to-commit (its index retries give up within seconds)
_PREFIX = "collect-"
_ASIDE = re.compile(r"collect-([0-9a-f]{64})(-[0-9a-f]{16})?")


def remove_unclaimed(store: FileSystemStore, key: str, since: float) -> bool:
    """Remove the blob ``key`` unless it was claimed (or written) at or after ``since`` (a ``time.time()``);
    whether it was removed. The caller has checked that the index does not reference it. OSError for a file
    that cannot be moved or removed (permissions, a read-only store)."""
    path = str(store.path(key))
    aside = f"{store.root}/tmp/{_PREFIX}{key}-{secrets.token_hex(8)}"
    try:
        if os.stat(path).st_mtime >= since:
            return False
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    try:
        claimed = os.stat(aside).st_mtime >= since
        if claimed:  # claimed between the first look and the rename: it stays
            _put_back(aside, path)
            return False
        os.unlink(aside)
    except FileNotFoundError:  # put back meanwhile by recover() in another process: it stays
        return False
    except BaseException:  # interrupted (Ctrl-C) or failed while it was aside: back where it was
        with contextlib.suppress(OSError):
            _put_back(aside, path)
        raise
    return True


def recover(store: FileSystemStore) -> list[str]:
    """Blobs a collection had moved aside when it stopped (a crash): each back under its key, unless a new copy
    was stored meanwhile. Their keys."""
    tmp = f"{store.root}/tmp"
    found = []
    for name in os.listdir(tmp):
        m = _ASIDE.fullmatch(name)
        if m:
            try:
                _put_back(f"{tmp}/{name}", str(store.path(m.group(1))))
            except OSError as exc:  # the store still opens; the blob waits in tmp/ for someone to look
                log.error("blob %s, set aside by a collection, cannot be put back: %s", m.group(1), exc)
                continue
            found.append(m.group(1))
    return found


def _put_back(aside: str, path: str) -> None:
    """Name ``aside`` ``path`` again, durably, then drop the name ``aside``."""
    try:
        os.link(aside, path)
    except FileExistsError:  # a copy stored meanwhile: the same bytes
        pass
    except FileNotFoundError:  # put back already, by another process's recover()
        return
    fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(aside)
