"""multipart/related (RFC 2387) as PS3.18 8.6.1.2 uses it: streaming writer for WADO-RS responses and a
streaming scanner for STOW-RS request bodies.

The scanner never holds more than one chunk plus a boundary's length of the body: it reports where each
part's content lies (absolute offsets), and the caller reads the part from wherever it spooled the body.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

MAX_HEADER_BYTES = 16 * 1024
Piece = bytes | memoryview  # part content as read, or a view of a kept mapping (sent without a copy)


class MultipartError(ValueError):
    """A body that is not well-formed multipart for the boundary given."""


def new_boundary() -> str:
    return uuid.uuid4().hex


def content_type(part_type: str, boundary: str, transfer_syntax: str | None = None) -> str:
    value = f'multipart/related; type="{part_type}"'
    if transfer_syntax:
        value += f"; transfer-syntax={transfer_syntax}"
    return value + f"; boundary={boundary}"


def part_head(boundary: str, headers: dict[str, str]) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"--{boundary}\r\n{lines}\r\n".encode("latin-1")


def closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode("latin-1")


def stream(parts: Iterable[tuple[dict[str, str], Iterable[Piece]]], boundary: str,
           batch: int = 1 << 20) -> Iterator[bytes]:
    """Body chunks of a multipart message whose parts are (headers, content chunks), produced lazily.

    Small pieces are gathered into chunks of at most ``batch`` bytes (many small instances would otherwise
    cost a write each); a larger piece goes out alone. Nothing bigger than that is ever held.
    """
    pending: list[Piece] = []
    size = 0
    for piece in _pieces(parts, boundary):
        if pending and size + len(piece) > batch:
            yield b"".join(pending)
            pending, size = [], 0
        pending.append(piece)
        size += len(piece)
        if size >= batch:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)


def gathered(parts: Iterable[tuple[dict[str, str], Iterable[Piece]]], boundary: str,
             alone: int = 64 << 10) -> list[Piece]:
    """The whole body of a multipart message whose parts are in memory, as pieces to send one after another:
    a piece of at least ``alone`` bytes (a frame) is kept as it is, not copied into a joined body; the small
    pieces around it (part headers, delimiters) are joined."""
    out: list[Piece] = []
    pending: list[Piece] = []
    for piece in _pieces(parts, boundary):
        if len(piece) < alone:
            pending.append(piece)
            continue
        if pending:
            out.append(b"".join(pending))
            pending = []
        out.append(piece)
    if pending:
        out.append(b"".join(pending))
    return out


def _pieces(parts: Iterable[tuple[dict[str, str], Iterable[Piece]]], boundary: str) -> Iterator[Piece]:
    for headers, chunks in parts:
        yield part_head(boundary, headers)
        yield from chunks
        yield b"\r\n"
    yield closing(boundary)


@dataclass(frozen=True)
class PartSpan:
    headers: dict[str, str]  # lower-case names
    start: int  # absolute offset of the first content byte in the body
    end: int  # absolute offset one past the last content byte


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split(b"\r\n"):
        if not line:
            continue
        name, colon, value = line.partition(b":")
        if not colon or not name.strip():
            raise MultipartError(f"malformed part header line {line[:80]!r}")
        headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    return headers


def scan(chunks: Iterable[bytes], boundary: str) -> Iterator[PartSpan]:
    """Yield each part of a multipart body as it is read. Raises :class:`MultipartError`."""
    if not boundary or len(boundary) > 70:
        raise MultipartError("boundary must be 1 to 70 characters (RFC 2046 5.1.1)")
    dash = b"--" + boundary.encode("latin-1")
    delim = b"\r\n" + dash
    it = iter(chunks)
    buf = bytearray()
    base = 0  # absolute offset of buf[0]

    def more() -> bool:
        for chunk in it:
            if chunk:
                buf.extend(chunk)
                return True
        return False

    def drop(n: int) -> None:
        nonlocal base
        del buf[:n]
        base += n

    # Preamble: the first delimiter is at the very start or after a CRLF.
    while True:
        if buf.startswith(dash):
            pos = 0
            break
        found = buf.find(delim)
        if found >= 0:
            pos = found + 2
            break
        if len(buf) > len(delim):
            drop(len(buf) - len(delim))
        if not more():
            raise MultipartError("no multipart boundary found in the body")
    drop(pos)
    while True:
        # buf starts with "--boundary"; what follows says whether this was the last one.
        while len(buf) < len(dash) + 2:
            if not more():
                raise MultipartError("body ends inside a boundary delimiter")
        if buf[len(dash):len(dash) + 2] == b"--":
            return
        drop(len(dash))
        while True:  # transport padding, then CRLF
            eol = buf.find(b"\r\n")
            if eol >= 0:
                break
            if len(buf) > 256 or not more():
                raise MultipartError("boundary delimiter not followed by CRLF")
        if buf[:eol].strip(b" \t"):
            raise MultipartError("unexpected characters after a boundary delimiter")
        drop(eol + 2)
        if buf.startswith(b"\r\n"):
            headers: dict[str, str] = {}
            drop(2)
        else:
            while True:
                end = buf.find(b"\r\n\r\n")
                if end >= 0:
                    break
                if len(buf) > MAX_HEADER_BYTES or not more():
                    raise MultipartError("part headers not terminated by an empty line")
            if end > MAX_HEADER_BYTES:
                raise MultipartError("part headers too long")
            headers = _parse_headers(bytes(buf[:end]))
            drop(end + 4)
        start = base
        search = 0
        while True:
            found = buf.find(delim, search)
            if found >= 0:
                break
            keep = len(delim) - 1
            if len(buf) > keep:
                drop(len(buf) - keep)
            search = 0
            if not more():
                raise MultipartError("body ends inside a part: no closing boundary delimiter")
        yield PartSpan(headers, start, base + found)
        drop(found + 2)
