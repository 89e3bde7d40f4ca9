"""The frames shortcut (adapters/dicomweb/frames_shortcut): a plain bearer-token frames request is answered
without the router, exactly as the route answers it (body, headers, audit record); everything else reaches
the route, which answers as it always has."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pydicom
import pytest
from auth_support import add_user, bearer, login
from dicomweb_support import SITE, mr_like, put, sample_file, split_multipart
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import select

from telerad.adapters.dicomweb.frames_shortcut import FramesShortcut
from telerad.app import create_app
from telerad.archive import registry
from telerad.context import Context
from telerad.db.models import ApiToken
from telerad.security import audit, tokens

OCTETS = 'multipart/related; type="application/octet-stream"'


@pytest.fixture
def answered(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """One entry per frames request that reached the shortcut: whether it answered (else the route did)."""
    seen: list[bool] = []
    real = FramesShortcut._answer

    def spy(self: FramesShortcut, scope: dict, path: tuple[str, ...]):  # type: ignore[no-untyped-def]
        response = real(self, scope, path)
        seen.append(response is not None)
        return response

    monkeypatch.setattr(FramesShortcut, "_answer", spy)
    return seen


@pytest.fixture
def app_client(ctx: Context, site: registry.Site, other_site: registry.Site) -> Iterator[TestClient]:
    add_user(ctx, "reader", ["site_staff"], ["GH"])
    with TestClient(create_app(ctx)) as c:
        yield c


def _warm(client: TestClient, headers: dict[str, str], path: str) -> None:
    """A new token's first use is recorded by the route (a write); the requests after it are plain."""
    assert client.get(path + "/frames/1", headers={**headers, "Accept": OCTETS}).status_code == 200


def test_plain_request_is_answered_as_the_route_answers_it(ctx, site, app_client, answered):
    inst = put(ctx, site.id, mr_like(frames=4, size=16))
    auth = bearer(ctx, "reader", "GH")
    _warm(app_client, auth, inst.path)
    assert answered == [False]  # the token's first use: its last-used time is written by the route

    answered.clear()
    fast = app_client.get(inst.path + "/frames/3,1", headers={**auth, "Accept": OCTETS})
    assert answered == [True] and fast.status_code == 200
    with TestClient(create_app(ctx), headers=SITE) as cookie_client:  # a session cookie: always the route
        add_user(ctx, "staff", ["site_staff"], ["GH"])
        login(cookie_client, "staff")
        answered.clear()
        routed = cookie_client.get(inst.path + "/frames/3,1", headers={"Accept": OCTETS})
    assert answered == [False] and routed.status_code == 200

    fast_parts = split_multipart(fast.headers["content-type"], fast.content)
    assert [p for _, p in fast_parts] == [p for _, p in split_multipart(routed.headers["content-type"],
                                                                         routed.content)]
    assert [len(p) for _, p in fast_parts] == [16 * 16 * 2] * 2
    assert fast_parts[0][1] != fast_parts[1][1]  # frames 3 and 1, in that order
    assert {k for k in routed.headers if k != "set-cookie"} == set(fast.headers)
    for name in ("x-content-type-options", "content-security-policy", "x-frame-options", "content-length"):
        assert fast.headers[name] == routed.headers[name]
    assert fast.headers["content-type"].split("; boundary=")[0] == routed.headers["content-type"].split(
        "; boundary=")[0] == 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'

    ctx.audit.flush()
    _, events = audit.search(ctx.db, study_uid=inst.study, action=audit.Action.RETRIEVE)
    by_actor = {e["actor"]: e for e in reversed(events)}  # newest first: keep each actor's latest
    shortcut_event, route_event = by_actor["reader"], by_actor["staff"]
    assert shortcut_event["site"] == route_event["site"] == "GH"
    assert shortcut_event["outcome"] == route_event["outcome"] == audit.SUCCESS
    assert shortcut_event["actor_type"] == "token" and shortcut_event["details"]["token"]
    for key in ("method", "path", "status", "series", "instance"):
        assert shortcut_event["details"][key] == route_event["details"][key]


def test_a_stale_token_use_is_recorded_by_the_route(ctx, site, app_client, answered):
    inst = put(ctx, site.id, mr_like(frames=1, size=16))
    secret, info = tokens.create_token(ctx, "reader", "GH")
    _warm(app_client, {"Authorization": f"Bearer {secret}"}, inst.path)
    with ctx.db.session() as s:
        assert s.execute(select(ApiToken.last_used_at).where(ApiToken.public_id == info.public_id)
                         ).scalar_one() is not None
    assert answered == [False]


@pytest.mark.parametrize(("case", "status"), [
    ("other site's instance", 404), ("unknown instance", 404), ("frame out of range", 404),
    ("malformed frame list", 400), ("malformed UID", 400), ("not acceptable", 406), ("malformed Accept", 400),
    ("revoked token", 401), ("unknown token", 401), ("cookie-less, token-less", 401), ("basic auth", 401),
    ("site the token is not for", 404), ("query string", 200), ("big endian file", 200),
    ("no frame index (deflated)", 200), ("missing blob", 503),
])
def test_everything_else_is_answered_by_the_route(ctx, site, other_site, app_client, answered, case, status):
    inst = put(ctx, site.id, mr_like(frames=2, size=16))
    auth = bearer(ctx, "reader", "GH")
    _warm(app_client, auth, inst.path)
    answered.clear()
    path, headers = inst.path + "/frames/1", {**auth, "Accept": OCTETS}
    if case == "other site's instance":
        path = put(ctx, other_site.id, mr_like(frames=2, size=16)).path + "/frames/1"
    elif case == "unknown instance":
        path = f"{inst.path.rsplit('/', 1)[0]}/{generate_uid()}/frames/1"
    elif case == "frame out of range":
        path = inst.path + "/frames/3"
    elif case == "malformed frame list":
        path = inst.path + "/frames/1,,2"
    elif case == "malformed UID":
        path = inst.path.replace(inst.sop, inst.sop + ".x") + "/frames/1"
    elif case == "not acceptable":
        headers["Accept"] = 'multipart/related; type="image/jpeg"'
    elif case == "malformed Accept":
        headers["Accept"] = 'multipart/related; q=abc'
    elif case == "revoked token":
        public_id = tokens.list_tokens(ctx, "reader")[0].public_id
        tokens.revoke_token(ctx, public_id)
    elif case == "unknown token":
        headers["Authorization"] = "Bearer trd_nope_nope"
    elif case == "cookie-less, token-less":
        del headers["Authorization"]
    elif case == "basic auth":
        headers["Authorization"] = "Basic cmVhZGVyOng="
    elif case == "site the token is not for":
        headers["X-Telerad-Site"] = "RC"
    elif case == "query string":
        path += "?x=1"
    elif case == "big endian file":
        path = put(ctx, site.id, sample_file("MR_small_bigendian.dcm")).path + "/frames/1"
    elif case == "no frame index (deflated)":
        path = put(ctx, site.id, sample_file("image_dfl.dcm")).path + "/frames/1"
    elif case == "missing blob":
        from telerad.archive import retrieve
        stored = retrieve.get_instance(ctx, site.id, inst.study, inst.series, inst.sop)
        ctx.blobs.path(stored.blob_key).unlink()
    r = app_client.get(path, headers=headers)
    assert r.status_code == status, r.text
    # With a query string the shortcut does not even look at the request.
    assert answered == ([] if case == "query string" else [False])


def test_cross_tenant_frame_is_refused_and_audited_as_a_failure(ctx, site, other_site, app_client, answered):
    theirs = put(ctx, other_site.id, mr_like(frames=1, size=16))
    mine = put(ctx, site.id, mr_like(frames=1, size=16))
    auth = bearer(ctx, "reader", "GH")
    _warm(app_client, auth, mine.path)
    answered.clear()
    r = app_client.get(theirs.path + "/frames/1", headers={**auth, "Accept": OCTETS})
    assert r.status_code == 404 and answered == [False]
    ctx.audit.flush()
    _, events = audit.search(ctx.db, study_uid=theirs.study, action=audit.Action.RETRIEVE)
    assert [(e["actor"], e["site"], e["outcome"]) for e in events] == [("reader", "GH", audit.MINOR_FAILURE)]


@pytest.mark.parametrize(("repeated", "status"), [
    ([("Accept", "application/dicom"), ("Accept", OCTETS)], 406),  # the route reads the first
    ([("X-Telerad-Site", "RC"), ("X-Telerad-Site", "GH")], 404),
])
def test_repeated_headers_are_left_to_the_route(ctx, site, app_client, answered, repeated, status):
    inst = put(ctx, site.id, mr_like(frames=1, size=16))
    auth = bearer(ctx, "reader", "GH")
    _warm(app_client, auth, inst.path)
    answered.clear()
    headers = [*auth.items(), *repeated]
    if not any(name == "Accept" for name, _ in repeated):
        headers.append(("Accept", OCTETS))
    r = app_client.get(inst.path + "/frames/1", headers=headers)
    assert r.status_code == status and answered == [False]


def test_a_failure_inside_the_shortcut_is_answered_and_audited_by_the_route(ctx, site, answered, monkeypatch):
    from telerad.archive import retrieve

    add_user(ctx, "reader", ["site_staff"], ["GH"])
    inst = put(ctx, site.id, mr_like(frames=1, size=16))
    auth = bearer(ctx, "reader", "GH")
    with TestClient(create_app(ctx), raise_server_exceptions=False) as client:
        _warm(client, auth, inst.path)
        answered.clear()

        def unreadable(*args, **kwargs):
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(retrieve, "frames", unreadable)
        r = client.get(inst.path + "/frames/1", headers={**auth, "Accept": OCTETS})
    assert r.status_code == 500 and answered == [False]
    ctx.audit.flush()
    _, events = audit.search(ctx.db, study_uid=inst.study, action=audit.Action.RETRIEVE)
    assert events[0]["outcome"] == audit.SERIOUS_FAILURE and events[0]["details"]["status"] == 500


def test_the_same_uids_at_two_sites_are_two_instances(ctx, site, other_site, app_client, answered):
    """UIDs are unique within a site only: each site's token gets its own site's pixels."""
    data = mr_like(frames=1, size=16)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PixelData = bytes(len(ds.PixelData))  # same UIDs, other pixels
    other = io.BytesIO()
    ds.save_as(other)
    mine, theirs = put(ctx, site.id, data), put(ctx, other_site.id, other.getvalue())
    assert mine.path == theirs.path
    add_user(ctx, "rc-reader", ["site_staff"], ["RC"])
    pixels = {}
    for user, code in (("reader", "GH"), ("rc-reader", "RC")):
        auth = bearer(ctx, user, code)
        _warm(app_client, auth, mine.path)
        answered.clear()
        r = app_client.get(mine.path + "/frames/1", headers={**auth, "Accept": OCTETS})
        assert r.status_code == 200 and answered == [True]
        (_, pixels[code]), = split_multipart(r.headers["content-type"], r.content)
    assert pixels["RC"] == bytes(16 * 16 * 2) and pixels["GH"] != pixels["RC"]
