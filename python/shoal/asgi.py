"""ASGI middleware for Starlette and FastAPI: rate limiting and sessions.

:class:`RateLimitMiddleware` puts a shoal policy in front of an app: a denied
request is answered 429 with ``Retry-After`` and the RateLimit headers (the same
headers the Rust tower layer sends, see :meth:`shoal.Decision.headers`); an
allowed one gets the RateLimit headers added to the app's response.

:class:`SessionMiddleware` reads the session cookie, validates the token with
shoald (answered from the daemon's local cache, no Redis round trip) and puts a
:class:`SessionState` at ``request.state.session``, whose ``login``, ``save``,
``rotate`` and ``logout`` set the cookie (attributes as the Rust
``SessionCookie``: ``HttpOnly; Secure; SameSite=Lax; Path=/``, default name
``__Host-session``).

Needs ``starlette`` (``pip install 'shoal-client[asgi]'``)::

    from fastapi import FastAPI, Request
    from shoal import AsyncClient
    from shoal.asgi import RateLimitMiddleware, SessionMiddleware

    shoal_client = AsyncClient("/run/shoal/shoal.sock")
    app = FastAPI()
    app.add_middleware(SessionMiddleware, client=shoal_client)
    app.add_middleware(RateLimitMiddleware, client=shoal_client, policy="api")

    @app.post("/login")
    async def login(request: Request):
        await request.state.session.login("user-42", {"roles": ["admin"]})
        return {"ok": True}
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Awaitable, Callable, Dict, List, MutableMapping, Optional, Tuple, Union

from starlette.requests import HTTPConnection

from ._proto import Seconds
from .aio import AsyncClient
from .cookie import SessionCookie
from .errors import ShoalError
from .ratelimit import Decision

__all__ = ["RateLimitMiddleware", "SessionMiddleware", "SessionState", "client_ip"]

log = logging.getLogger("shoal.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
KeyFunc = Callable[[HTTPConnection], Union[Optional[str], Awaitable[Optional[str]]]]

_LIST_FIELDS = (b"ratelimit", b"ratelimit-policy")


def client_ip(conn: HTTPConnection) -> Optional[str]:
    """The default rate-limit key: the peer address (put the app behind a proxy
    that sets it, or pass your own ``key``, e.g. an API key or tenant id)."""
    return f"ip:{conn.client.host}" if conn.client is not None else None


def _encoded(decision: Decision) -> List[Tuple[bytes, bytes]]:
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in decision.headers()]


def _merge(headers: List[Tuple[bytes, bytes]], extra: List[Tuple[bytes, bytes]]) -> List[Tuple[bytes, bytes]]:
    """Adds ``extra`` to response headers: the RateLimit list fields are appended
    (several limiters may each add their policy), the others replace."""
    replace = {n for n, _ in extra if n not in _LIST_FIELDS}
    return [(n, v) for n, v in headers if n.lower() not in replace] + extra


class RateLimitMiddleware:
    """Rate-limits HTTP requests by ``policy``, keyed by ``key(connection)``
    (a function or coroutine function; ``None`` means not limited).

    ``on_error`` says what happens when shoald cannot be asked (daemon down, a
    timeout): ``"allow"`` (the default: a broken limiter should not take the
    API down; logged) or ``"deny"`` (answer 503). Redis outages are not this:
    the daemon's ``on_unavailable`` policy setting handles them.
    """

    def __init__(
        self,
        app: ASGIApp,
        client: AsyncClient,
        policy: str,
        key: KeyFunc = client_ip,
        *,
        cost: int = 1,
        on_error: str = "allow",
    ) -> None:
        if on_error not in ("allow", "deny"):
            raise ValueError("on_error must be 'allow' or 'deny'")
        self.app, self.client, self.policy, self.key = app, client, policy, key
        self.cost, self.on_error = cost, on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        k = self.key(HTTPConnection(scope))
        if inspect.isawaitable(k):
            k = await k
        if k is None:
            await self.app(scope, receive, send)
            return
        try:
            decision = await self.client.check(self.policy, k, self.cost)
        except ShoalError as e:
            if self.on_error == "deny":
                await _plain(send, 503, b"Service Unavailable", [])
                return
            log.warning("rate limiter unavailable, request let through: %s", e)
            await self.app(scope, receive, send)
            return
        extra = _encoded(decision)
        if not decision.allowed:
            await _plain(send, 429, b"Too Many Requests", extra)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = _merge(list(message.get("headers", [])), extra)
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _plain(send: Send, status: int, body: bytes, headers: List[Tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
            + headers,
        }
    )
    await send({"type": "http.response.body", "body": body})


class SessionState:
    """The session of one request, at ``request.state.session``.

    ``user`` is ``None`` when the request carries no valid session. ``data`` is
    the session data (any MessagePack-encodable value; mutate it, then
    :meth:`save`). ``login``, ``rotate`` and ``logout`` set or delete the cookie
    on the response.
    """

    def __init__(
        self,
        client: AsyncClient,
        cookie: SessionCookie,
        idle_ttl: Optional[Seconds],
        absolute_ttl: Optional[Seconds],
    ) -> None:
        self._client, self._cookie = client, cookie
        self._idle_ttl, self._absolute_ttl = idle_ttl, absolute_ttl
        self.token: Optional[str] = None
        self.user: Optional[str] = None
        self.data: Any = None
        self.created_at_ms: Optional[int] = None
        self.absolute_expires_at_ms: Optional[int] = None
        self.set_cookie: Optional[str] = None
        """The ``Set-Cookie`` value the response will carry, if any."""

    @property
    def is_authenticated(self) -> bool:
        """Whether the request carries a valid session."""
        return self.user is not None

    async def login(self, user: str, data: Any = None) -> str:
        """Starts a session for ``user`` and sets the cookie. An existing session
        of this request is revoked first (a new token on every login defeats
        session fixation). Returns the token."""
        if self.token is not None:
            await self._client.session_revoke(self.token)
        created = await self._client.session_create(
            user, data, idle_ttl=self._idle_ttl, absolute_ttl=self._absolute_ttl
        )
        self.token, self.user, self.data = created.token, user, data
        self.absolute_expires_at_ms = created.absolute_expires_at_ms
        self.set_cookie = self._cookie.set_cookie(created.token, created.absolute_expires_at_ms)
        return created.token

    async def save(self) -> bool:
        """Stores ``data`` on every daemon; ``False`` when the session is gone."""
        if self.token is None:
            raise RuntimeError("no session to save: call login() first")
        return await self._client.session_update(self.token, self.data)

    async def rotate(self) -> bool:
        """A new token for the same session (call on privilege changes); sets
        the cookie. ``False`` when the session is gone."""
        if self.token is None:
            return False
        new = await self._client.session_rotate(self.token)
        if new is None:
            self._forget()
            return False
        self.token = new
        self.set_cookie = self._cookie.set_cookie(new, self.absolute_expires_at_ms or 0)
        return True

    async def logout(self) -> None:
        """Revokes the session on every daemon and deletes the cookie."""
        if self.token is not None:
            await self._client.session_revoke(self.token)
        self._forget()

    async def logout_everywhere(self) -> int:
        """Revokes every session of this user (all devices); deletes the cookie."""
        n = 0
        if self.user is not None:
            n = await self._client.session_revoke_user(self.user)
        self._forget()
        return n

    def _forget(self) -> None:
        self.token = self.user = self.data = None
        self.created_at_ms = self.absolute_expires_at_ms = None
        self.set_cookie = self._cookie.clear_cookie()


class SessionMiddleware:
    """Puts a :class:`SessionState` at ``request.state.session`` (HTTP and
    WebSocket scopes) and sends the cookie changes it asks for.

    A cookie whose session is unknown, expired or revoked is deleted. When
    shoald cannot be asked (daemon down, timeout) the request proceeds without
    a session (logged) and the cookie is kept.
    """

    def __init__(
        self,
        app: ASGIApp,
        client: AsyncClient,
        *,
        cookie: Optional[SessionCookie] = None,
        idle_ttl: Optional[Seconds] = None,
        absolute_ttl: Optional[Seconds] = None,
    ) -> None:
        self.app, self.client = app, client
        self.cookie = cookie or SessionCookie()
        self.idle_ttl, self.absolute_ttl = idle_ttl, absolute_ttl

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        state = SessionState(self.client, self.cookie, self.idle_ttl, self.absolute_ttl)
        header = _cookie_header(scope)
        token = self.cookie.token_from_header(header) if header else None
        if token is not None:
            try:
                s = await self.client.session_get(token)
            except ShoalError as e:
                log.warning("session lookup failed, request continues without a session: %s", e)
                s = None
            else:
                if s is None:
                    state.set_cookie = self.cookie.clear_cookie()
            if s is not None:
                state.token, state.user = token, s.user
                state.data = s.data
                state.created_at_ms = s.created_at_ms
                state.absolute_expires_at_ms = s.absolute_expires_at_ms
        scope_state: Dict[str, Any] = scope.setdefault("state", {})
        scope_state["session"] = state

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start" and state.set_cookie is not None:
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + [
                    (b"set-cookie", state.set_cookie.encode("latin-1"))
                ]
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _cookie_header(scope: Scope) -> str:
    parts = [v.decode("latin-1") for n, v in scope.get("headers", []) if n.lower() == b"cookie"]
    return "; ".join(parts)
