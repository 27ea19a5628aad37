"""The ASGI middleware in a real Starlette app, through Starlette's TestClient,
against a real shoald."""

from __future__ import annotations

import re
from typing import Optional

from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import shoal
from shoal.asgi import RateLimitMiddleware, SessionMiddleware
from conftest import Cluster, Daemon


def by_api_key(conn: HTTPConnection) -> Optional[str]:
    k = conn.headers.get("x-api-key")
    return f"key:{k}" if k else None


def limited_app(client: shoal.AsyncClient, on_error: str = "allow") -> Starlette:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello", headers={"x-ratelimit-limit": "app's own"})

    app = Starlette(routes=[Route("/", hello)])
    app.add_middleware(RateLimitMiddleware, client=client, policy="api", key=by_api_key, on_error=on_error)
    return app


def test_rate_limit_middleware_answers_429_with_headers(daemon: Daemon, ns: str) -> None:
    client = shoal.AsyncClient(daemon.socket)
    with TestClient(limited_app(client)) as http:
        key = {"x-api-key": ns + "tenant"}
        oks = [http.get("/", headers=key) for _ in range(3)]
        assert [r.status_code for r in oks] == [200, 200, 200]
        assert oks[0].text == "hello"
        assert re.fullmatch(r'"api";r=2;t=([1-9]|10)', oks[0].headers["ratelimit"])
        assert oks[0].headers["ratelimit-policy"] == '"api";q=3;w=10'
        assert oks[0].headers["x-ratelimit-limit"] == "3", "the limiter's header replaces the app's"
        assert "retry-after" not in oks[0].headers
        denied = http.get("/", headers=key)
        assert denied.status_code == 429
        assert denied.text == "Too Many Requests"
        assert 1 <= int(denied.headers["retry-after"]) <= 10
        assert denied.headers["x-ratelimit-remaining"] == "0"
        assert denied.headers["ratelimit"].startswith('"api";r=0;t=')
        # Another key has its own budget; no key is not limited.
        assert http.get("/", headers={"x-api-key": ns + "other"}).status_code == 200
        free = http.get("/")
        assert free.status_code == 200 and "ratelimit" not in free.headers


def test_rate_limit_middleware_when_shoald_is_down(own_cluster: Cluster, ns: str) -> None:
    d = own_cluster.daemon()
    d.stop()
    client = shoal.AsyncClient(d.socket, timeout=0.5)
    with TestClient(limited_app(client)) as http:
        assert http.get("/", headers={"x-api-key": ns}).status_code == 200
    with TestClient(limited_app(client, on_error="deny")) as http:
        assert http.get("/", headers={"x-api-key": ns}).status_code == 503


def session_app(client: shoal.AsyncClient) -> Starlette:
    async def login(request: Request) -> JSONResponse:
        token = await request.state.session.login(request.query_params["user"], {"visits": 0})
        return JSONResponse({"token": token})

    async def me(request: Request) -> JSONResponse:
        s = request.state.session
        if not s.is_authenticated:
            return JSONResponse({"user": None}, status_code=401)
        s.data["visits"] += 1
        await s.save()
        return JSONResponse({"user": s.user, "data": s.data})

    async def rotate(request: Request) -> JSONResponse:
        ok = await request.state.session.rotate()
        return JSONResponse({"rotated": ok, "token": request.state.session.token})

    async def logout(request: Request) -> JSONResponse:
        await request.state.session.logout()
        return JSONResponse({})

    app = Starlette(
        routes=[
            Route("/login", login, methods=["POST"]),
            Route("/me", me),
            Route("/rotate", rotate, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
        ]
    )
    app.add_middleware(SessionMiddleware, client=client, idle_ttl=600)
    return app


def test_session_middleware(daemon: Daemon, ns: str) -> None:
    client = shoal.AsyncClient(daemon.socket)
    sync = shoal.Client(daemon.socket)
    user = ns + "carol"
    # https: the cookie is Secure (and __Host- prefixed), so a client only sends it over TLS.
    with TestClient(session_app(client), base_url="https://testserver") as http:
        assert http.get("/me").status_code == 401
        r = http.post("/login", params={"user": user})
        token = r.json()["token"]
        set_cookie = r.headers["set-cookie"]
        assert set_cookie.startswith(f"__Host-session={token}; Max-Age=")
        assert set_cookie.endswith("; Path=/; Secure; HttpOnly; SameSite=Lax")
        assert http.get("/me").json() == {"user": user, "data": {"visits": 1}}
        assert http.get("/me").json()["data"] == {"visits": 2}
        # The data was saved through shoald: another client sees it.
        s = sync.session_get(token, touch=False)
        assert s is not None and s.data == {"visits": 2}
        # Rotate: a new token in the cookie, the old one dead everywhere.
        r = http.post("/rotate")
        new = r.json()["token"]
        assert r.json()["rotated"] and new != token
        assert r.headers["set-cookie"].startswith(f"__Host-session={new};")
        assert sync.session_get(token) is None
        assert http.get("/me").json()["user"] == user
        # Logout: revoked and the cookie deleted.
        r = http.post("/logout")
        assert r.headers["set-cookie"] == "__Host-session=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Lax"
        assert sync.session_get(new) is None
        assert http.get("/me").status_code == 401
        # A revoked session's cookie is deleted on the next request.
        other = sync.session_create(user, {"visits": 0})
        sync.session_revoke(other.token)
        r = http.get("/me", headers={"cookie": f"__Host-session={other.token}"})
        assert r.status_code == 401 and r.headers["set-cookie"].startswith("__Host-session=; Max-Age=0")
    sync.close()
