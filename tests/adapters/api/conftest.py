"""Fixtures for the JSON API tests: the app on the test context, two sites, and a client factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from telerad.app import create_app
from telerad.context import Context


@pytest.fixture
def new_client(ctx: Context, site, other_site) -> Iterator[Callable[[], TestClient]]:
    """Independent clients (separate cookie jars) on one app."""
    app = create_app(ctx)
    clients: list[TestClient] = []

    def make() -> TestClient:
        c = TestClient(app, raise_server_exceptions=False)
        c.__enter__()
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.__exit__(None, None, None)
