"""Helpers for the DIMSE adapter tests: the real DCMTK tools, a DCMTK storescp, Part 10 utilities."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from support import free_port

ENV = dict(os.environ, TCP_NODELAY="1")
GH_AE = "GH_PACS"
RC_AE = "RC_PACS"


@dataclass
class Result:
    rc: int
    out: str  # stdout and stderr together

    def __contains__(self, text: str) -> bool:
        return text in self.out


class Dcmtk:
    """Runs DCMTK's command line SCUs against the listener under test (no mocks: real associations)."""

    def __init__(self, port: int, work: Path, called: str) -> None:
        self.port = port
        self.work = work
        self.called = called
        self._n = 0

    def run(self, tool: str, *args: str, timeout: float = 120) -> Result:
        p = subprocess.run([tool, *args], capture_output=True, text=True, env=ENV, timeout=timeout)
        return Result(p.returncode, p.stdout + p.stderr)

    def _peer(self, aet: str) -> list[str]:
        return ["-aet", aet, "-aec", self.called]

    def echo(self, aet: str, *extra: str) -> Result:
        return self.run("echoscu", "-v", *self._peer(aet), *extra, "127.0.0.1", str(self.port))

    def store(self, aet: str, files: list[Path], *extra: str) -> Result:
        return self.run("storescu", "-v", *self._peer(aet), *extra, "127.0.0.1", str(self.port),
                        *[str(f) for f in files])

    def newdir(self, name: str) -> Path:
        self._n += 1
        d = self.work / f"{name}{self._n}"
        d.mkdir(parents=True)
        return d

    def find(self, aet: str, model: str, keys: list[str], *extra: str) -> tuple[Result, list[Dataset]]:
        """C-FIND with ``findscu -P|-S``; the responses as datasets (written by ``-X`` to rsp*.dcm)."""
        out = self.newdir("find")
        args = ["-v", *self._peer(aet), model, "-X", "-od", str(out), *extra]
        for k in keys:
            args += ["-k", k]
        r = self.run("findscu", *args, "127.0.0.1", str(self.port))
        return r, [pydicom.dcmread(p, force=True) for p in sorted(out.glob("rsp*.dcm"))]

    def get(self, aet: str, model: str, keys: list[str], *extra: str) -> tuple[Result, list[Path]]:
        """C-GET with ``getscu`` writing what it receives bit-preserving (``+B``) into a fresh directory."""
        out = self.newdir("get")
        args = ["-v", *self._peer(aet), model, "-od", str(out), "+B", *extra]
        for k in keys:
            args += ["-k", k]
        r = self.run("getscu", *args, "127.0.0.1", str(self.port))
        return r, sorted(p for p in out.iterdir() if p.is_file())

    def move(self, aet: str, model: str, dest: str, keys: list[str], *extra: str) -> Result:
        args = ["-d", *self._peer(aet), model, "-aem", dest, *extra]
        for k in keys:
            args += ["-k", k]
        return self.run("movescu", *args, "127.0.0.1", str(self.port))


class StoreSCP:
    """A DCMTK ``storescp`` on a free loopback port, writing what it receives bit-preserving."""

    def __init__(self, ae_title: str, out: Path) -> None:
        self.ae_title = ae_title
        self.port = free_port()
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["storescp", "-aet", ae_title, "+xa", "+B", "-od", str(out), str(self.port)],
            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_listening(self.port)

    def files(self) -> list[Path]:
        return sorted(p for p in self.out.iterdir() if p.is_file())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def wait_listening(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listening on port {port}")


def write_files(directory: Path, blobs: list[bytes], prefix: str = "obj") -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, data in enumerate(blobs):
        p = directory / f"{prefix}{i:04d}.dcm"
        p.write_bytes(data)
        paths.append(p)
    return paths


def dataset_bytes(part10: bytes) -> bytes:
    """The Data Set of a Part 10 file: everything after the File Meta group (PS3.10 7.1)."""
    assert part10[128:132] == b"DICM"
    assert part10[132:136] == b"\x02\x00\x00\x00"  # (0002,0000) File Meta Information Group Length, UL
    group_length = int.from_bytes(part10[140:144], "little")
    return part10[144 + group_length:]


def sample(name: str, directory: Path, **attrs: str) -> tuple[Path, str]:
    """A copy of one of pydicom's test files with fresh UIDs (they reuse UIDs across files); (path, SOP UID).

    The elements are written back in the file's own transfer syntax, pixel data untouched.
    """
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(get_testdata_file(name))
    uid = generate_uid()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.StudyInstanceUID = attrs.pop("StudyInstanceUID", generate_uid())
    ds.SeriesInstanceUID = attrs.pop("SeriesInstanceUID", generate_uid())
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{Path(name).stem}-{uid[-8:]}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, uid


def restamp(blobs: list[bytes], **attrs: object) -> list[bytes]:
    """Part 10 objects with some attributes replaced (e.g. a fixed StudyDate instead of today's)."""
    out = []
    for data in blobs:
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
        for keyword, value in attrs.items():
            setattr(ds, keyword, value)
        buf = pydicom.filebase.DicomBytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out
