"""Shared fixtures. The suite runs against SQLite by default and against PostgreSQL when
TELERAD_TEST_DATABASE_URL is set (``make test`` runs both)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from support import free_port

from telerad.archive import registry
from telerad.config import Settings, make_settings
from telerad.context import Context

PG_URL = os.environ.get("TELERAD_TEST_DATABASE_URL", "")


def _reset_postgres(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests never read the developer's TELERAD_* variables or telerad.toml."""
    for var in list(os.environ):
        if var.startswith("TELERAD_") and var != "TELERAD_TEST_DATABASE_URL":
            monkeypatch.delenv(var)
    monkeypatch.setenv("TELERAD_CONFIG", str(tmp_path / "no-such-telerad.toml"))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    overrides: dict[str, object] = {"home": tmp_path / "home", "http_port": free_port(), "dicom_port": free_port()}
    if PG_URL:
        _reset_postgres(PG_URL)
        overrides["database_url"] = PG_URL
    return make_settings(**overrides)


@pytest.fixture
def ctx(settings: Settings) -> Iterator[Context]:
    c = Context.open(settings)
    yield c
    c.close()


@pytest.fixture
def site(ctx: Context) -> registry.Site:
    return registry.add_site(ctx, "GH", "General Hospital")


@pytest.fixture
def other_site(ctx: Context) -> registry.Site:
    return registry.add_site(ctx, "RC", "Rural Clinic")
