"""The multipart scanner (STOW-RS bodies), the multipart writer, and Accept parsing (PS3.18 8.6, 8.7)."""

from __future__ import annotations

import pytest
from dicomweb_support import split_multipart

from telerad.adapters.dicomweb import media, multipart

PARTS = [b"first part", b"", b"\r\n--not-the-boundary\r\n", bytes(range(256)) * 10]


def _body(boundary: str = "BOUND") -> bytes:
    body = b"preamble\r\n"
    for i, p in enumerate(PARTS):
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\nX-Index: {i}\r\n\r\n".encode() + p + b"\r\n"
    return body + f"--{boundary}--\r\nepilogue".encode()


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 13, 64, 1 << 20])
def test_scan_any_chunking(chunk):
    body = _body()
    spans = list(multipart.scan((body[i:i + chunk] for i in range(0, len(body), chunk)), "BOUND"))
    assert [body[s.start:s.end] for s in spans] == PARTS
    assert [s.headers["x-index"] for s in spans] == ["0", "1", "2", "3"]
    assert spans[0].headers["content-type"] == "application/dicom"


def test_scan_without_part_headers_and_with_padding():
    body = b"--b  \r\n\r\nabc\r\n--b\t\r\n\r\ndef\r\n--b--"
    spans = list(multipart.scan([body], "b"))
    assert [(s.headers, body[s.start:s.end]) for s in spans] == [({}, b"abc"), ({}, b"def")]


@pytest.mark.parametrize("body", [b"", b"no boundary", b"--b\r\nA: 1\r\n\r\nunterminated", b"--b", b"--bx\r\n\r\n",
                                  b"--b\r\nbad header\r\n\r\nx\r\n--b--"])
def test_scan_errors(body):
    with pytest.raises(multipart.MultipartError):
        list(multipart.scan([body], "b"))


def test_scan_bounds_memory():
    # A 64 MiB part read in 1 MiB chunks: the scanner's buffer never holds much more than one chunk.
    chunk = b"x" * (1 << 20)
    seen = []

    def chunks():
        yield b"--b\r\n\r\n"
        for _ in range(64):
            yield chunk
        yield b"\r\n--b--"

    import telerad.adapters.dicomweb.multipart as mp

    real = mp.bytearray if hasattr(mp, "bytearray") else bytearray

    class Tracking(bytearray):
        def extend(self, data):  # type: ignore[override]
            super().extend(data)
            seen.append(len(self))

    mp.bytearray = Tracking  # type: ignore[attr-defined]
    try:
        spans = list(multipart.scan(chunks(), "b"))
    finally:
        mp.bytearray = real  # type: ignore[attr-defined]
    assert spans[0].end - spans[0].start == 64 << 20
    assert max(seen) < 2 << 20


def test_writer_round_trip():
    boundary = multipart.new_boundary()
    headers = {"Content-Type": "application/octet-stream"}
    body = b"".join(multipart.stream(((headers, [p[:3], p[3:]]) for p in PARTS), boundary))
    ctype = multipart.content_type("application/octet-stream", boundary, "1.2.840.10008.1.2.1")
    assert [c for _, c in split_multipart(ctype, body)] == PARTS
    assert [body[s.start:s.end] for s in multipart.scan([body], boundary)] == PARTS


def test_parse_accept():
    ranges = media.parse_accept('multipart/related; type="application/dicom"; transfer-syntax=*;q=0.5, '
                                'application/dicom+json, image/jpeg;q=0')
    assert [r.type for r in ranges] == ["application/dicom+json", "multipart/related"]
    assert ranges[1].params == {"type": "application/dicom", "transfer-syntax": "*"}
    assert media.parse_accept(None)[0].type == "*/*"
    assert media.parse_accept('multipart/related; type="a,b"')[0].params["type"] == "a,b"


def test_negotiation():
    r = media.parse_accept('multipart/related; type="image/*"; transfer-syntax=1.2.840.10008.1.2.4.50')
    assert media.accepts_multipart(r, "image/jpeg", "1.2.840.10008.1.2.4.50")
    assert not media.accepts_multipart(r, "image/jpeg", "1.2.840.10008.1.2.4.70")
    assert not media.accepts_multipart(r, "application/octet-stream", "1.2.840.10008.1.2.4.50")
    assert media.choose(media.parse_accept("image/png, image/jpeg"), ["image/jpeg", "image/png"]) == "image/png"
    assert media.choose(media.parse_accept("image/png;q=0.1, image/jpeg"), ["image/jpeg", "image/png"]) \
        == "image/jpeg"
    assert media.choose(media.parse_accept("text/html"), ["image/jpeg"]) is None
    with pytest.raises(ValueError):
        media.parse_media_type("nonsense")


def test_writer_batches_small_parts_and_bounds_chunks():
    small = [({"Content-Type": "application/dicom"}, [b"x" * 1000]) for _ in range(50)]
    big = [({"Content-Type": "application/dicom"}, [b"y" * 5000, b"z" * 5000])]
    chunks = list(multipart.stream(small + big + small, "b", batch=4096))
    assert max(len(c) for c in chunks) == 5000  # the big file chunks go out alone, small parts are gathered
    assert all(len(c) <= 4096 for c in chunks if b"y" not in c and b"z" not in c)
    assert len(chunks) < 60
    whole = b"".join(multipart.stream(small + big + small, "b", batch=1))
    assert b"".join(chunks) == whole
