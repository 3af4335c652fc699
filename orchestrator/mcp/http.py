"""Streamable HTTP for the MCP facade: bearer-token auth and Host/Origin checks.

The SDK's own HTTP auth is OAuth (a token verifier plus authorization-server metadata), which a
task system's operators do not need; a static bearer token from the settings is checked by a
small ASGI middleware in front of the SDK's app instead. A request without the right token gets
401 before it reaches the SDK, so it touches nothing (no session, no tool, no Redis).
`GET /healthz` answers without a token (for Kubernetes probes) and reads nothing.

Host/Origin checks (DNS-rebinding protection) come from `mcp_allowed_hosts`: empty means
loopback names only when bound to loopback, and no Host check when bound to a routable address
(the token is the guard there); a list adds those names (e.g. a Kubernetes Service's DNS name,
a bare name also matches it with any port); `*` turns the check off.

A request body over MAX_BODY_BYTES (the SDK's 4 MiB limit) gets 413 with a JSON-RPC error that
states the size and the limit (the SDK's own answer is plain text, which its client reports as
a bare -32603 "Server returned an error response").
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from typing import Any

from mcp.server.transport_security import (
    DEFAULT_MAX_REQUEST_BODY_SIZE,
    TransportSecuritySettings,
)
from mcp_types import INVALID_REQUEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.mcp.params import PROMPT_LIMIT
from shared.errors import ConfigError

MCP_PATH = "/mcp"
HEALTH_PATH = "/healthz"
MIN_TOKEN_CHARS = 16
MAX_BODY_BYTES = DEFAULT_MAX_REQUEST_BODY_SIZE
LOOPBACK_HOSTS = ["127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost", "[::1]"]


def is_loopback(host: str) -> bool:
    """Whether `host` (a bind address or name) only accepts connections from this machine."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_token(token: str | None, *, require_auth: bool, host: str) -> str | None:
    """The token to require, or None when auth is off; ConfigError when that is not allowed."""
    if require_auth:
        if not token:
            raise ConfigError(
                "mcp --http needs a bearer token: set MAHAVISHNU_MCP_HTTP_TOKEN (or mcp_http_token "
                "in settings/local.yaml); auth may be turned off only on a loopback address"
            )
        if len(token) < MIN_TOKEN_CHARS:
            raise ConfigError(
                f"mcp_http_token is too short ({len(token)} chars): use at least "
                f"{MIN_TOKEN_CHARS}, e.g. from "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        return token
    if not is_loopback(host):
        raise ConfigError(
            f"auth may be turned off only when bound to a loopback address, not {host!r}; "
            "set MAHAVISHNU_MCP_HTTP_TOKEN instead"
        )
    return None


def transport_security(host: str, allowed_hosts: list[str]) -> TransportSecuritySettings:
    """Host/Origin checks for the bind address and the configured extra host names."""
    extra = [h.strip() for h in allowed_hosts if h.strip()]
    if "*" in extra or (not extra and not is_loopback(host)):
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    hosts = list(LOOPBACK_HOSTS)
    for item in extra:
        hosts.append(item)
        if not item.endswith(("]", ":*")) and ":" not in item:  # a bare name: any port too
            hosts.append(f"{item}:*")
    origins: list[str] = []
    for item in hosts:
        origins.extend([f"http://{item}", f"https://{item}"])
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


async def _send_json(
    send: Send, status: int, body: dict[str, Any], *extra: tuple[bytes, bytes]
) -> None:
    payload = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class BearerAuth:
    """ASGI middleware: every HTTP request but `GET /healthz` needs `Authorization: Bearer T`."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self._token = token.encode() if token else None

    def _authorized(self, scope: Scope) -> bool:
        if self._token is None:
            return True
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, presented = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    return hmac.compare_digest(presented.strip(), self._token)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer /healthz, refuse unauthenticated requests, pass the rest to the SDK's app."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("path") == HEALTH_PATH and scope.get("method") in ("GET", "HEAD"):
            await _send_json(send, 200, {"status": "ok"})
            return
        if not self._authorized(scope):
            await _send_json(
                send,
                401,
                {
                    "error": "invalid_token",
                    "error_description": "missing or wrong bearer token "
                    "(send 'Authorization: Bearer <MAHAVISHNU_MCP_HTTP_TOKEN>')",
                },
                (b"www-authenticate", b'Bearer realm="mahavishnu", error="invalid_token"'),
            )
            return
        await self.app(scope, receive, send)


def body_too_large(size: int, limit: int = MAX_BODY_BYTES, *, at_least: bool = False) -> str:
    """What a caller reads when its request body is over the limit."""
    shown = f"{limit // 2**20} MiB" if limit % 2**20 == 0 else f"{limit:,}-byte"
    return (
        f"request body of {'more than ' if at_least else ''}{size:,} bytes exceeds the {shown} "
        f"limit of this MCP facade; {PROMPT_LIMIT}"
    )


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 and a JSON-RPC error saying
    so. A declared Content-Length is checked before anything is read; a chunked body is read up
    to the limit and replayed to the app."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def _refuse(self, send: Send, message: str) -> None:
        error = {"code": INVALID_REQUEST, "message": message}
        await _send_json(send, 413, {"jsonrpc": "2.0", "id": None, "error": error})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse an oversized body; pass the rest on."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None:
            if declared > self.limit:
                await self._refuse(send, body_too_large(declared, self.limit))
                return
            await self.app(scope, receive, send)  # the server holds the body to that length
            return
        body, complete, trailing = bytearray(), False, []
        while not complete:
            message = await receive()
            if message["type"] != "http.request":  # e.g. the client went away
                trailing.append(message)
                break
            body.extend(message.get("body", b""))
            if len(body) > self.limit:
                await self._refuse(send, body_too_large(self.limit, self.limit, at_least=True))
                return
            complete = not message.get("more_body", False)
        first: Message = {"type": "http.request", "body": bytes(body), "more_body": not complete}
        pending = [first, *trailing]

        async def replay() -> Message:
            return pending.pop(0) if pending else await receive()

        await self.app(scope, replay, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
