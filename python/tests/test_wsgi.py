"""The WSGI rate limiter around a plain WSGI app, called as a WSGI server would,
against a real shoald."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import shoal
from shoal.wsgi import RateLimitMiddleware
from conftest import Daemon


def hello(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def call(app: Any, environ: Dict[str, Any]) -> Tuple[str, Dict[str, str], bytes]:
    seen: Dict[str, Any] = {}

    def start_response(status: str, headers: List[Tuple[str, str]], exc_info: Any = None) -> None:
        seen["status"], seen["headers"] = status, dict(headers)

    body = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], body


def test_wsgi_rate_limit(daemon: Daemon, ns: str) -> None:
    client = shoal.Client(daemon.socket)
    app = RateLimitMiddleware(hello, client, "api", key=lambda e: e.get("HTTP_X_API_KEY"))
    env = {"HTTP_X_API_KEY": ns + "k", "REQUEST_METHOD": "GET", "PATH_INFO": "/"}
    results = [call(app, env) for _ in range(4)]
    assert [r[0] for r in results] == ["200 OK"] * 3 + ["429 Too Many Requests"]
    assert results[0][2] == b"hello" and results[0][1]["x-ratelimit-limit"] == "3"
    status, headers, body = results[3]
    assert body == b"Too Many Requests" and int(headers["retry-after"]) >= 1
    assert call(app, {"REQUEST_METHOD": "GET"})[0] == "200 OK"
    client.close()
    # shoald unreachable: allowed by default, 503 when asked to deny.
    down = shoal.Client(daemon.socket + ".missing", timeout=0.5)
    assert call(RateLimitMiddleware(hello, down, "api", key=lambda e: "k"), env)[0] == "200 OK"
    deny = RateLimitMiddleware(hello, down, "api", key=lambda e: "k", on_error="deny")
    assert call(deny, env)[0] == "503 Service Unavailable"
