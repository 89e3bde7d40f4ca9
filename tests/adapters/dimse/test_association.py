"""Association acceptance by calling AE title (PS3.8 9.3.4) and C-ECHO (PS3.7 9.1.5), via DCMTK echoscu."""

from __future__ import annotations

from pathlib import Path

from adapters.dimse.dimse_support import GH_AE, RC_AE, Dcmtk, write_files
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from telerad.archive import registry
from telerad.archive.demo import cr_image
from telerad.context import Context
from telerad.db.models import Instance, Site


def _site_of(ctx: Context, code: str) -> int:
    with ctx.db.session() as s:
        return s.execute(select(Site.id).where(Site.code == code)).scalar_one()


def test_echo_from_registered_node(dcmtk: Dcmtk, gh_node: str) -> None:
    r = dcmtk.echo(gh_node)
    assert r.rc == 0, r.out
    assert "Received Echo Response (Success)" in r


def test_unregistered_calling_ae_is_rejected(dcmtk: Dcmtk, gh_node: str) -> None:
    r = dcmtk.echo("INTRUDER")
    assert r.rc != 0
    assert "Association Rejected" in r
    assert "Calling AE Title Not Recognized" in r
    assert "Rejected Permanent" in r


def test_rejection_is_result_1_source_1_diagnostic_3(ctx: Context, dimse: object, gh_node: str) -> None:
    """The exact A-ASSOCIATE-RJ parameters (PS3.8 Table 9-21), seen by a pynetdicom requestor."""
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", ctx.settings.dicom_port, ae_title=ctx.settings.ae_title)
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)
    ae.shutdown()

    ae = AE(ae_title=GH_AE)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", ctx.settings.dicom_port, ae_title=ctx.settings.ae_title)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    ae.shutdown()


def test_unregistered_loopback_rejected_without_opt_in(dcmtk: Dcmtk, site: registry.Site,
                                                       other_site: registry.Site) -> None:
    assert not site.accept_unregistered_loopback and not other_site.accept_unregistered_loopback
    r = dcmtk.echo("LAPTOP")
    assert r.rc != 0 and "Calling AE Title Not Recognized" in r


def test_unregistered_loopback_accepted_when_site_opts_in(ctx: Context, dcmtk: Dcmtk, site: registry.Site,
                                                          tmp_path: Path) -> None:
    registry.add_site(ctx, "DEMO", "Demo site", accept_unregistered_loopback=True)
    r = dcmtk.echo("LAPTOP")
    assert r.rc == 0, r.out
    assert "Received Echo Response (Success)" in r

    files = write_files(tmp_path / "in", [cr_image(("Demo^Pat", "D1", "19800101", "F"), generate_uid(), "A1")])
    r = dcmtk.store("LAPTOP", files)
    assert r.rc == 0, r.out
    with ctx.db.session() as s:
        rows = s.execute(select(Instance.site_id, Instance.source_ae)).all()
    assert rows == [(_site_of(ctx, "DEMO"), "LAPTOP")]


def test_registered_node_keeps_its_site_when_loopback_demo_site_exists(
        ctx: Context, dcmtk: Dcmtk, rc_node: str, tmp_path: Path) -> None:
    registry.add_site(ctx, "DEMO", "Demo site", accept_unregistered_loopback=True)
    files = write_files(tmp_path / "in", [cr_image(("Rc^Pat", "R1", "19800101", "F"), generate_uid(), "A1")])
    r = dcmtk.store(RC_AE, files)
    assert r.rc == 0, r.out
    with ctx.db.session() as s:
        assert s.execute(select(Instance.site_id)).scalars().all() == [_site_of(ctx, "RC")]


def test_node_registered_while_server_runs_is_accepted(ctx: Context, dcmtk: Dcmtk, site: registry.Site) -> None:
    assert dcmtk.echo("LATE_NODE").rc != 0
    registry.add_node(ctx, "GH", "LATE_NODE", "127.0.0.1", 104)
    assert dcmtk.echo("LATE_NODE").rc == 0
