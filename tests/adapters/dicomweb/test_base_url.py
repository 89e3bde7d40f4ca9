"""RetrieveURL and BulkDataURI use ``public_base_url`` when configured (reverse proxies, clients whose Host
header lacks the port), else the URL the client reached."""

from __future__ import annotations

from auth_support import bearer


def test_public_base_url_in_metadata_and_qido(ctx, client, ct):
    # A bearer token: the session cookie changes its name (__Host- prefix) once the public URL is https.
    client.headers.update(bearer(ctx, "tester", "GH"))
    study = ct[0].study
    meta = client.get(f"/dicom-web/studies/{study}/metadata").json()
    assert meta[0]["7FE00010"]["BulkDataURI"].startswith(f"http://testserver/dicom-web/studies/{study}/")
    ctx.settings.public_base_url = "https://pacs.example.org/"
    meta = client.get(f"/dicom-web/studies/{study}/metadata").json()
    assert meta[0]["7FE00010"]["BulkDataURI"].startswith(f"https://pacs.example.org/dicom-web/studies/{study}/")
    found = client.get("/dicom-web/studies", params={"StudyInstanceUID": study}).json()
    assert found[0]["00081190"]["Value"] == [f"https://pacs.example.org/dicom-web/studies/{study}"]
