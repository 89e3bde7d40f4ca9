"""C-GET and C-MOVE SCPs (PS3.4 C.4.2, C.4.3) driven by DCMTK getscu / movescu and a DCMTK storescp.

What is retrieved is what was stored: the Data Set bytes of every received file equal those of the stored
blob (only the File Meta group is rebuilt by the receiver). A node sees only its own site's instances, and a
C-MOVE goes only to a registered node of the caller's site.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
from adapters.dimse.dimse_support import GH_AE, RC_AE, Dcmtk, StoreSCP, dataset_bytes, sample
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select
from support import wait_until_resident

from telerad.adapters.dimse.retrieve import matching_instances
from telerad.archive import registry
from telerad.archive.demo import cr_image, ct_series
from telerad.archive.ingest import store
from telerad.context import Context
from telerad.db.models import Instance

PATIENT = ("Retrieve^Pat", "RT001", "19500101", "O")
BOTH = pytest.mark.parametrize("model", ["-P", "-S"], ids=["patient-root", "study-root"])


@dataclass
class Study:
    uid: str
    ct_series: str
    sops: list[str]  # CT slices then the CR image
    originals: dict[str, bytes]  # SOP Instance UID -> the Part 10 bytes sent


@pytest.fixture
def gh_study(ctx: Context, site: registry.Site, other_site: registry.Site, gh_node: str, rc_node: str) -> Study:
    uid = generate_uid()
    blobs = ct_series(PATIENT, uid, "R1", 3, size=64) + [cr_image(PATIENT, uid, "R1")]
    originals = {}
    for data in blobs:
        r = store(ctx, site.id, data, "fixture")
        assert r.ok, r.reason
        originals[r.sop_instance_uid] = data
    sops = list(originals)
    ct = pydicom.dcmread(pydicom.filebase.DicomBytesIO(blobs[0]), stop_before_pixels=True).SeriesInstanceUID
    return Study(uid, ct, sops, originals)


def completed(output: str) -> int:
    """Number of Completed Sub-operations of the final response, as DCMTK prints it."""
    found = re.findall(r"Completed Suboperations\s*:\s*(\d+)", output)
    assert found, output
    return int(found[-1])


def stored_dataset(ctx: Context, sop_uid: str) -> bytes:
    with ctx.db.session() as s:
        key = s.execute(select(Instance.blob_key).where(Instance.sop_uid == sop_uid)).scalar_one()
    return dataset_bytes(ctx.blobs.path(key).read_bytes())


def assert_identical(ctx: Context, files: list[Path], study: Study | None, expected: set[str]) -> None:
    got = {}
    for f in files:
        data = f.read_bytes()
        got[pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID] = data
    assert set(got) == expected
    for uid, data in got.items():
        assert dataset_bytes(data) == stored_dataset(ctx, uid)
        if study is not None:
            assert dataset_bytes(data) == dataset_bytes(study.originals[uid])


# --- C-GET ---------------------------------------------------------------------------------------------

@BOTH
def test_get_study_is_byte_identical(ctx: Context, dcmtk: Dcmtk, gh_study: Study, model: str) -> None:
    keys = ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={gh_study.uid}"]
    if model == "-P":
        keys.append(f"PatientID={PATIENT[1]}")
    r, files = dcmtk.get(GH_AE, model, keys)
    assert r.rc == 0, r.out
    assert_identical(ctx, files, gh_study, set(gh_study.sops))


def test_get_goes_on_past_an_unreadable_stored_file(ctx: Context, dcmtk: Dcmtk, gh_study: Study) -> None:
    """The lean C-GET reads each next file while the requestor stores the current one: a file that cannot
    be read is a failed sub-operation (PS3.4 C.4.3.1.4), the ones around it still go out."""
    lost = gh_study.sops[1]
    with ctx.db.session() as s:
        key = s.execute(select(Instance.blob_key).where(Instance.sop_uid == lost)).scalar_one()
    ctx.blobs.path(key).unlink()
    r, files = dcmtk.get(GH_AE, "-S", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={gh_study.uid}"])
    assert_identical(ctx, files, gh_study, set(gh_study.sops) - {lost})
    assert "Number of Failed Suboperations    : 1" in r.out, r.out
    r, files = dcmtk.get(GH_AE, "-S", ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={gh_study.uid}",
                                      f"SeriesInstanceUID={gh_study.ct_series}", f"SOPInstanceUID={gh_study.sops[0]}"])
    assert r.rc == 0, r.out
    assert_identical(ctx, files, gh_study, {gh_study.sops[0]})


@BOTH
def test_get_series_and_image_levels(ctx: Context, dcmtk: Dcmtk, gh_study: Study, model: str) -> None:
    r, files = dcmtk.get(GH_AE, model, ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={gh_study.uid}",
                                        f"SeriesInstanceUID={gh_study.ct_series}"])
    assert r.rc == 0, r.out
    assert_identical(ctx, files, gh_study, set(gh_study.sops[:3]))

    wanted = gh_study.sops[0:2]
    r, files = dcmtk.get(GH_AE, model, ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={gh_study.uid}",
                                        f"SeriesInstanceUID={gh_study.ct_series}",
                                        f"SOPInstanceUID={wanted[0]}\\{wanted[1]}"])
    assert r.rc == 0, r.out
    assert_identical(ctx, files, gh_study, set(wanted))


@BOTH
def test_other_sites_node_gets_nothing(dcmtk: Dcmtk, gh_study: Study, model: str) -> None:
    r, files = dcmtk.get(RC_AE, model, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={gh_study.uid}"], "-d")
    assert r.rc == 0, r.out
    assert files == []
    assert completed(r.out) == 0


def test_compressed_instance_is_not_transcoded(ctx: Context, dcmtk: Dcmtk, site: registry.Site, gh_node: str,
                                               tmp_path: Path) -> None:
    path, uid = sample("SC_rgb_jpeg_dcmtk.dcm", tmp_path / "src")
    assert store(ctx, site.id, path.read_bytes(), "fixture").ok
    keys = ["QueryRetrieveLevel=IMAGE", f"SOPInstanceUID={uid}"]
    # getscu accepting only uncompressed transfer syntaxes: the sub-operation fails, nothing is decompressed.
    r, files = dcmtk.get(GH_AE, "-S", keys, "-d")
    assert files == []
    assert "0xa702" in r.out.lower()  # Refused: Out of Resources - Unable to perform sub-operations
    # getscu accepting JPEG Baseline: the stored file goes out as it is.
    r, files = dcmtk.get(GH_AE, "-S", keys, "+xy")
    assert r.rc == 0, r.out
    [f] = files
    assert pydicom.dcmread(f).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert dataset_bytes(f.read_bytes()) == stored_dataset(ctx, uid) == dataset_bytes(path.read_bytes())


def test_get_without_the_levels_unique_key_fails(dcmtk: Dcmtk, gh_study: Study) -> None:
    r, files = dcmtk.get(GH_AE, "-S", ["QueryRetrieveLevel=STUDY", "PatientName=Retrieve*"], "-d")
    assert files == []
    assert "DIMSE Status                  : 0xc" in r.out  # Failed: Unable to process (PS3.4 C.4.3.1.5)


# --- C-MOVE --------------------------------------------------------------------------------------------

@BOTH
def test_move_study_to_registered_node_of_same_site(ctx: Context, dcmtk: Dcmtk, gh_study: Study, model: str,
                                                    storescp_factory: Callable[[str], StoreSCP]) -> None:
    scp = storescp_factory("GH_VIEWER")
    registry.add_node(ctx, "GH", "GH_VIEWER", "127.0.0.1", scp.port)
    r = dcmtk.move(GH_AE, model, "GH_VIEWER", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={gh_study.uid}"])
    assert r.rc == 0, r.out
    assert completed(r.out) == 4
    assert_identical(ctx, scp.files(), gh_study, set(gh_study.sops))


def test_move_keeps_each_stored_transfer_syntax(ctx: Context, dcmtk: Dcmtk, site: registry.Site, gh_node: str,
                                                tmp_path: Path, storescp_factory: Callable[[str], StoreSCP]) -> None:
    study = generate_uid()
    names = ["CT_small.dcm", "MR_small_implicit.dcm", "SC_rgb_jpeg_dcmtk.dcm", "MR_small_jpeg_ls_lossless.dcm",
             "JPEG2000.dcm", "SC_rgb_rle.dcm", "image_dfl.dcm", "MR_small_bigendian.dcm"]
    uids = set()
    for name in names:
        path, uid = sample(name, tmp_path / "src", StudyInstanceUID=study, PatientID="MIX1")
        assert store(ctx, site.id, path.read_bytes(), "fixture").ok
        uids.add(uid)
    scp = storescp_factory("GH_VIEWER")
    registry.add_node(ctx, "GH", "GH_VIEWER", "127.0.0.1", scp.port)
    r = dcmtk.move(GH_AE, "-S", "GH_VIEWER", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}"])
    assert r.rc == 0, r.out
    assert_identical(ctx, scp.files(), None, uids)
    with ctx.db.session() as s:
        stored_ts = dict(s.execute(select(Instance.sop_uid, Instance.transfer_syntax_uid)).all())
    for f in scp.files():
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert ds.file_meta.TransferSyntaxUID == stored_ts[ds.SOPInstanceUID]


def test_move_to_unknown_destination_is_a801(ctx: Context, dcmtk: Dcmtk, gh_study: Study) -> None:
    r = dcmtk.move(GH_AE, "-S", "NOWHERE", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={gh_study.uid}"])
    assert "0xa801" in r.out.lower()  # Move Destination unknown (PS3.4 C.4.2.1.5)


def test_move_to_another_sites_node_is_a801(ctx: Context, dcmtk: Dcmtk, gh_study: Study,
                                            storescp_factory: Callable[[str], StoreSCP]) -> None:
    scp = storescp_factory("RC_VIEWER")
    registry.add_node(ctx, "RC", "RC_VIEWER", "127.0.0.1", scp.port)
    r = dcmtk.move(GH_AE, "-S", "RC_VIEWER", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={gh_study.uid}"])
    assert "0xa801" in r.out.lower()
    assert scp.files() == []


@BOTH
def test_other_sites_node_moves_nothing(ctx: Context, dcmtk: Dcmtk, gh_study: Study, model: str,
                                       storescp_factory: Callable[[str], StoreSCP]) -> None:
    scp = storescp_factory("RC_VIEWER")
    registry.add_node(ctx, "RC", "RC_VIEWER", "127.0.0.1", scp.port)
    r = dcmtk.move(RC_AE, model, "RC_VIEWER", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={gh_study.uid}"])
    assert r.rc == 0, r.out
    assert completed(r.out) == 0
    assert scp.files() == []


def test_a_retrieve_reads_its_files_ahead(settings, tmp_path):
    """C-GET / C-MOVE send the selected files one after the other; with new blobs outside the page cache
    (blob_direct_write) the selection is read ahead as soon as it is known."""
    c = Context.open(settings.model_copy(update={"blob_direct_write": True}))
    try:
        gh = registry.add_site(c, "GH", "General Hospital")
        uid = generate_uid()
        for data in ct_series(PATIENT, uid, "R1", 3, size=64):
            assert store(c, gh.id, data, "fixture").ok
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = uid
        rt = SimpleNamespace(ctx=c)  # the selection needs only the context of a Runtime
        found = matching_instances(rt, gh.id, identifier, "STUDY")  # type: ignore[arg-type]
        assert len(found) == 3
        assert wait_until_resident([c.blobs.path(i.blob_key) for i in found])
    finally:
        c.close()
