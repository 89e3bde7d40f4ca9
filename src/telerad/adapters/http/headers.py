"""Security headers on every response, and a size cap on JSON API request bodies.

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
            await _too_large(send, headers)
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


async def _too_large(send: Send, headers: list[tuple[bytes, bytes]]) -> None:
    body = b'{"detail":"request body too large for the JSON API (1 MiB)"}'
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                + headers})
    await send({"type": "http.response.body", "body": body})
