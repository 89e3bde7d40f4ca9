"""Core statements compiled once per dialect and run on a bare DBAPI cursor (sqlite3 or psycopg).

Why: SQLAlchemy's execution machinery (a ``Connection``, its transaction, the compiled-cache lookup, the result
object) costs ~0.1 ms of CPU per statement under the GIL, against ~0.02 ms for the driver. That matters on the
few statements that run for every object or request: the ingest index (:mod:`telerad.archive.ingest`), the
bearer-token check and the QIDO-RS search (measured: SQLAlchemy's part of the two was ~29 % of the server's
CPU per QIDO request). Everything else stays on SQLAlchemy.

The statements are still written with SQLAlchemy Core and compiled by the dialect, so the SQL is the same
SQL; what this module adds is the parameter order for positional paramstyles, and the dialect's result
processors (SQLite keeps DATETIME as text and BOOLEAN as 0/1), applied as SQLAlchemy's result would.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from sqlalchemy import ClauseElement, Dialect
from sqlalchemy.sql import Select


class NotCompilable(ValueError):
    """A statement that only SQLAlchemy can run: its SQL depends on the values (an expanding ``IN``)."""


class Compiled:
    """A Core statement compiled for ``dialect``: its SQL, its parameters' order (positional paramstyles, as
    sqlite3's) or None (named ones, as psycopg's), and for a select, how its rows are read.

    Raises :class:`NotCompilable` for a statement whose SQL is only complete once the values are known.
    """

    def __init__(self, stmt: ClauseElement, dialect: Dialect, keys: list[str] | None = None) -> None:
        compiled: Any = stmt.compile(dialect=dialect, column_keys=keys)
        if getattr(compiled, "post_compile_params", None) or getattr(compiled, "literal_execute_params", None):
            raise NotCompilable("the statement's SQL depends on its values (expanding or literal parameters)")
        self.sql: str = compiled.string
        order = getattr(compiled, "positiontup", None)  # SQLCompiler's: the bind names in positional order
        self.order = tuple(order) if order else None
        binds = getattr(compiled, "binds", {})
        self.names = frozenset(binds)
        # Values the statement carries itself (the 1 of ``num_instances + 1``); bindparam() ones come per call.
        self.fixed = {name: value for name, value in compiled.params.items()
                      if value is not None and name in binds and not binds[name].required}
        self.processors: tuple[Callable[[Any], Any] | None, ...] | None = None
        self.row_type: Any = None
        if isinstance(stmt, Select):
            columns = list(stmt.selected_columns)
            found = tuple(c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns)
            self.processors = found if any(p is not None for p in found) else None
            self.row_type = namedtuple("Row", [c.key or f"c{i}" for i, c in enumerate(columns)],  # type: ignore[misc]
                                       rename=True)

    def params(self, values: dict[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        if self.fixed:
            values = {**self.fixed, **values}
        if self.order is None:
            return {k: v for k, v in values.items() if k in self.names}
        return tuple(values[k] for k in self.order)

    def run(self, cur: Any, values: dict[str, Any]) -> None:
        cur.execute(self.sql, self.params(values))

    def all(self, cur: Any, values: dict[str, Any]) -> list[Any]:
        """Every row, as tuples (converted by the dialect's result processors, if any)."""
        cur.execute(self.sql, self.params(values))
        rows = cur.fetchall()
        procs = self.processors
        if procs is None:
            return rows  # type: ignore[no-any-return]
        return [tuple(v if p is None else p(v) for p, v in zip(procs, row, strict=True)) for row in rows]

    def first(self, cur: Any, values: dict[str, Any]) -> Any:
        """The first row, or None; the rest are read too (SQLite ends a statement when it is read to the end)."""
        rows = self.all(cur, values)
        return rows[0] if rows else None

    def first_named(self, cur: Any, values: dict[str, Any]) -> Any:
        """The first row of a select with its columns as attributes (``row.secret_hash``), or None."""
        row = self.first(cur, values)
        return None if row is None else self.row_type._make(row)

    def scalar(self, cur: Any, values: dict[str, Any]) -> Any:
        row = self.first(cur, values)
        return None if row is None else row[0]


class CompiledCache:
    """Statements compiled once per dialect name, by a key of the caller's (a name, or a query's shape)."""

    def __init__(self, max_size: int = 512) -> None:
        self.max_size = max_size
        self._found: dict[tuple[str, str, Any], Compiled | None] = {}

    def get(self, key: Any, stmt: ClauseElement, dialect: Dialect) -> Compiled | None:
        """The compiled ``stmt`` (built with ``key``), or None where it is :class:`NotCompilable`."""
        k = (dialect.name, dialect.driver, key)
        try:
            return self._found[k]
        except KeyError:
            pass
        try:
            found: Compiled | None = Compiled(stmt, dialect)
        except NotCompilable:
            found = None
        if len(self._found) >= self.max_size:
            self._found.clear()
        self._found[k] = found
        return found


T = TypeVar("T")


class PerDialect(Generic[T]):
    """``factory(dialect)`` made once per dialect name, on first use: a module's set of compiled statements."""

    def __init__(self, factory: Callable[[Dialect], T]) -> None:
        self._factory = factory
        self._made: dict[str, T] = {}

    def __call__(self, dialect: Dialect) -> T:
        found = self._made.get(dialect.name)
        if found is None:
            found = self._made[dialect.name] = self._factory(dialect)
        return found
