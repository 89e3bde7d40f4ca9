"""Site resolution: known codes are cached per app, unknown codes are never cached (a site added while the
server runs is found at once), and membership changes take effect on the next request."""

from __future__ import annotations

from telerad.archive import registry
from telerad.security import users


def test_site_added_while_serving_is_found(ctx, client):
    assert client.get("/dicom-web/studies", headers={"X-Telerad-Site": "NEW"}).status_code == 404
    registry.add_site(ctx, "NEW", "New Clinic")
    # It exists now, but the caller is not a member: the same 404 as for a site that does not exist.
    assert client.get("/dicom-web/studies", headers={"X-Telerad-Site": "NEW"}).status_code == 404
    users.update_user(ctx, "tester", sites=["GH", "RC", "NEW"])
    assert client.get("/dicom-web/studies", headers={"X-Telerad-Site": "NEW"}).json() == []
    users.update_user(ctx, "tester", sites=["GH", "RC"])
    assert client.get("/dicom-web/studies", headers={"X-Telerad-Site": "NEW"}).status_code == 404
    assert client.get("/dicom-web/studies", headers={"X-Telerad-Site": "NOPE"}).status_code == 404
    # Two sites and none named: the caller must choose.
    r = client.get("/dicom-web/studies", headers={"X-Telerad-Site": ""})
    assert r.status_code == 400 and "X-Telerad-Site" in r.json()["detail"]
