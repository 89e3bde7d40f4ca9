"""``telerad import``: feed files, folders and zip archives through the one ingest path."""

from __future__ import annotations

import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from telerad.archive.ingest import Outcome, StoreResult, store
from telerad.context import Context


@dataclass
class ImportSummary:
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)

    def add(self, name: str, result: StoreResult) -> None:
        self.counts[result.outcome.value] += 1
        if not result.ok:
            self.failures.append((name, f"{result.outcome.value} 0x{result.status:04X}: {result.reason}"))


def iter_sources(paths: list[Path]) -> Iterator[tuple[str, int, Callable[[], bytes]]]:
    """Yield (display name, size, reader) for every file in the paths, descending into folders and zips.

    The size is known before anything is read (a zip member's declared size), so an oversized object, or a
    zip bomb, is refused without being inflated."""
    for path in paths:
        if path.is_dir():
            for p in sorted(path.rglob("*")):
                if p.is_file():
                    yield from _file(p)
        elif path.is_file():
            yield from _file(path)
        else:
            raise FileNotFoundError(str(path))


def _file(p: Path) -> Iterator[tuple[str, int, Callable[[], bytes]]]:
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    yield f"{p}!{info.filename}", info.file_size, partial(zf.read, info)
    else:
        yield str(p), p.stat().st_size, p.read_bytes


def count_sources(paths: list[Path]) -> int:
    return sum(1 for _ in iter_sources(paths))


def import_paths(
    ctx: Context, site_id: int, paths: list[Path], progress: Callable[[str], None] | None = None
) -> ImportSummary:
    summary = ImportSummary()
    limit = ctx.settings.max_object_bytes
    for name, size, read in iter_sources(paths):
        if size > limit:
            summary.counts[Outcome.REJECTED.value] += 1
            summary.failures.append((name, f"rejected: {size} bytes exceed the maximum object size of {limit}"))
            if progress:
                progress(name)
            continue
        try:
            data = read()
        except OSError as exc:
            summary.counts[Outcome.REJECTED.value] += 1
            summary.failures.append((name, f"cannot read: {exc}"))
        else:
            summary.add(name, store(ctx, site_id, data, source="import"))
        if progress:
            progress(name)
    if summary.counts[Outcome.STORED.value]:
        ctx.db.analyze()  # a bulk load changes the index's shape: plan queries on fresh statistics
    return summary
