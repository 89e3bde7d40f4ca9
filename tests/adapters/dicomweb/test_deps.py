"""Site resolution: known codes are cached per app, unknown codes are never cached (a site added while the
server runs is found at once)."""

from __future__ import annotations

from telerad.archive import registry


def test_site_added_while_serving_is_found(ctx, client):
    assert client.get("/dicom-web/studies", headers={"X-Telerad-Site": "NEW"}).status_code == 404
    registry.add_site(ctx, "NEW", "New Clinic")
    assert client.get("/dicom-web/studies", headers={"X-Telerad-Site": "NEW"}).json() == []
    assert client.get("/dicom-web/studies", headers={"X-Telerad-Site": "NOPE"}).status_code == 404
    assert client.get("/dicom-web/studies", headers={"X-Telerad-Site": ""}).status_code == 400
