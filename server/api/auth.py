"""API keys: with `--api-key` (repeatable) or INFLIGHTD_API_KEY set, every route but the
probes (and /metrics, unless `--metrics-auth`) needs `Authorization: Bearer <key>`.

Keys are compared in constant time: the offered key and every configured key are hashed
to fixed-length digests and each pair goes through hmac.compare_digest, all of them, so
neither the match's position nor a key's length shows in the timing.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from server.api.admission import send_error
from server.api.errors import INVALID_REQUEST

PROBE_PATHS = frozenset({"/health", "/ready", "/v2/health/live", "/v2/health/ready"})
METRICS_PATH = "/metrics"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class ApiKeys:
    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(_digest(key) for key in keys)
        if not self._digests:
            raise ValueError("ApiKeys needs at least one key")

    def accepts(self, offered: str) -> bool:
        offered_digest = _digest(offered)
        matched = False
        for digest in self._digests:  # no early exit: every key is compared
            matched |= hmac.compare_digest(offered_digest, digest)
        return matched


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, *, keys: ApiKeys, protect_metrics: bool) -> None:
        self.app = app
        self._keys = keys
        self._open_paths = PROBE_PATHS if protect_metrics else PROBE_PATHS | {METRICS_PATH}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._open_paths:
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        if token is None or not self._keys.accepts(token):
            message = ("missing API key: send it as 'Authorization: Bearer <key>'"
                       if token is None else "invalid API key")
            await send_error(scope, receive, send, status_code=401, type=INVALID_REQUEST,
                             code="invalid_api_key", message=message,
                             headers={"WWW-Authenticate": "Bearer"})
            return
        await self.app(scope, receive, send)
