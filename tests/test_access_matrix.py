"""The route x role x tenant matrix (issue 3): for EVERY HTTP route, no credentials -> 401, a role without the
route's permission -> 403, another site's resource -> 404 exactly like a resource that does not exist.

``ROUTES`` must name every route the app serves: adding a route without adding it here fails
:func:`test_every_route_is_in_the_matrix`, so no endpoint ships without these checks. DIMSE services are
covered at the end (an unregistered or foreign node is rejected; a node sees only its own site).
"""

from __future__ import annotations

from typing import Any

import pytest
from auth_support import add_user, login
from dicomweb_support import multipart_body, put
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from telerad.app import PUBLIC_ROUTES, create_app
from telerad.archive import registry
from telerad.archive.demo import ct_series
from telerad.security import tokens

# permission -> (a role that has it, a role that lacks it)
READ, STORE, USERS, SITES, AUDIT, GLASS, ANY = ("archive.read", "archive.store", "users.manage", "sites.manage",
                                                 "audit.read", "break_glass", "any")
HOLDER = {READ: "site_staff", STORE: "site_staff", USERS: "admin", SITES: "admin", AUDIT: "qa_reviewer",
          GLASS: "admin", ANY: "site_staff"}
LACKS = {READ: "admin", STORE: "radiologist", USERS: "site_staff", SITES: "radiologist", AUDIT: "site_staff",
         GLASS: "coordinator"}

INST = "/dicom-web/studies/{study}/series/{series}/instances/{instance}"
# (method, path) -> (permission, scope): "site" routes act on one site's data and get the cross-tenant checks.
ROUTES: dict[tuple[str, str], tuple[str, str]] = {
    ("GET", "/dicom-web/studies"): (READ, "site"),
    ("GET", "/dicom-web/series"): (READ, "site"),
    ("GET", "/dicom-web/instances"): (READ, "site"),
    ("GET", "/dicom-web/studies/{study}/series"): (READ, "site"),
    ("GET", "/dicom-web/studies/{study}/instances"): (READ, "site"),
    ("GET", "/dicom-web/studies/{study}/series/{series}/instances"): (READ, "site"),
    ("GET", "/dicom-web/studies/{study}"): (READ, "site"),
    ("GET", "/dicom-web/studies/{study}/series/{series}"): (READ, "site"),
    ("GET", INST): (READ, "site"),
    ("GET", "/dicom-web/studies/{study}/metadata"): (READ, "site"),
    ("GET", "/dicom-web/studies/{study}/series/{series}/metadata"): (READ, "site"),
    ("GET", INST + "/metadata"): (READ, "site"),
    ("GET", INST + "/frames/{frame_list}"): (READ, "site"),
    ("GET", INST + "/bulk/{tag}"): (READ, "site"),
    ("GET", INST + "/rendered"): (READ, "site"),
    ("GET", INST + "/frames/{frame}/rendered"): (READ, "site"),
    ("GET", INST + "/thumbnail"): (READ, "site"),
    ("GET", INST + "/frames/{frame}/thumbnail"): (READ, "site"),
    ("GET", "/dicom-web/studies/{study}/thumbnail"): (READ, "site"),
    ("GET", "/dicom-web/studies/{study}/series/{series}/thumbnail"): (READ, "site"),
    ("POST", "/dicom-web/studies"): (STORE, "site"),
    ("POST", "/dicom-web/studies/{study}"): (STORE, "site"),
    ("GET", "/wado"): (READ, "site"),
    ("POST", "/api/auth/logout"): (ANY, "self"),
    ("GET", "/api/auth/me"): (ANY, "self"),
    ("POST", "/api/auth/totp/setup"): (ANY, "self"),
    ("POST", "/api/auth/totp/confirm"): (ANY, "self"),
    ("POST", "/api/auth/totp/verify"): (ANY, "self"),
    ("POST", "/api/auth/break-glass"): (GLASS, "global"),
    ("GET", "/api/users"): (USERS, "global"),
    ("POST", "/api/users"): (USERS, "global"),
    ("PATCH", "/api/users/{username}"): (USERS, "global"),
    ("POST", "/api/users/{username}/totp-reset"): (USERS, "global"),
    ("GET", "/api/tokens"): (ANY, "self"),
    ("POST", "/api/tokens"): (ANY, "self"),
    ("DELETE", "/api/tokens/{token_id}"): (ANY, "owner"),
    ("GET", "/api/sites"): (SITES, "global"),
    ("POST", "/api/sites"): (SITES, "global"),
    ("GET", "/api/sites/{code}/nodes"): (SITES, "global"),
    ("POST", "/api/sites/{code}/nodes"): (SITES, "global"),
    ("GET", "/api/audit"): (AUDIT, "global"),
    ("GET", "/api/audit/verify"): (AUDIT, "global"),
}


def _app_routes(app: Any) -> set[tuple[str, str]]:
    """Every (method, path) the app serves: the OpenAPI description lists them all (no route of telerad is
    hidden from it; the check below would not see one that were)."""
    out = set()
    for path, operations in app.openapi()["paths"].items():
        for method in operations:
            out.add((method.upper(), path))
    return out


@pytest.fixture
def world(ctx):
    """Sites GH and RC, a CT study at GH, a user of every role at GH and RC, and a token of another user."""
    ctx.settings.mfa_required_roles = []  # TOTP is tested on its own; here every role signs in with a password
    gh = registry.add_site(ctx, "GH", "General Hospital")
    registry.add_site(ctx, "RC", "Rural Clinic")
    study = generate_uid()
    blobs = ct_series(("Matrix^Pat", "MX1", "19700101", "F"), study, "MX", slices=1, size=16)
    inst = put(ctx, gh.id, blobs[0])
    for role in ("site_staff", "radiologist", "qa_reviewer", "coordinator", "admin"):
        add_user(ctx, f"{role}-gh", [role], ["GH"])
        add_user(ctx, f"{role}-rc", [role], ["RC"])
    _, foreign_token = tokens.create_token(ctx, "site_staff-gh", "GH", name="someone else's")
    return {"study": inst.study, "series": inst.series, "instance": inst.sop, "frame": "1", "frame_list": "1",
            "tag": "7FE00010", "username": "site_staff-gh", "token_id": foreign_token.public_id, "code": "GH",
            "data": blobs[0]}


def _url(path: str, world: dict[str, Any]) -> str:
    url = path.format(**{k: v for k, v in world.items() if k != "data"})
    if path == "/wado":
        url += (f"?requestType=WADO&studyUID={world['study']}&seriesUID={world['series']}"
                f"&objectUID={world['instance']}&contentType=application/dicom")
    return url


def _call(client: TestClient, method: str, path: str, world: dict[str, Any], **headers: str) -> Any:
    url = _url(path, world)
    kwargs: dict[str, Any] = {"headers": headers}
    if method == "POST" and path.startswith("/dicom-web"):
        body, ctype = multipart_body([world["data"]])
        kwargs = {"headers": {**headers, "Content-Type": ctype}, "content": body}
    elif method in ("POST", "PATCH"):
        kwargs["json"] = {}
    return client.request(method, url, **kwargs)


@pytest.fixture
def app(ctx, world):
    return create_app(ctx)


def _signed_in(app: Any, username: str) -> TestClient:
    client = TestClient(app, raise_server_exceptions=False)
    login(client, username)
    return client


def test_every_route_is_in_the_matrix(app):
    served = _app_routes(app)
    assert set(PUBLIC_ROUTES) <= served
    unlisted = served - set(ROUTES) - set(PUBLIC_ROUTES)
    assert not unlisted, f"routes without access-control tests: add them to ROUTES: {sorted(unlisted)}"
    stale = set(ROUTES) - served
    assert not stale, f"ROUTES names routes the app does not serve: {sorted(stale)}"


def test_no_credentials_is_401_everywhere(app, world):
    client = TestClient(app, raise_server_exceptions=False)
    wrong = {}
    for (method, path) in ROUTES:
        for headers in ({}, {"Authorization": "Bearer trd_nope_nope"}, {"Authorization": "Basic YTpi"},
                        {"Cookie": "telerad_session=forged"}):
            r = _call(client, method, path, world, **headers)
            if r.status_code != 401:
                wrong[(method, path, str(headers))] = r.status_code
    assert not wrong, wrong


def test_public_routes_answer_without_credentials(app):
    client = TestClient(app, raise_server_exceptions=False)
    assert client.get("/healthz").status_code == 200
    assert client.post("/api/auth/login", json={"username": "x", "password": "y"}).status_code == 401
    assert client.get("/openapi.json").status_code == 200


def test_a_role_without_the_permission_is_403(app, world):
    clients = {role: _signed_in(app, f"{role}-gh") for role in set(LACKS.values())}
    wrong = {}
    for (method, path), (perm, _scope) in ROUTES.items():
        if perm == ANY:
            continue
        r = _call(clients[LACKS[perm]], method, path, world, **{"X-Telerad-Site": "GH"})
        if r.status_code != 403:
            wrong[(method, path, LACKS[perm])] = (r.status_code, r.text[:100])
    assert not wrong, wrong


def test_the_right_role_at_the_right_site_gets_through(app, world):
    """The control for the 404s below: the same requests succeed for the owner (so a 404 means 'not yours')."""
    clients = {role: _signed_in(app, f"{role}-gh") for role in set(HOLDER.values())}
    wrong = {}
    for (method, path), (perm, _scope) in ROUTES.items():
        if (method, path) in (("POST", "/api/auth/logout"), ("POST", "/api/auth/totp/verify")):
            continue  # logout ends the session the loop uses; verify needs a pending session (test_oidc.py)
        r = _call(clients[HOLDER[perm]], method, path, world, **{"X-Telerad-Site": "GH"})
        if r.status_code in (401, 403, 404) or r.status_code >= 500:
            wrong[(method, path)] = (r.status_code, r.text[:100])
    assert not wrong, wrong


def test_another_sites_resource_is_404_like_a_missing_one(app, world):
    """A member of RC with the right role, asking for GH's data: by naming GH, or through its own site."""
    wrong = {}
    for (method, path), (perm, scope) in ROUTES.items():
        if scope != "site":
            continue
        client = _signed_in(app, f"{HOLDER[perm]}-rc")
        named = _call(client, method, path, world, **{"X-Telerad-Site": "GH"})
        if named.status_code != 404:
            wrong[(method, path, "X-Telerad-Site: GH")] = named.status_code
        if method != "GET":  # a STOW to its own site is simply a store into RC's own namespace
            continue
        own = _call(client, method, path, world, **{"X-Telerad-Site": "RC"})
        if "{study}" in path or path == "/wado":
            if own.status_code != 404:
                wrong[(method, path, "own site, GH's UIDs")] = own.status_code
        elif own.status_code != 200 or world["study"] in own.text:
            wrong[(method, path, "own site search")] = (own.status_code, own.text[:100])
        ghost = dict(world, study=generate_uid(), series=generate_uid(), instance=generate_uid())
        if "{study}" in path:
            missing = _call(client, method, path, ghost, **{"X-Telerad-Site": "RC"})
            if missing.status_code != 404:
                wrong[(method, path, "missing")] = missing.status_code
    assert not wrong, wrong


def test_bearer_tokens_are_bound_to_their_site_and_roles(app, ctx, world):
    client = TestClient(app, raise_server_exceptions=False)
    add_user(ctx, "both", ["site_staff", "qa_reviewer"], ["GH", "RC"])
    secret, _ = tokens.create_token(ctx, "both", "RC", ["site_staff"])
    auth = {"Authorization": f"Bearer {secret}"}
    study = f"/dicom-web/studies/{world['study']}/metadata"
    assert client.get(study, headers=auth).status_code == 404  # the token's own site: RC
    assert client.get(study, headers={**auth, "X-Telerad-Site": "GH"}).status_code == 404  # a member, not the token
    assert client.get("/api/audit", headers=auth).status_code == 403  # qa_reviewer not granted to the token
    gh_secret, _ = tokens.create_token(ctx, "both", "GH", ["site_staff"])
    assert client.get(study, headers={"Authorization": f"Bearer {gh_secret}"}).status_code == 200


def test_tokens_of_other_users_are_404(app, world):
    client = _signed_in(app, "site_staff-rc")
    r = client.delete(f"/api/tokens/{world['token_id']}")
    assert r.status_code == 404
    assert client.delete("/api/tokens/000000000000").status_code == 404
    assert world["token_id"] not in client.get("/api/tokens").text



# -- DIMSE ------------------------------------------------------------------------------------------------------------
# DICOM nodes have no roles (a node is its site's modality or PACS), so "wrong role -> 403" has no DIMSE analogue;
# "no credentials" is an unregistered or wrongly bound calling AE title (association rejected 1/1/3, see also
# adapters/dimse/test_association.py and test_node_binding.py), and "another site's resource" is answered as
# if it did not exist. Storage commitment of another site's instance: test_commitment.py (failure 0x0112).
DIMSE_SERVICES = {"VerificationServiceClass", "StorageServiceClass", "QueryRetrieveServiceClass",
                  "StorageCommitmentServiceClass"}


@pytest.fixture
def dimse_world(ctx, world):
    from telerad.adapters.dimse.server import start_dimse

    registry.add_node(ctx, "GH", "GH_PACS", "127.0.0.1", 1)
    registry.add_node(ctx, "RC", "RC_PACS", "127.0.0.1", 1)
    server = start_dimse(ctx)
    yield server
    server.shutdown()


def _service_families(server: Any) -> dict[str, str]:
    from pynetdicom.sop_class import uid_to_service_class

    out: dict[str, str] = {}
    for cx in server.ae.supported_contexts:
        out.setdefault(uid_to_service_class(cx.abstract_syntax).__name__, cx.abstract_syntax)
    return out


def _associate(ctx, calling: str, abstract_syntax: str) -> Any:
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.add_requested_context(abstract_syntax)
    return ae.associate("127.0.0.1", ctx.settings.dicom_port, ae_title=ctx.settings.ae_title)


def test_every_dimse_service_is_in_the_matrix(dimse_world):
    server = dimse_world
    assert set(_service_families(server)) == DIMSE_SERVICES


def test_unregistered_node_is_rejected_for_every_dimse_service(ctx, dimse_world):
    server = dimse_world
    for family, abstract_syntax in _service_families(server).items():
        assoc = _associate(ctx, "INTRUDER", abstract_syntax)
        assert assoc.is_rejected, family
        rj = assoc.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (1, 1, 3), family


def test_another_sites_node_finds_and_gets_nothing_of_gh(ctx, dimse_world, world):
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelGet,
    )

    query = Dataset()
    query.QueryRetrieveLevel, query.StudyInstanceUID, query.PatientID = "STUDY", world["study"], ""
    for calling, expected in (("GH_PACS", 1), ("RC_PACS", 0)):
        assoc = _associate(ctx, calling, StudyRootQueryRetrieveInformationModelFind)
        assert assoc.is_established
        matches = [i for st, i in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
                   if st and st.Status in (0xFF00, 0xFF01)]
        assoc.release()
        assert len(matches) == expected, calling
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    ae = AE(ae_title="RC_PACS")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    received: list[Any] = []
    assoc = ae.associate("127.0.0.1", ctx.settings.dicom_port, ae_title=ctx.settings.ae_title,
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, lambda event: received.append(event) or 0x0000)])
    assert assoc.is_established
    statuses = [st for st, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet) if st]
    assoc.release()
    assert received == [] and statuses[-1].Status in (0x0000, 0xA701, 0xC000)
    assert getattr(statuses[-1], "NumberOfCompletedSuboperations", 0) == 0
