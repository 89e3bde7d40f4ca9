"""Fixtures for the DICOMweb adapter tests: the ASGI app on the test context and stored objects."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from auth_support import add_user, login
from dicomweb_support import SITE, Stored, put, read, sample_file
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from telerad.app import create_app
from telerad.archive import registry
from telerad.archive.demo import ct_series
from telerad.context import Context


@pytest.fixture
def client(ctx: Context, site: registry.Site, other_site: registry.Site) -> Iterator[TestClient]:
    """Signed in as site staff of both GH and RC; ``X-Telerad-Site`` (default GH) picks the site."""
    add_user(ctx, "tester", ["site_staff"], ["GH", "RC"])
    with TestClient(create_app(ctx), headers=SITE) as c:
        login(c, "tester")
        yield c


@pytest.fixture
def ct(ctx: Context, site: registry.Site) -> list[Stored]:
    """A three-slice CT series of site GH."""
    blobs = ct_series(("Doe^John", "P1", "19700101", "M"), generate_uid(), "ACC1", slices=3, size=32)
    return [put(ctx, site.id, b) for b in blobs]


@pytest.fixture
def jpeg(ctx: Context, site: registry.Site) -> Stored:
    return put(ctx, site.id, sample_file("SC_rgb_jpeg_dcmtk.dcm"))


@pytest.fixture
def multiframe_jpeg(ctx: Context, site: registry.Site) -> Stored:
    data = sample_file("examples_ybr_color.dcm")
    assert read(data, stop_before_pixels=True).NumberOfFrames == 30
    return put(ctx, site.id, data)
