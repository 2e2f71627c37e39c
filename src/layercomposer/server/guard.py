"""The checks every request passes before any route runs (a pure ASGI middleware, in this order):

1. `Host` must name the address being served: ``localhost``, ``127.0.0.1`` or ``[::1]``, the address the
   connection came in on, or a name given with ``--allow-host``, with the served port. Anything else (DNS
   rebinding: ``Host: evil.example``) gets 403.
2. A request that changes state (any method but GET, HEAD, OPTIONS) and every `/api/` request must not come
   from another origin: a foreign (or ``null``) `Origin` or a `Sec-Fetch-Site` other than ``same-origin`` /
   ``none`` gets 403. Requests that carry neither header (the CLI, scripts, curl) pass.
3. With a token, every `/api/` request needs it, checked before any of the body is read.
4. The body may not exceed the limit: `Content-Length` is checked first, and the bytes are counted as they
   stream in (chunked bodies have no length), so no route ever reads more than the limit.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class BodyTooLarge(Exception):
    """A request body went past the limit while it was read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit >> 20} MiB")
        self.limit = limit


def split_host(value: str) -> tuple[str, int | None] | None:
    """("name", port) of a Host or an origin's netloc: IPv6 literals lose their brackets; None if malformed."""
    value = value.strip().lower()
    if not value or any(c in value for c in "/@?#\\ \t"):
        return None
    if value.startswith("["):
        end = value.find("]")
        if end == -1:
            return None
        name, rest = value[1:end], value[end + 1:]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else ""
    else:
        name, _, port_text = value.partition(":")
    if port_text:
        if not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5:
            return None
        return name.rstrip("."), int(port_text)
    return name.rstrip("."), None


class Guard:
    """The middleware (see the module docstring); `token` None or a non-empty string."""

    def __init__(self, app: ASGIApp, token: str | None, max_body: int, allowed_hosts: Iterable[str] = ()) -> None:
        if token is not None and not token:
            raise ValueError("token: must not be empty (use None for no token)")
        self.app = app
        self.token = token
        self.max_body = max_body
        self.allowed_hosts = {h.lower().strip("[]") for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for key, value in scope.get("headers", []):
            name = key.decode("latin-1").lower()
            if name in headers and name in ("host", "origin", "sec-fetch-site", "content-length"):
                await _error(send, 400, f"duplicate {name} header")
                return
            headers[name] = value.decode("latin-1")
        problem = self._refusal(scope, headers)
        if problem is not None:
            await _error(send, *problem)
            return
        length = headers.get("content-length")
        if length is not None and (not (length.isascii() and length.isdigit()) or int(length) > self.max_body):
            await _error(send, 413, f"request body larger than {self.max_body >> 20} MiB")
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge as exc:
            if started:
                raise
            await _error(send, 413, str(exc))

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        """(status, message) when the request is refused, else None."""
        server = scope.get("server") or ("", None)
        port = server[1]
        host = split_host(headers.get("host", ""))
        default_port = 443 if scope.get("scheme") == "https" else 80
        if host is None:
            return 400, "missing or malformed Host header"
        name, host_port = host
        names = {*LOCAL_NAMES, *self.allowed_hosts, str(server[0]).lower().strip("[]")}
        if name not in names or (port is not None and (host_port or default_port) != port):
            return 403, f"Host {headers.get('host', '')[:100]!r} is not the address this editor serves"
        path = scope.get("path", "")
        api = path.startswith("/api/") or path == "/api"
        if api or scope.get("method", "GET") not in SAFE_METHODS:
            origin = headers.get("origin")
            if origin is not None:
                parts = urlsplit(origin) if "://" in origin else None
                own = f"{scope.get('scheme', 'http')}://{headers.get('host', '').lower()}"
                if parts is None or f"{parts.scheme}://{parts.netloc}".lower() != own:
                    return 403, f"cross-origin request from {origin[:100]!r} refused"
            site = headers.get("sec-fetch-site")
            if site is not None and site not in ("same-origin", "none"):
                return 403, f"cross-site request refused (Sec-Fetch-Site: {site[:40]})"
        if api and self.token is not None:
            auth = headers.get("authorization", "")
            given = auth[7:] if auth.lower().startswith("bearer ") else ""
            if not given:
                given = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"))).get("token", "")
            if not hmac.compare_digest(given.encode("utf-8", "replace"), self.token.encode("utf-8", "replace")):
                return 401, "missing or wrong bearer token"
        return None


async def _error(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}, ensure_ascii=True).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
