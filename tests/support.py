"""Helpers shared by tests (importable as ``support``; tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def uvicorn_thread(app: Any, port: int | None = None, **config: Any) -> Iterator[int]:
    """A real uvicorn server for ``app`` on 127.0.0.1 in a thread, started before the block and stopped after
    it; the block gets the port. ``config``: more uvicorn.Config arguments (http protocol, TLS files...)."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert thread.is_alive(), "uvicorn stopped before it started"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def resident_pages(path: Path | str) -> int:
    """Pages of ``path`` in the page cache, by util-linux ``fincore``."""
    out = subprocess.run(["fincore", "--raw", "--noheadings", "--output", "PAGES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def written_through_cache(path: Path | str) -> int:
    """Pages of a blob written with O_DIRECT that are in the page cache once it is written: its last partial
    page, written through the cache (storage/direct.py), or none."""
    return 1 if os.stat(path).st_size % 4096 else 0


def wait_until_resident(paths: list[Path], timeout: float = 10.0) -> bool:
    """Wait for every page of each of ``paths`` to be in the page cache (background reads complete on the
    disk's time); False if that did not happen within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if all(resident_pages(p) == -(-p.stat().st_size // 4096) for p in paths):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def leftovers(root) -> list[str]:
    """Temporary files left behind: named ones in ``tmp/``, and unnamed ones this process still holds open
    (their descriptors read as ``<root>/tmp/#<inode> (deleted)``)."""
    tmp = f"{root}/tmp/"
    found = [str(p) for p in (root / "tmp").iterdir()]
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(tmp):
                found.append(target)
    return found
