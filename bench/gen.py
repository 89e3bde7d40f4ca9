"""Synthetic DICOM data for the benchmark, generated once into a temporary folder (never downloaded).

* CT stacks: 512x512 16-bit slices from telerad's own phantom generator (``telerad.archive.demo``).
* Clones of a CT set with fresh UIDs, made by rewriting the UID bytes in place (same length, so the
  encoding stays valid) - a cheap way to get more unique CT instances with identical pixel data.
* Many tiny instances (16x16 8-bit secondary capture) for the 100k-instance scale test, made from one
  pydicom template whose placeholder values are replaced in the bytes (microseconds per instance).
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from telerad.archive.demo import ct_series, to_part10

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@dataclass
class StudyInfo:
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uids: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


@dataclass
class DataSet:
    root: str
    studies: list[StudyInfo]
    groups: list[str]  # folders, one per concurrent sender

    @property
    def n_instances(self) -> int:
        return sum(len(s.sop_uids) for s in self.studies)

    @property
    def n_bytes(self) -> int:
        return sum(Path(f).stat().st_size for s in self.studies for f in s.files)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"root": self.root, "groups": self.groups,
                                    "studies": [asdict(s) for s in self.studies]}))

    @classmethod
    def load(cls, path: Path) -> DataSet:
        d = json.loads(path.read_text())
        return cls(d["root"], [StudyInfo(**s) for s in d["studies"]], d["groups"])


def _uid_of_len(n: int) -> str:
    """A fresh UID under pydicom's root of exactly ``n`` characters (30 <= n <= 64)."""
    prefix = "1.2.826.0.1.3680043.8.498."
    digits = n - len(prefix)
    return prefix + str(random.randint(1, 9)) + "".join(random.choices("0123456789", k=digits - 1))


def make_ct(root: Path, n_studies: int, slices: int, size: int = 512, senders: int = 2,
            patient_prefix: str = "BENCHCT") -> DataSet:
    """``n_studies`` CT studies of ``slices`` slices each; studies are split across ``senders`` folders."""
    root.mkdir(parents=True, exist_ok=True)
    groups = [root / f"sender{k}" for k in range(senders)]
    for g in groups:
        g.mkdir(exist_ok=True)
    studies = []
    for n in range(n_studies):
        pid = f"{patient_prefix}{n:03d}"
        study_uid = generate_uid()
        blobs = ct_series((f"Bench^CT{n}", pid, "19700101", "O"), study_uid, f"BCT{n:05d}", slices,
                          size=size, desc="CT BENCH")
        folder = groups[n % senders] / f"study{n:03d}"
        folder.mkdir(exist_ok=True)
        info = StudyInfo(pid, study_uid, "")
        for i, data in enumerate(blobs):
            ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
            info.series_uid = str(ds.SeriesInstanceUID)
            info.sop_uids.append(str(ds.SOPInstanceUID))
            f = folder / f"{i:04d}.dcm"
            f.write_bytes(data)
            info.files.append(str(f))
        studies.append(info)
    return DataSet(str(root), studies, [str(g) for g in groups])


def clone(src: DataSet, root: Path, patient_prefix: str = "BENCHCL") -> DataSet:
    """Copy a data set with new Patient IDs, Study/Series/SOP Instance UIDs (same byte lengths)."""
    root.mkdir(parents=True, exist_ok=True)
    groups = [root / Path(g).name for g in src.groups]
    for g in groups:
        g.mkdir(exist_ok=True)
    studies = []
    for n, s in enumerate(src.studies):
        new_pid = (patient_prefix + f"{n:03d}")[: len(s.patient_id)].ljust(len(s.patient_id), "X")
        new = StudyInfo(new_pid, _uid_of_len(len(s.study_uid)), _uid_of_len(len(s.series_uid)))
        src_folder = Path(s.files[0]).parent
        folder = root / src_folder.parent.name / src_folder.name
        folder.mkdir(parents=True, exist_ok=True)
        for f, sop in zip(s.files, s.sop_uids, strict=True):
            new_sop = _uid_of_len(len(sop))
            head_len = 4096  # all UIDs and the Patient ID sit before the pixel data
            data = Path(f).read_bytes()
            head = data[:head_len]
            for old, rep in ((s.study_uid, new.study_uid), (s.series_uid, new.series_uid), (sop, new_sop),
                             (s.patient_id, new_pid)):
                head = head.replace(old.encode(), rep.encode())
            out = folder / Path(f).name
            out.write_bytes(head + data[head_len:])
            new.sop_uids.append(new_sop)
            new.files.append(str(out))
        studies.append(new)
    return DataSet(str(root), studies, [str(g) for g in groups])


# ---------------------------------------------------------------------------------------------- small
_PID = "PIDSCALE00000000"  # 16 chars
_NAME = "Scale^P000000000"
_ACC = "ACS000000000"
_STUDY = "1.2.826.0.1.3680043.10.9999.1.1000000000"  # 40 chars: even, so no padding differences
_SERIES = "1.2.826.0.1.3680043.10.9999.2.1000000000"
_SOP = "1.2.826.0.1.3680043.10.9999.3.1000000000"


def _small_template() -> bytes:
    ds = Dataset()
    ds.PatientName = _NAME
    ds.PatientID = _PID
    ds.PatientBirthDate = "19800101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = _STUDY
    ds.SeriesInstanceUID = _SERIES
    ds.SOPInstanceUID = _SOP
    ds.StudyDate = "20240101"
    ds.StudyTime = "101010"
    ds.AccessionNumber = _ACC
    ds.StudyID = "1"
    ds.StudyDescription = "SCALE"
    ds.ReferringPhysicianName = "Ref^Scale"
    ds.Modality = "OT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ConversionType = "WSD"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = (np.arange(256, dtype=np.uint8)).tobytes()
    return to_part10(ds, SECONDARY_CAPTURE)


def make_small(root: Path, n: int, per_study: int = 10, studies_per_patient: int = 2, senders: int = 2,
               progress: bool = True, first_study: int = 0) -> list[str]:
    """Write ``n`` tiny instances (one series per study) into ``senders`` folders; return the folders.

    Studies are numbered from ``first_study`` (so several calls make disjoint sets).
    """
    tpl = _small_template()
    for marker in (_PID, _NAME, _ACC, _STUDY, _SERIES, _SOP):
        assert tpl.count(marker.encode()) >= 1, marker
    groups = [root / f"sender{k}" for k in range(senders)]
    for g in groups:
        g.mkdir(parents=True, exist_ok=True)
    n_studies = (n + per_study - 1) // per_study
    i = 0
    for st in range(first_study, first_study + n_studies):
        pat = st // studies_per_patient
        folder = groups[st % senders] / f"{st // 1000:04d}"
        folder.mkdir(exist_ok=True)
        base = (tpl.replace(_PID.encode(), f"PIDSCALE{pat:08d}".encode())
                .replace(_NAME.encode(), f"Scale^P{pat:09d}".encode())
                .replace(_ACC.encode(), f"ACS{st:09d}".encode())
                .replace(_STUDY.encode(), f"{_STUDY[:-10]}1{st:09d}".encode())
                .replace(_SERIES.encode(), f"{_SERIES[:-10]}1{st:09d}".encode()))
        for k in range(per_study):
            if i >= n:
                break
            data = base.replace(_SOP.encode(), f"{_SOP[:-10]}1{st * per_study + k:09d}".encode())
            (folder / f"{st:07d}-{k:03d}.dcm").write_bytes(data)
            i += 1
        if progress and i % 10000 == 0:
            print(f"  generated {i}/{n} small instances", flush=True)
    return [str(g) for g in groups]


def small_patient_id(pat: int) -> str:
    return f"PIDSCALE{pat:08d}"
