"""Security headers on every response, a size cap on JSON API request bodies, and no NUL characters.

A NUL (U+0000) in a path, query or header is refused with 400 before any route sees it: no DICOM, HL7 or
HTTP value telerad takes may carry one, and PostgreSQL text cannot hold one (JSON bodies: ``api.models``).

OWASP Secure Headers: no MIME sniffing, no framing (clickjacking), no referrer leaking UIDs in URLs, a strict
Content-Security-Policy (the API and DICOMweb serve data, not pages that load scripts), HSTS over HTTPS.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from telerad.config import Settings

API_BODY_LIMIT = 1024 * 1024  # JSON API requests are small; STOW-RS has its own cap (max_object_bytes)

_BASE = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
_HSTS = (b"strict-transport-security", b"max-age=31536000")


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _BASE + [_HSTS] if self.settings.https else _BASE
        if scope.get("path", "").startswith("/api/") and _declared_length(scope) > API_BODY_LIMIT:
            await _refuse(send, headers, 413, b"request body too large for the JSON API (1 MiB)")
            return
        if _has_nul(scope):
            await _refuse(send, headers, 400, b"NUL characters are not allowed in paths, queries or headers")
            return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in headers if n not in present]
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, send_wrapper)


def _declared_length(scope: Scope) -> int:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def _has_nul(scope: Scope) -> bool:
    if "\x00" in scope.get("path", ""):
        return True
    query: bytes = scope.get("query_string", b"")
    if b"\x00" in query or b"%00" in query.lower():
        return True
    return any(b"\x00" in value for _, value in scope.get("headers", []))


async def _refuse(send: Send, headers: list[tuple[bytes, bytes]], status: int, message: bytes) -> None:
    body = b'{"detail":"' + message + b'"}'
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                + headers})
    await send({"type": "http.response.body", "body": body})
