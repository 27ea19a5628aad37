"""``AsyncClient``: the asyncio client, one multiplexed connection per client.

Every call writes one frame with a fresh request id and waits on a future that
the connection's protocol resolves when the response with that id arrives;
responses may come in any order. Calls never wait for each other, so many
concurrent tasks pipeline over the one socket. In-flight calls are bounded by a
semaphore (``max_inflight``), every call by a timeout (``timeout``, connecting
included). When the connection dies, its in-flight calls fail with
:class:`~shoal.ConnectionLostError` and the next call reconnects; reconnects are
serialised, and failed attempts back off exponentially, so a missing daemon
costs one ``connect`` per backoff interval and calls in between fail at once
with the last (retryable) connect error.

A call cancelled mid-flight (``task.cancel()``, ``asyncio.wait_for``) only
forgets its id: the response, when it comes, is dropped and the connection
keeps serving everyone else.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, Awaitable, Callable, Dict, Iterable, List, Optional, Tuple, TypeVar, Union

from . import _proto as P
from ._base import DEFAULT_SOCKET_PATH, ClientBase, copy_error
from ._proto import Call, GetResult, HelloResult, Seconds, Session, SessionCreated, SessionListEntry
from .errors import (
    CallTimeoutError,
    ClosedError,
    ConnectError,
    ConnectionLostError,
    NotFoundError,
    ProtocolError,
    ShoalError,
)
from .ratelimit import Concurrent, Decision, QuotaUsage, Reservation

T = TypeVar("T")

_MAX_WAIT_ROUND = 0.05
"""Longest single sleep of ``get_or_load`` while another caller fills the key."""


class _Conn(asyncio.Protocol):
    """One connection: splits the byte stream into frames and routes each
    response to the future registered under its id."""

    def __init__(self) -> None:
        self.transport: Optional[asyncio.Transport] = None
        self.pending: Dict[int, "asyncio.Future[Any]"] = {}
        self.buf = bytearray()
        self.dead: Optional[ShoalError] = None
        self.hello: Optional[HelloResult] = None
        self.max_frame = P.DEFAULT_MAX_FRAME
        self.closed_fut: Optional["asyncio.Future[None]"] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.closed_fut = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        n = len(buf)
        try:
            while n - pos >= 4:
                (length,) = P.HEADER.unpack_from(buf, pos)
                if length == 0 or length > self.max_frame:
                    raise ProtocolError(f"bad frame length {length} from shoald")
                end = pos + 4 + length
                if end > n:
                    break
                msg = P.decode_body(bytes(buf[pos + 4 : end]))
                pos = end
                self._dispatch(msg)
        except ShoalError as e:
            self.kill(e)
            return
        finally:
            if pos:
                del buf[:pos]

    def _dispatch(self, msg: Dict[Any, Any]) -> None:
        rid = msg["id"]
        fut = self.pending.pop(rid, None)
        if fut is None:
            if rid == 0:
                # Our calls never use id 0 after the handshake: this is about the
                # connection (frame_too_large, bad_request), which the server closes.
                err = P.error_of(msg)
                raise err if err is not None else ProtocolError("unsolicited response with id 0")
            return  # a call that gave up (timeout, cancellation)
        if not fut.done():
            fut.set_result(msg)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.kill(ConnectionLostError("connection to shoald lost"))
        if self.closed_fut is not None and not self.closed_fut.done():
            self.closed_fut.set_result(None)

    def kill(self, reason: ShoalError) -> None:
        """Fails every pending call with ``reason`` (the first death counts) and closes."""
        if self.dead is None:
            self.dead = reason
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(copy_error(self.dead))
        if self.transport is not None:
            self.transport.close()


class AsyncClient(ClientBase):
    """An asyncio client of shoald. Create one per process (per event loop) and
    share it between tasks; it connects on first use.

    Durations you pass are seconds (``int``/``float``) or
    :class:`~datetime.timedelta`; results carry the wire's integer milliseconds
    (``*_ms`` fields). Cache values are ``bytes``; the ``*_value`` methods and
    :meth:`get_or_load` store any MessagePack-encodable value (see
    :func:`shoal.pack`).

    ::

        client = await shoal.AsyncClient.connect("/run/shoal/shoal.sock")
        await client.set_value("user:42", {"name": "alice"}, ttl=60)
        user = await client.get_value("user:42")
    """

    def _init_conn(self) -> None:
        self._conn: Optional[_Conn] = None
        self._sem: Optional[asyncio.Semaphore] = None
        self._reconnect: Optional[asyncio.Lock] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    @classmethod
    async def connect(cls, socket_path: str = DEFAULT_SOCKET_PATH, **kwargs: Any) -> "AsyncClient":
        """A client that has connected and completed the handshake (raises
        :class:`~shoal.ConnectError` if the daemon cannot be reached)."""
        c = cls(socket_path, **kwargs)
        await c._connection(time.monotonic() + c.connect_timeout)
        return c

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the connection; in-flight and later calls raise :class:`~shoal.ClosedError`."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            if self._loop is not asyncio.get_running_loop():
                return  # the connection belongs to another loop; it closes with it
            conn.kill(ClosedError("the shoal client was closed"))
            if conn.closed_fut is not None:
                await conn.closed_fut

    # ---- connection management ----

    async def _open(self) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_unix_connection(_Conn, self.socket_path)
        except OSError as e:
            raise ConnectError(f"cannot connect to shoald at {self.socket_path}: {e}") from e
        fut = loop.create_future()
        conn.pending[0] = fut
        hello = {"version": P.VERSION, "client": self.client_name}
        assert conn.transport is not None
        conn.transport.write(P.encode_request(0, "hello", hello, P.DEFAULT_MAX_FRAME))
        try:
            msg = await fut
        except ConnectionLostError as e:
            raise ConnectError("shoald closed the connection during the handshake") from e
        except BaseException:
            conn.kill(ConnectError("handshake abandoned"))
            raise
        err = P.error_of(msg)
        if err is not None:
            conn.kill(err)
            raise err
        info = P.parse_hello(msg["ok"])
        if info.max_frame <= 0:
            conn.kill(ProtocolError("bad hello"))
            raise ProtocolError("hello reply announces max_frame 0")
        conn.hello = info
        conn.max_frame = min(info.max_frame, 0xFFFFFFFF)
        return conn

    async def _connection(self, deadline: float) -> _Conn:
        conn = self._conn
        if conn is not None and conn.dead is None:
            return conn
        if self._closed:
            raise ClosedError("the shoal client was closed")
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._rebind(loop)
        assert self._reconnect is not None
        async with self._reconnect:
            conn = self._conn
            if conn is not None and conn.dead is None:
                return conn
            pending_error = self._backing_off()
            if pending_error is not None:
                raise pending_error
            try:
                remaining = max(0.0, min(deadline - time.monotonic(), self.connect_timeout))
                conn = await asyncio.wait_for(self._open(), remaining)
            except asyncio.TimeoutError:
                err: ShoalError = ConnectError(f"connecting to shoald at {self.socket_path} timed out")
                self._connect_failed(err)
                raise err from None
            except ShoalError as e:
                self._connect_failed(e)
                raise
            self._conn = conn
            self._connected(conn.hello)
            return conn

    # ---- calls ----

    async def _run(self, call: Call[T], timeout: Optional[float] = None) -> T:
        msg = await self._send(call.op, call.fields, self.timeout if timeout is None else timeout)
        err = P.error_of(msg)
        if err is not None:
            raise err
        return call.parse(msg["ok"])

    def _rebind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Used from another event loop (a test client's portal, a second
        ``asyncio.run``): the old connection belongs to the old loop, so start
        afresh. The old socket closes when its loop is collected."""
        self._loop = loop
        self._conn = None
        self._sem = asyncio.Semaphore(self.max_inflight)
        self._reconnect = asyncio.Lock()

    async def _send(self, op: str, fields: Dict[str, Any], timeout: float) -> Dict[Any, Any]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._rebind(loop)
        deadline = time.monotonic() + timeout
        sem = self._sem
        assert sem is not None
        if sem.locked():
            try:
                await asyncio.wait_for(sem.acquire(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise CallTimeoutError("no in-flight slot within the call timeout") from None
        else:
            await sem.acquire()
        try:
            conn = self._conn
            if conn is None or conn.dead is not None:
                conn = await self._connection(deadline)
            rid = next(self._ids)
            frame = P.encode_request(rid, op, fields, conn.max_frame)
            fut = loop.create_future()
            conn.pending[rid] = fut
            assert conn.transport is not None
            conn.transport.write(frame)
            timer = loop.call_at(
                loop.time() + max(0.0, deadline - time.monotonic()), _expire, fut
            )
            try:
                msg: Dict[Any, Any] = await fut
                return msg
            finally:
                timer.cancel()
                conn.pending.pop(rid, None)
        finally:
            sem.release()

    async def call(self, op: str, timeout: Optional[float] = None, **fields: Any) -> Any:
        """Any op by name with its argument fields; returns the decoded ``ok``
        result or raises the error. For ops this class has no method for."""
        return await self._run(P.raw(op, fields), timeout)

    async def ping(self) -> None:
        """``ping``: a round trip to the daemon."""
        await self._run(P.ping())

    async def stats(self) -> Dict[str, Any]:
        """``stats``: the daemon's counters (free form)."""
        return await self._run(P.stats())

    # ---- cache ----

    async def get(self, key: str) -> Optional[bytes]:
        """The value of ``key`` as bytes, or ``None`` on a miss."""
        return await self._run(P.cache_get_value(key))

    async def get_full(self, key: str, lease: bool = False) -> GetResult:
        """The whole ``cache.get`` answer; ``lease=True`` asks for a fill lease on a miss."""
        return await self._run(P.cache_get(key, lease))

    async def mget(self, keys: Iterable[str]) -> List[Optional[bytes]]:
        """The values of ``keys`` (``None`` for misses), in order, in one request."""
        return await self._run(P.cache_mget(keys))

    async def mget_full(self, keys: Iterable[str]) -> List[GetResult]:
        """The whole ``cache.get`` answer of each key, in order."""
        return await self._run(P.cache_mget_full(keys))

    async def set(
        self,
        key: str,
        value: bytes,
        ttl: Optional[Seconds] = None,
        *,
        tags: Iterable[str] = (),
        lease: Optional[str] = None,
    ) -> bool:
        """Stores ``value`` for the whole fleet (``ttl`` ``None``: the daemon's
        default). With ``lease`` (from :meth:`get_full`) the value is a fill,
        stored only while the lease is held; returns whether it was stored."""
        return await self._run(P.cache_set(key, value, ttl, tags, lease))

    async def invalidate(self, keys: Union[str, Iterable[str]]) -> str:
        """Deletes keys fleet-wide; returns the invalidation log id (``seq``)."""
        return await self._run(P.cache_invalidate([keys] if isinstance(keys, str) else keys))

    async def invalidate_tags(self, tags: Union[str, Iterable[str]]) -> Tuple[str, int]:
        """Deletes every key carrying one of ``tags``; returns ``(seq, keys deleted)``."""
        return await self._run(P.cache_invalidate_tags([tags] if isinstance(tags, str) else tags))

    async def get_value(self, key: str) -> Any:
        """The value of ``key`` decoded from MessagePack, or ``None`` on a miss."""
        raw = await self.get(key)
        return None if raw is None else P.unpack(raw)

    async def mget_values(self, keys: Iterable[str]) -> List[Any]:
        """:meth:`mget` with each hit decoded from MessagePack."""
        return [None if r is None else P.unpack(r) for r in await self.mget(keys)]

    async def set_value(
        self, key: str, value: Any, ttl: Optional[Seconds] = None, *, tags: Iterable[str] = ()
    ) -> bool:
        """Stores ``value`` encoded as MessagePack (readable by the Rust typed API)."""
        return await self.set(key, P.pack(value), ttl, tags=tags)

    async def get_or_load(
        self,
        key: str,
        loader: Callable[[], Union[Any, Awaitable[Any]]],
        ttl: Optional[Seconds] = None,
        *,
        tags: Iterable[str] = (),
    ) -> Any:
        """The value of ``key``; on a miss, ``loader()`` (a function or a
        coroutine function) is called, its value stored as MessagePack and returned.

        Fleet-wide, one caller at a time runs the loader for a key (fill
        leases): the others wait for its fill, up to ``lease_wait_max``, and
        then run the loader themselves without storing. When the cache fails
        with a retryable error (daemon down, Redis unavailable, timeout) the
        loader's value is returned: a cache outage costs database load, not
        errors. Exceptions of the loader propagate.
        """
        give_up = time.monotonic() + self.lease_wait_max
        while True:
            try:
                r = await self.get_full(key, lease=True)
            except ShoalError as e:
                if e.retryable:
                    return await _load(loader)
                raise
            if r.hit:
                return P.unpack(r.value or b"")
            if r.lease is not None:
                value = await _load(loader)
                try:
                    await self.set(key, P.pack(value), ttl, tags=tags, lease=r.lease)
                except ShoalError as e:
                    if not e.retryable:
                        raise
                return value
            now = time.monotonic()
            if r.wait_ms is None or now >= give_up:
                return await _load(loader)
            await asyncio.sleep(min(max(r.wait_ms / 1000.0, 0.001), _MAX_WAIT_ROUND, give_up - now))

    # ---- sessions ----

    async def session_create(
        self,
        user: str,
        data: Any = None,
        *,
        idle_ttl: Optional[Seconds] = None,
        absolute_ttl: Optional[Seconds] = None,
    ) -> SessionCreated:
        """Creates a session for ``user`` holding ``data`` (MessagePack-encoded;
        ``None`` stores no data). Lifetimes ``None`` mean the daemon's defaults."""
        raw = b"" if data is None else P.pack(data)
        return await self.session_create_raw(user, raw, idle_ttl=idle_ttl, absolute_ttl=absolute_ttl)

    async def session_create_raw(
        self,
        user: str,
        data: bytes,
        *,
        idle_ttl: Optional[Seconds] = None,
        absolute_ttl: Optional[Seconds] = None,
    ) -> SessionCreated:
        """:meth:`session_create` with data you encoded yourself."""
        return await self._run(P.session_create(user, data, idle_ttl, absolute_ttl))

    async def session_get(self, token: str, touch: bool = True) -> Optional[Session]:
        """Validates ``token`` (sliding its idle expiry unless ``touch=False``);
        ``None`` when unknown, expired or revoked."""
        try:
            return await self._run(P.session_get(token, touch))
        except NotFoundError:
            return None

    async def session_update(self, token: str, data: Any) -> bool:
        """Replaces the session's data (MessagePack-encoded) on every daemon;
        ``False`` when the session is gone."""
        return await self._run(P.session_update(token, P.pack(data)))

    async def session_update_raw(self, token: str, data: bytes) -> bool:
        """:meth:`session_update` with data you encoded yourself."""
        return await self._run(P.session_update(token, data))

    async def session_rotate(self, token: str) -> Optional[str]:
        """A new token for the session (same user, data, absolute expiry); the
        old one is revoked everywhere. ``None`` when the session is gone."""
        try:
            return await self._run(P.session_rotate(token))
        except NotFoundError:
            return None

    async def session_revoke(self, token: str) -> bool:
        """Revokes the session of ``token`` on every daemon (logout)."""
        return await self._run(P.session_revoke(token=token))

    async def session_revoke_id(self, session_id: str) -> bool:
        """Revokes a session by the id :meth:`session_list` shows."""
        return await self._run(P.session_revoke(session_id=session_id))

    async def session_revoke_user(self, user: str) -> int:
        """Revokes every session of ``user`` ("sign out everywhere"); returns how many."""
        return await self._run(P.session_revoke_user(user))

    async def session_list(self, user: str) -> List[SessionListEntry]:
        """The live sessions of ``user``, by session id (never the token)."""
        return await self._run(P.session_list(user))

    # ---- rate limits ----

    async def check(self, policy: str, key: str, cost: int = 1) -> Decision:
        """``ratelimit.check``: counts a request of ``cost`` against (policy, key)."""
        return await self._run(P.ratelimit_check(policy, key, cost))

    async def peek(self, policy: str, key: str) -> Decision:
        """``ratelimit.peek``: what a check would answer, consuming nothing."""
        return await self._run(P.ratelimit_peek(policy, key))

    async def reset_limit(self, policy: str, key: str) -> bool:
        """``ratelimit.reset``: forgets the key's state; ``True`` when there was some."""
        return await self._run(P.ratelimit_reset(policy, key))

    async def reserve(self, policy: str, key: str, max_wait: Seconds, cost: int = 1) -> Reservation:
        """``ratelimit.reserve``: books the next slot if at most ``max_wait`` away."""
        return await self._run(P.ratelimit_reserve(policy, key, max_wait, cost))

    async def acquire(self, policy: str, key: str, max_wait: Seconds = 60.0, cost: int = 1) -> bool:
        """Books the next slot and sleeps until it comes (outbound calls with a
        fleet-wide budget). ``False`` when it was further than ``max_wait``."""
        r = await self.reserve(policy, key, max_wait, cost)
        if r.granted and r.wait_ms:
            await asyncio.sleep(r.wait_ms / 1000.0)
        return r.granted

    async def acquire_concurrent(self, policy: str, key: str, lease: Optional[Seconds] = None) -> Concurrent:
        """``ratelimit.acquire_concurrent``: one in-flight slot of a ``concurrency`` policy."""
        return await self._run(P.ratelimit_acquire_concurrent(policy, key, lease))

    async def release(self, policy: str, key: str, lease: str) -> bool:
        """``ratelimit.release``: gives a concurrency lease back."""
        return await self._run(P.ratelimit_release(policy, key, lease))

    async def set_override(self, policy: str, key: str, limit: int, burst: Optional[int] = None) -> bool:
        """``ratelimit.set_override``: gives ``key`` its own numbers fleet-wide."""
        return await self._run(P.ratelimit_set_override(policy, key, limit, burst))

    async def clear_override(self, policy: str, key: str) -> bool:
        """``ratelimit.clear_override``: ``True`` when there was one."""
        return await self._run(P.ratelimit_clear_override(policy, key))

    async def quota_usage(self, policy: str, prefix: Optional[str] = None, max_keys: Optional[int] = None) -> QuotaUsage:
        """``quota.usage``: current usage of a policy's keys (bounded SCAN)."""
        return await self._run(P.quota_usage(policy, prefix, max_keys))


def _expire(fut: "asyncio.Future[Any]") -> None:
    if not fut.done():
        fut.set_exception(CallTimeoutError("shoald did not answer within the call timeout"))


async def _load(loader: Callable[[], Union[Any, Awaitable[Any]]]) -> Any:
    v = loader()
    if inspect.isawaitable(v):
        v = await v
    return v
