"""Synthetic demo studies, generated (never downloaded): CT stacks of a simple phantom and a chest CR."""

from __future__ import annotations

from datetime import date

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from telerad.archive.ingest import StoreResult, store
from telerad.context import Context

CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage


def phantom(size: int, z: float) -> np.ndarray:
    """A water cylinder with two bone rods and a lesion whose size varies with z, in HU + 1024."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    img = np.full((size, size), -1000.0, dtype=np.float32)
    img[x**2 + y**2 < 0.42**2] = 20.0
    img[(x + 0.2) ** 2 + y**2 < 0.05**2] = 900.0
    img[(x - 0.2) ** 2 + y**2 < 0.05**2] = 700.0
    r = 0.08 * max(0.0, 1.0 - abs(z))
    img[x**2 + (y + 0.15) ** 2 < r**2] = 60.0
    return (img + 1024).clip(0, 4095).astype(np.uint16)


def _base(patient: tuple[str, str, str, str], study_uid: str, accession: str, desc: str) -> Dataset:
    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = date.today().strftime("%Y%m%d")
    ds.StudyTime = "083000"
    ds.AccessionNumber = accession
    ds.StudyID = "1"
    ds.StudyDescription = desc
    ds.ReferringPhysicianName = "Referrer^Demo"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.Manufacturer = "telerad demo"
    ds.PatientOrientation = ""
    return ds


def to_part10(ds: Dataset, sop_class: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID = UID(sop_class)
    buf = DicomBytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def ct_series(patient: tuple[str, str, str, str], study_uid: str, accession: str, slices: int,
              size: int = 256, desc: str = "CT HEAD") -> list[bytes]:
    series_uid = generate_uid()
    out = []
    for i in range(slices):
        ds = _base(patient, study_uid, accession, desc)
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = series_uid
        ds.Modality = "CT"
        ds.SeriesNumber = 1
        ds.SeriesDescription = "Axial 5mm"
        ds.InstanceNumber = i + 1
        ds.FrameOfReferenceUID = study_uid + ".1" if len(study_uid) < 62 else generate_uid()
        ds.ImagePositionPatient = [-125.0, -125.0, float(i * 5)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [250.0 / size, 250.0 / size]
        ds.SliceThickness = 5.0
        ds.KVP = 120
        ds.PatientPosition = "HFS"
        ds.BodyPartExamined = "HEAD"
        ds.PositionReferenceIndicator = ""
        ds.AcquisitionNumber = 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = phantom(size, (i - slices / 2) / (slices / 2)).tobytes()
        out.append(to_part10(ds, CTImageStorage))
    return out


def cr_image(patient: tuple[str, str, str, str], study_uid: str, accession: str) -> bytes:
    ds = _base(patient, study_uid, accession, "XR CHEST PA")
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = 512, 512
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    y, x = np.mgrid[0:512, 0:512].astype(np.float32) / 512 - 0.5
    lungs = ((x + 0.18) ** 2 / 0.03 + y**2 / 0.12 < 1) | ((x - 0.18) ** 2 / 0.03 + y**2 / 0.12 < 1)
    img = np.where(lungs, 600, 2800) + (np.abs(x) < 0.04) * 800
    ds.PixelData = img.clip(0, 4095).astype(np.uint16).tobytes()
    ds.WindowCenter, ds.WindowWidth = 2000, 4000
    return to_part10(ds, CR_IMAGE)


DEMO_PATIENTS = [
    ("Demo^Alice", "DEMO001", "19700101", "F"),
    ("Demo^Bob", "DEMO002", "19851231", "M"),
]


def load_demo(ctx: Context, site_id: int) -> list[StoreResult]:
    results = []
    for n, patient in enumerate(DEMO_PATIENTS):
        study = generate_uid()
        for data in ct_series(patient, study, f"DEMOACC{n}1", slices=24):
            results.append(store(ctx, site_id, data, source="demo"))
        results.append(store(ctx, site_id, cr_image(patient, generate_uid(), f"DEMOACC{n}2"), source="demo"))
    return results
