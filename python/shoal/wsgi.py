"""WSGI rate limiting (Flask, Django, any WSGI app) with the blocking client.

The WSGI twin of :class:`shoal.asgi.RateLimitMiddleware`: a denied request is
answered 429 with ``Retry-After`` and the RateLimit headers, an allowed one gets
the RateLimit headers added to the app's response. No dependency beyond this
package::

    from flask import Flask
    import shoal
    from shoal.wsgi import RateLimitMiddleware

    app = Flask(__name__)
    app.wsgi_app = RateLimitMiddleware(
        app.wsgi_app, shoal.Client("/run/shoal/shoal.sock"), "api",
        key=lambda environ: environ.get("HTTP_X_API_KEY"),
    )

For sessions in a WSGI app, call :meth:`shoal.Client.session_get` with the
token :meth:`shoal.SessionCookie.token_from_header` finds in ``HTTP_COOKIE``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from .errors import ShoalError
from .sync import Client

__all__ = ["RateLimitMiddleware", "remote_addr"]

log = logging.getLogger("shoal.wsgi")

Environ = Dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

_LIST_FIELDS = ("ratelimit", "ratelimit-policy")


def remote_addr(environ: Environ) -> Optional[str]:
    """The default key: the peer address."""
    addr = environ.get("REMOTE_ADDR")
    return f"ip:{addr}" if addr else None


class RateLimitMiddleware:
    """Rate-limits requests by ``policy``, keyed by ``key(environ)`` (``None``:
    not limited). ``on_error``: ``"allow"`` (default, logged) or ``"deny"``
    (503) when shoald cannot be asked."""

    def __init__(
        self,
        app: WSGIApp,
        client: Client,
        policy: str,
        key: Callable[[Environ], Optional[str]] = remote_addr,
        *,
        cost: int = 1,
        on_error: str = "allow",
    ) -> None:
        if on_error not in ("allow", "deny"):
            raise ValueError("on_error must be 'allow' or 'deny'")
        self.app, self.client, self.policy, self.key = app, client, policy, key
        self.cost, self.on_error = cost, on_error

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        k = self.key(environ)
        if k is None:
            return self.app(environ, start_response)
        try:
            decision = self.client.check(self.policy, k, self.cost)
        except ShoalError as e:
            if self.on_error == "deny":
                start_response("503 Service Unavailable", [("Content-Type", "text/plain; charset=utf-8")])
                return [b"Service Unavailable"]
            log.warning("rate limiter unavailable, request let through: %s", e)
            return self.app(environ, start_response)
        extra = decision.headers()
        if not decision.allowed:
            body = b"Too Many Requests"
            start_response(
                "429 Too Many Requests",
                [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))] + extra,
            )
            return [body]
        replace = {n for n, _ in extra if n not in _LIST_FIELDS}

        def start_with_headers(status: str, headers: List[Tuple[str, str]], exc_info: Any = None) -> Any:
            merged = [(n, v) for n, v in headers if n.lower() not in replace] + extra
            return start_response(status, merged, exc_info) if exc_info else start_response(status, merged)

        return self.app(environ, start_with_headers)
