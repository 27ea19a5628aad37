"""``Client``: the blocking client, safe to share between threads.

Like :class:`shoal.AsyncClient` it holds one multiplexed connection: each call
writes one frame with a fresh id and waits for the response with that id, so
threads pipeline over one socket. There is no reader thread: whichever waiting
caller holds the read lock reads frames and hands other callers' responses to
them (a leader/follower scheme), so a single-threaded program pays one
``send`` and one ``recv`` per call and no thread hand-off. The socket is
blocking with a kernel timeout of 20 ms per ``recv``/``send`` (``SO_RCVTIMEO``,
``SO_SNDTIMEO``), so a wait wakes in time to honour the call's deadline.

Same guarantees as the asyncio client: bounded in-flight calls, a timeout per
call (connecting included), reconnect with exponential backoff, typed errors
with ``code`` and ``retryable``.
"""

from __future__ import annotations

import struct
import socket
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, TypeVar, Union

from . import _proto as P
from ._proto import Call, GetResult, HelloResult, Seconds, Session, SessionCreated, SessionListEntry
from ._base import DEFAULT_SOCKET_PATH, ClientBase, copy_error
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

_READ = 256 * 1024
_SLICE = 0.02
"""The kernel-level timeout (SO_RCVTIMEO / SO_SNDTIMEO) of one blocking
``recv`` or ``send``. A blocking call costs one syscall, as in a hand-written
client; a call that waits longer wakes every slice to check its own deadline,
so per-call timeouts are kept to within a slice."""

_TIMEVAL = struct.Struct("ll")


class _Slot:
    """Where one call's response lands. ``event`` is created only if the caller
    has to sleep while another thread reads (see :meth:`_Conn.wait`)."""

    __slots__ = ("msg", "event")

    def __init__(self) -> None:
        self.msg: Optional[Dict[Any, Any]] = None
        self.event: Optional[threading.Event] = None


class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.wlock = threading.Lock()
        self.rlock = threading.Lock()
        # Guards `pending`; callers wait on it for an in-flight slot.
        self.cond = threading.Condition(threading.Lock())
        self.pending: Dict[int, _Slot] = {}
        self.buf = bytearray()
        self.dead: Optional[ShoalError] = None
        self.max_frame = P.DEFAULT_MAX_FRAME
        self.hello: Optional[HelloResult] = None
        sec, usec = int(_SLICE), int((_SLICE % 1) * 1_000_000)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL.pack(sec, usec))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _TIMEVAL.pack(sec, usec))

    def kill(self, reason: ShoalError) -> None:
        with self.cond:
            if self.dead is None:
                self.dead = reason
            slots = list(self.pending.values())
            self.cond.notify_all()
        for s in slots:
            if s.event is not None:
                s.event.set()
        try:
            self.sock.close()
        except OSError:
            pass

    def register(self, rid: int, slot: _Slot, deadline: float, max_inflight: int) -> None:
        """Adds a pending call, waiting while ``max_inflight`` calls are in flight."""
        with self.cond:
            while len(self.pending) >= max_inflight and self.dead is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CallTimeoutError("no in-flight slot within the call timeout")
                self.cond.wait(left)
            if self.dead is not None:
                raise copy_error(self.dead)
            self.pending[rid] = slot

    def unregister(self, rid: int) -> None:
        with self.cond:
            if self.pending.pop(rid, None) is not None:
                self.cond.notify()

    def send(self, frame: bytes, deadline: float) -> None:
        """Writes a whole frame; a frame left half-written kills the connection
        (the daemon would read the next request as the rest of this one)."""
        with self.wlock:
            if self.dead is not None:
                raise copy_error(self.dead)
            view = memoryview(frame)
            sent = 0
            while sent < len(view):
                try:
                    sent += self.sock.send(view[sent:])
                    continue
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as e:
                    self.kill(ConnectionLostError(f"writing to shoald failed: {e}"))
                    raise ConnectionLostError(f"writing to shoald failed: {e}") from e
                if time.monotonic() >= deadline:
                    if sent:
                        self.kill(ConnectionLostError("a request was abandoned half-written"))
                    raise CallTimeoutError("shoald did not take the request within the call timeout")

    def wait(self, slot: _Slot, deadline: float) -> Dict[Any, Any]:
        """Waits for the slot's response: reads the socket while holding the read
        lock (handing other callers their responses), or sleeps until the
        reader hands this one over or lets go of the socket."""
        while True:
            msg = slot.msg
            if msg is not None:
                return msg
            if self.dead is not None:
                raise copy_error(self.dead)
            if self.rlock.acquire(blocking=False):
                try:
                    return self._read_until(slot, deadline)
                finally:
                    self.rlock.release()
                    if len(self.pending) > 1:
                        self._wake_a_follower()
            ev = slot.event
            if ev is None:
                ev = slot.event = threading.Event()
            # Set the event before looking at msg and the read lock; the reader
            # sets msg (or releases the lock) before looking at events. Under
            # the GIL one of the two sides sees the other.
            if slot.msg is not None or not self.rlock.locked():
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise CallTimeoutError("shoald did not answer within the call timeout")
            ev.wait(left)
            ev.clear()

    def _wake_a_follower(self) -> None:
        with self.cond:
            slots = list(self.pending.values())
        for s in slots:
            if s.msg is None and s.event is not None:
                s.event.set()
                return

    def _read_until(self, slot: _Slot, deadline: float) -> Dict[Any, Any]:
        sock = self.sock
        while True:
            msg = slot.msg
            if msg is not None:
                return msg
            if self.dead is not None:
                raise copy_error(self.dead)
            try:
                data = sock.recv(_READ)
            except (BlockingIOError, InterruptedError):
                # A slice passed without data.
                if time.monotonic() >= deadline and slot.msg is None:
                    raise CallTimeoutError("shoald did not answer within the call timeout") from None
                continue
            except OSError as e:
                self.kill(ConnectionLostError(f"reading from shoald failed: {e}"))
                continue
            if not data:
                self.kill(ConnectionLostError("connection to shoald lost"))
                continue
            try:
                self._frames(data)
            except ShoalError as e:
                self.kill(e)

    def _frames(self, data: bytes) -> None:
        buf = self.buf
        if buf:
            buf += data
        else:
            buf = bytearray(data)
        pos, n = 0, len(buf)
        pending = self.pending
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
                rid = msg["id"]
                s = pending.get(rid)
                if s is None:
                    if rid == 0:
                        err = P.error_of(msg)
                        raise err if err is not None else ProtocolError("unsolicited response with id 0")
                    continue  # a call that gave up
                s.msg = msg
                ev = s.event
                if ev is not None:
                    ev.set()
        finally:
            self.buf = buf[pos:] if pos < n else bytearray()


class Client(ClientBase):
    """A blocking client of shoald, with the same methods as
    :class:`shoal.AsyncClient` (without ``await``). Create one per process and
    share it between threads; it connects on first use.

    ::

        client = shoal.Client("/run/shoal/shoal.sock")
        client.set_value("user:42", {"name": "alice"}, ttl=60)
        user = client.get_value("user:42")
    """

    def _init_conn(self) -> None:
        self._conn: Optional[_Conn] = None
        self._reconnect = threading.Lock()

    @classmethod
    def connect(cls, socket_path: str = DEFAULT_SOCKET_PATH, **kwargs: Any) -> "Client":
        """A client that has connected and completed the handshake."""
        c = cls(socket_path, **kwargs)
        c._connection(time.monotonic() + c.connect_timeout)
        return c

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection; in-flight and later calls raise :class:`~shoal.ClosedError`."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.kill(ClosedError("the shoal client was closed"))

    def _open(self, deadline: float) -> _Conn:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock.connect(self.socket_path)
            sock.settimeout(None)
        except OSError as e:
            sock.close()
            raise ConnectError(f"cannot connect to shoald at {self.socket_path}: {e}") from e
        conn = _Conn(sock)
        slot = _Slot()
        conn.pending[0] = slot
        try:
            hello = {"version": P.VERSION, "client": self.client_name}
            conn.send(P.encode_request(0, "hello", hello, P.DEFAULT_MAX_FRAME), deadline)
            msg = conn.wait(slot, deadline)
            conn.pending.pop(0, None)
        except (ConnectionLostError, CallTimeoutError) as e:
            conn.kill(ConnectError("handshake failed"))
            raise ConnectError(f"handshake with shoald at {self.socket_path} failed: {e}") from e
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

    def _connection(self, deadline: float) -> _Conn:
        conn = self._conn
        if conn is not None and conn.dead is None:
            return conn
        if self._closed:
            raise ClosedError("the shoal client was closed")
        if not self._reconnect.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise CallTimeoutError("waiting for a reconnect exceeded the call timeout")
        try:
            conn = self._conn
            if conn is not None and conn.dead is None:
                return conn
            pending_error = self._backing_off()
            if pending_error is not None:
                raise pending_error
            try:
                conn = self._open(min(deadline, time.monotonic() + self.connect_timeout))
            except ShoalError as e:
                self._connect_failed(e)
                raise
            self._conn = conn
            self._connected(conn.hello)
            return conn
        finally:
            self._reconnect.release()

    def _run(self, call: Call[T], timeout: Optional[float] = None) -> T:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        conn = self._conn
        if conn is None or conn.dead is not None:
            conn = self._connection(deadline)
        rid = next(self._ids)
        frame = P.encode_request(rid, call.op, call.fields, conn.max_frame)
        slot = _Slot()
        conn.register(rid, slot, deadline, self.max_inflight)
        try:
            conn.send(frame, deadline)
            msg = conn.wait(slot, deadline)
        finally:
            conn.unregister(rid)
        err = P.error_of(msg)
        if err is not None:
            raise err
        return call.parse(msg["ok"])

    def call(self, op: str, timeout: Optional[float] = None, **fields: Any) -> Any:
        """Any op by name with its argument fields; returns the decoded ``ok`` result."""
        return self._run(P.raw(op, fields), timeout)

    def ping(self) -> None:
        """``ping``: a round trip to the daemon."""
        self._run(P.ping())

    def stats(self) -> Dict[str, Any]:
        """``stats``: the daemon's counters (free form)."""
        return self._run(P.stats())

    # ---- cache (see AsyncClient for the semantics) ----

    def get(self, key: str) -> Optional[bytes]:
        """The value of ``key`` as bytes, or ``None`` on a miss."""
        return self._run(P.cache_get_value(key))

    def get_full(self, key: str, lease: bool = False) -> GetResult:
        """The whole ``cache.get`` answer; ``lease=True`` asks for a fill lease on a miss."""
        return self._run(P.cache_get(key, lease))

    def mget(self, keys: Iterable[str]) -> List[Optional[bytes]]:
        """The values of ``keys`` (``None`` for misses), in order, in one request."""
        return self._run(P.cache_mget(keys))

    def mget_full(self, keys: Iterable[str]) -> List[GetResult]:
        """The whole ``cache.get`` answer of each key, in order."""
        return self._run(P.cache_mget_full(keys))

    def set(
        self,
        key: str,
        value: bytes,
        ttl: Optional[Seconds] = None,
        *,
        tags: Iterable[str] = (),
        lease: Optional[str] = None,
    ) -> bool:
        """Stores ``value`` for the whole fleet; returns whether it was stored."""
        return self._run(P.cache_set(key, value, ttl, tags, lease))

    def invalidate(self, keys: Union[str, Iterable[str]]) -> str:
        """Deletes keys fleet-wide; returns the invalidation log id (``seq``)."""
        return self._run(P.cache_invalidate([keys] if isinstance(keys, str) else keys))

    def invalidate_tags(self, tags: Union[str, Iterable[str]]) -> Tuple[str, int]:
        """Deletes every key carrying one of ``tags``; returns ``(seq, keys deleted)``."""
        return self._run(P.cache_invalidate_tags([tags] if isinstance(tags, str) else tags))

    def get_value(self, key: str) -> Any:
        """The value of ``key`` decoded from MessagePack, or ``None`` on a miss."""
        raw = self.get(key)
        return None if raw is None else P.unpack(raw)

    def mget_values(self, keys: Iterable[str]) -> List[Any]:
        """:meth:`mget` with each hit decoded from MessagePack."""
        return [None if r is None else P.unpack(r) for r in self.mget(keys)]

    def set_value(self, key: str, value: Any, ttl: Optional[Seconds] = None, *, tags: Iterable[str] = ()) -> bool:
        """Stores ``value`` encoded as MessagePack (readable by the Rust typed API)."""
        return self.set(key, P.pack(value), ttl, tags=tags)

    def get_or_load(
        self, key: str, loader: Callable[[], Any], ttl: Optional[Seconds] = None, *, tags: Iterable[str] = ()
    ) -> Any:
        """Cache-aside with one loader fleet-wide; see :meth:`AsyncClient.get_or_load`."""
        give_up = time.monotonic() + self.lease_wait_max
        while True:
            try:
                r = self.get_full(key, lease=True)
            except ShoalError as e:
                if e.retryable:
                    return loader()
                raise
            if r.hit:
                return P.unpack(r.value or b"")
            if r.lease is not None:
                value = loader()
                try:
                    self.set(key, P.pack(value), ttl, tags=tags, lease=r.lease)
                except ShoalError as e:
                    if not e.retryable:
                        raise
                return value
            now = time.monotonic()
            if r.wait_ms is None or now >= give_up:
                return loader()
            time.sleep(min(max(r.wait_ms / 1000.0, 0.001), 0.05, give_up - now))

    # ---- sessions ----

    def session_create(
        self, user: str, data: Any = None, *, idle_ttl: Optional[Seconds] = None, absolute_ttl: Optional[Seconds] = None
    ) -> SessionCreated:
        """Creates a session for ``user`` holding ``data`` (MessagePack-encoded)."""
        raw = b"" if data is None else P.pack(data)
        return self.session_create_raw(user, raw, idle_ttl=idle_ttl, absolute_ttl=absolute_ttl)

    def session_create_raw(
        self, user: str, data: bytes, *, idle_ttl: Optional[Seconds] = None, absolute_ttl: Optional[Seconds] = None
    ) -> SessionCreated:
        """:meth:`session_create` with data you encoded yourself."""
        return self._run(P.session_create(user, data, idle_ttl, absolute_ttl))

    def session_get(self, token: str, touch: bool = True) -> Optional[Session]:
        """Validates ``token``; ``None`` when unknown, expired or revoked."""
        try:
            return self._run(P.session_get(token, touch))
        except NotFoundError:
            return None

    def session_update(self, token: str, data: Any) -> bool:
        """Replaces the session's data (MessagePack-encoded) on every daemon."""
        return self._run(P.session_update(token, P.pack(data)))

    def session_update_raw(self, token: str, data: bytes) -> bool:
        """:meth:`session_update` with data you encoded yourself."""
        return self._run(P.session_update(token, data))

    def session_rotate(self, token: str) -> Optional[str]:
        """A new token for the session; the old one is revoked everywhere."""
        try:
            return self._run(P.session_rotate(token))
        except NotFoundError:
            return None

    def session_revoke(self, token: str) -> bool:
        """Revokes the session of ``token`` on every daemon (logout)."""
        return self._run(P.session_revoke(token=token))

    def session_revoke_id(self, session_id: str) -> bool:
        """Revokes a session by the id :meth:`session_list` shows."""
        return self._run(P.session_revoke(session_id=session_id))

    def session_revoke_user(self, user: str) -> int:
        """Revokes every session of ``user``; returns how many."""
        return self._run(P.session_revoke_user(user))

    def session_list(self, user: str) -> List[SessionListEntry]:
        """The live sessions of ``user``, by session id (never the token)."""
        return self._run(P.session_list(user))

    # ---- rate limits ----

    def check(self, policy: str, key: str, cost: int = 1) -> Decision:
        """``ratelimit.check``: counts a request of ``cost`` against (policy, key)."""
        return self._run(P.ratelimit_check(policy, key, cost))

    def peek(self, policy: str, key: str) -> Decision:
        """``ratelimit.peek``: what a check would answer, consuming nothing."""
        return self._run(P.ratelimit_peek(policy, key))

    def reset_limit(self, policy: str, key: str) -> bool:
        """``ratelimit.reset``: forgets the key's state."""
        return self._run(P.ratelimit_reset(policy, key))

    def reserve(self, policy: str, key: str, max_wait: Seconds, cost: int = 1) -> Reservation:
        """``ratelimit.reserve``: books the next slot if at most ``max_wait`` away."""
        return self._run(P.ratelimit_reserve(policy, key, max_wait, cost))

    def acquire(self, policy: str, key: str, max_wait: Seconds = 60.0, cost: int = 1) -> bool:
        """Books the next slot and sleeps until it comes; ``False`` when too far."""
        r = self.reserve(policy, key, max_wait, cost)
        if r.granted and r.wait_ms:
            time.sleep(r.wait_ms / 1000.0)
        return r.granted

    def acquire_concurrent(self, policy: str, key: str, lease: Optional[Seconds] = None) -> Concurrent:
        """``ratelimit.acquire_concurrent``: one in-flight slot of a ``concurrency`` policy."""
        return self._run(P.ratelimit_acquire_concurrent(policy, key, lease))

    def release(self, policy: str, key: str, lease: str) -> bool:
        """``ratelimit.release``: gives a concurrency lease back."""
        return self._run(P.ratelimit_release(policy, key, lease))

    def set_override(self, policy: str, key: str, limit: int, burst: Optional[int] = None) -> bool:
        """``ratelimit.set_override``: gives ``key`` its own numbers fleet-wide."""
        return self._run(P.ratelimit_set_override(policy, key, limit, burst))

    def clear_override(self, policy: str, key: str) -> bool:
        """``ratelimit.clear_override``: ``True`` when there was one."""
        return self._run(P.ratelimit_clear_override(policy, key))

    def quota_usage(self, policy: str, prefix: Optional[str] = None, max_keys: Optional[int] = None) -> QuotaUsage:
        """``quota.usage``: current usage of a policy's keys (bounded SCAN)."""
        return self._run(P.quota_usage(policy, prefix, max_keys))
