"""Fixtures for the DIMSE adapter tests: a running listener, registered nodes and the real DCMTK tools."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from adapters.dimse.dimse_support import GH_AE, RC_AE, Dcmtk, StoreSCP
from support import free_port

from telerad.adapters.dimse.server import DimseServer, start_dimse
from telerad.archive import registry
from telerad.context import Context


@pytest.fixture
def dimse(ctx: Context) -> Iterator[DimseServer]:
    server = start_dimse(ctx)  # bound and listening when it returns
    yield server
    server.shutdown()


@pytest.fixture
def dcmtk(ctx: Context, dimse: DimseServer, tmp_path: Path) -> Dcmtk:
    return Dcmtk(ctx.settings.dicom_port, tmp_path / "dcmtk", ctx.settings.ae_title)


@pytest.fixture
def gh_node(ctx: Context, site: registry.Site) -> str:
    registry.add_node(ctx, "GH", GH_AE, "127.0.0.1", free_port(), "GH PACS")
    return GH_AE


@pytest.fixture
def rc_node(ctx: Context, other_site: registry.Site) -> str:
    registry.add_node(ctx, "RC", RC_AE, "127.0.0.1", free_port(), "RC workstation")
    return RC_AE


@pytest.fixture
def storescp_factory(tmp_path: Path) -> Iterator[Callable[[str], StoreSCP]]:
    started: list[StoreSCP] = []

    def make(ae_title: str) -> StoreSCP:
        scp = StoreSCP(ae_title, tmp_path / f"storescp-{ae_title}")
        started.append(scp)
        return scp

    yield make
    for scp in started:
        scp.stop()
