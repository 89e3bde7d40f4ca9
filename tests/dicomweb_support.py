"""Helpers for the DICOMweb tests (importable as ``dicomweb_support``): test objects and a multipart
reader written independently of the server's own scanner."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from telerad.archive.demo import to_part10
from telerad.archive.ingest import store
from telerad.context import Context

SITE = {"X-Telerad-Site": "GH"}
OTHER = {"X-Telerad-Site": "RC"}


@dataclass
class Stored:
    study: str
    series: str
    sop: str
    data: bytes  # what was sent

    @property
    def path(self) -> str:
        return f"/dicom-web/studies/{self.study}/series/{self.series}/instances/{self.sop}"


def put(ctx: Context, site_id: int, data: bytes) -> Stored:
    result = store(ctx, site_id, data, source="test")
    assert result.ok, result.reason
    return Stored(result.study_uid, result.series_uid, result.sop_instance_uid, data)


def sample_file(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} missing"
    return Path(str(path)).read_bytes()


def read(data: bytes, **kwargs: object) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data), **kwargs)  # type: ignore[arg-type]


def zero_preamble(data: bytes) -> bytes:
    """What the archive stores for a Part 10 file: the same bytes with a zeroed preamble."""
    assert data[128:132] == b"DICM"
    return b"\x00" * 128 + data[128:]


def boundary_of(content_type: str) -> str:
    m = re.search(r'boundary="?([^";,\s]+)"?', content_type)
    assert m, content_type
    return m.group(1)


def split_multipart(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """Parts of a multipart/related body as (headers, content)."""
    assert content_type.startswith("multipart/related"), content_type
    marker = b"--" + boundary_of(content_type).encode()
    pieces = body.split(marker)
    assert pieces[0] == b"", "unexpected preamble"
    assert pieces[-1] in (b"--\r\n", b"--"), pieces[-1][:20]
    out = []
    for piece in pieces[1:-1]:
        assert piece.startswith(b"\r\n") and piece.endswith(b"\r\n")
        head, sep, content = piece[2:-2].partition(b"\r\n\r\n")
        assert sep
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        out.append((headers, content))
    return out


def multipart_body(parts: list[bytes], boundary: str = "telerad-test-boundary",
                   part_type: str = "application/dicom") -> tuple[bytes, str]:
    body = b"".join(f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def mr_like(frames: int, size: int = 32, study: str | None = None, photometric: str = "MONOCHROME2",
            transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """A synthetic multi-frame 16-bit image (gradient per frame), native or JPEG 2000 lossless."""
    ds = Dataset()
    ds.PatientName, ds.PatientID = "Frames^Multi", "MF1"
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "MR"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.NumberOfFrames = frames
    y, x = np.mgrid[0:size, 0:size]
    stack = np.stack([((x + y) * 30 + f * 100) % 4096 for f in range(frames)]).astype(np.uint16)
    ds.PixelData = stack.tobytes()
    data = to_part10(ds, "1.2.840.10008.5.1.4.1.1.4.1")  # Enhanced MR Image Storage (enough for tests)
    if transfer_syntax == ExplicitVRLittleEndian:
        return data
    full = read(data)
    full.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    buf = io.BytesIO()
    full.save_as(buf, enforce_file_format=True)
    assert transfer_syntax == JPEG2000Lossless
    return buf.getvalue()
