"""Content negotiation (PS3.18 8.7: Acceptable Media Types, 8.7.3.5 DICOM media type syntax).

The archive never transcodes: a representation is acceptable only if the client accepts the media type
and, where it names a transfer syntax, names ``*`` or the one we can send. Otherwise 406.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import HTTPException


@dataclass(frozen=True)
class MediaRange:
    type: str  # lower case "type/subtype", may hold wildcards
    params: dict[str, str] = field(default_factory=dict)  # lower-case names, unquoted values
    q: float = 1.0


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes."""
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def parse_media_type(value: str) -> MediaRange:
    """Parse one media type with parameters (RFC 9110 8.3.1). Raises ValueError."""
    pieces = _split(value, ";")
    mtype = pieces[0].strip().lower()
    if mtype.count("/") != 1 or not all(mtype.split("/")):
        raise ValueError(f"invalid media type {value.strip()[:100]!r}")
    params: dict[str, str] = {}
    q = 1.0
    for p in pieces[1:]:
        if not p.strip():
            continue
        name, eq, val = p.partition("=")
        if not eq:
            raise ValueError(f"invalid media type parameter {p.strip()[:100]!r}")
        name, val = name.strip().lower(), val.strip().strip('"')
        if name == "q":
            try:
                q = float(val)
            except ValueError:
                raise ValueError(f"invalid q value {val[:20]!r}") from None
        else:
            params[name] = val
    return MediaRange(mtype, params, q)


def parse_accept(header: str | None) -> list[MediaRange]:
    """The acceptable media ranges, most preferred first; a missing Accept accepts anything."""
    if header is None or not header.strip():
        return [MediaRange("*/*")]
    try:
        ranges = [parse_media_type(v) for v in _split(header, ",") if v.strip()]
    except ValueError as exc:
        raise HTTPException(400, f"malformed Accept header: {exc}") from None
    ranges = [r for r in ranges if r.q > 0]
    return sorted(ranges, key=lambda r: -r.q)  # stable: equal q keeps the client's order


def type_matches(pattern: str, mtype: str) -> bool:
    if pattern in ("*", "*/*"):
        return True
    if pattern.endswith("/*"):
        return mtype.split("/")[0] == pattern[:-2]
    return pattern == mtype


def _ts_ok(r: MediaRange, transfer_syntax: str | None) -> bool:
    ts = r.params.get("transfer-syntax")
    return ts is None or ts == "*" or transfer_syntax is None or ts == transfer_syntax


def accepts_multipart(ranges: list[MediaRange], part_type: str, transfer_syntax: str | None = None) -> bool:
    """Whether ``multipart/related; type=part_type`` with ``transfer_syntax`` is acceptable (PS3.18 8.7.5)."""
    for r in ranges:
        if r.type in ("*/*", "multipart/*"):
            return True
        if r.type == "multipart/related":
            t = r.params.get("type")
            if (t is None or type_matches(t.lower(), part_type)) and _ts_ok(r, transfer_syntax):
                return True
    return False


def accepts_single(ranges: list[MediaRange], mtype: str, transfer_syntax: str | None = None) -> bool:
    """Whether the single part media type is acceptable through an explicit (non ``*/*``) range."""
    return any(r.type != "*/*" and type_matches(r.type, mtype) and _ts_ok(r, transfer_syntax) for r in ranges)


def choose(ranges: list[MediaRange], offered: list[str]) -> str | None:
    """The first offered single part type acceptable to the client, in the client's preference order."""
    for r in ranges:
        for mtype in offered:
            if type_matches(r.type, mtype):
                return mtype
    return None


def require(ranges: list[MediaRange], offered: list[str]) -> str:
    chosen = choose(ranges, offered)
    if chosen is None:
        raise HTTPException(406, f"not acceptable: this resource is available as {', '.join(offered)}")
    return chosen


DICOM_JSON = ["application/dicom+json", "application/json"]
