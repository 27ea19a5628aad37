"""Wire format of protocol v1: framing, request builders and typed results.

Everything that knows the shape of a request or a response lives here, shared
by :class:`shoal.AsyncClient` and :class:`shoal.Client`. A request builder
returns a :class:`Call`: the op name, its argument fields, and the function that
turns the ``ok`` result into the Python value the client method returns. The
clients only move frames.

Frames are a 4-byte big-endian length and one MessagePack map. Values are
MessagePack ``bin``; this module never looks inside them (see
:func:`shoal.pack` for the typed helpers).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Dict, Generic, Iterable, List, Optional, Tuple, TypeVar, Union

import msgpack  # type: ignore[import-untyped]

from .errors import FrameTooLargeError, ProtocolError, ServerError, server_error
from .ratelimit import Concurrent, Decision, QuotaKeyUsage, QuotaUsage, Reservation

T = TypeVar("T")

VERSION = 1
"""The protocol version this client speaks."""

DEFAULT_MAX_FRAME = 16 * 1024 * 1024
"""The largest frame before the daemon has announced its own limit."""

MAX_DURATION_MS = 10 * 365 * 24 * 3600 * 1000
"""The daemon refuses durations beyond this (about 10 years)."""

HEADER = struct.Struct(">I")

Seconds = Union[float, int, timedelta]
"""A duration argument: seconds (int or float) or a :class:`datetime.timedelta`."""


def duration_ms(d: Seconds) -> int:
    """Seconds (or a timedelta) as the protocol's integer milliseconds, rounded
    up so that a sub-millisecond duration becomes 1 ms rather than the invalid 0."""
    s = d.total_seconds() if isinstance(d, timedelta) else float(d)
    if s < 0 or math.isnan(s):
        raise ValueError(f"a duration must not be negative, got {d!r}")
    return min(int(math.ceil(s * 1000.0)), MAX_DURATION_MS)


class Call(Generic[T]):
    """One request: op, argument fields, and the parser of its ``ok`` result.
    (A plain slotted class: one is built per call, on the hot path.)"""

    __slots__ = ("op", "fields", "parse")

    def __init__(self, op: str, fields: Dict[str, Any], parse: Callable[[Any], T]) -> None:
        self.op = op
        self.fields = fields
        self.parse = parse


def encode_request(req_id: int, op: str, fields: Dict[str, Any], max_frame: int) -> bytes:
    """The complete frame (header included) of a request.

    Raises :class:`FrameTooLargeError` (code ``frame_too_large``) without
    sending when the body exceeds ``max_frame``: the daemon would answer it by
    closing the connection, failing every other call in flight.
    """
    msg = {"id": req_id, "op": op, **fields}
    try:
        body: bytes = msgpack.packb(msg, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"cannot encode the {op} request: {e}") from e
    if len(body) > max_frame:
        raise FrameTooLargeError(
            "frame_too_large",
            f"request of {len(body)} bytes exceeds the server's max_frame ({max_frame} bytes)",
        )
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> Dict[Any, Any]:
    """A response frame body as a map. Anything else is a :class:`ProtocolError`."""
    try:
        msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several unrelated types
        raise ProtocolError(f"malformed response from shoald: {e}") from e
    if not isinstance(msg, dict) or not isinstance(msg.get("id"), int):
        raise ProtocolError("a response must be a map with an unsigned integer id")
    return msg


def error_of(msg: Dict[Any, Any]) -> Optional[ServerError]:
    """The error a response carries, or ``None`` when it carries ``ok``."""
    if "ok" in msg:
        return None
    err = msg.get("err")
    if not isinstance(err, dict):
        raise ProtocolError("a response must carry ok or err")
    code = err.get("code")
    text = err.get("msg", "")
    extra = {k: v for k, v in err.items() if k not in ("code", "msg")}
    return server_error(str(code), str(text), extra)


def _map(v: Any) -> Dict[str, Any]:
    if not isinstance(v, dict):
        raise ProtocolError(f"expected a map in the result, got {type(v).__name__}")
    return v


def _get(m: Dict[str, Any], name: str) -> Any:
    try:
        return m[name]
    except KeyError:
        raise ProtocolError(f"field `{name}` missing from the result") from None


# ---- results ----


@dataclass(frozen=True)
class HelloResult:
    """What the daemon said in the handshake."""

    version: int
    server: str
    node: str
    max_frame: int


def parse_hello(v: Any) -> HelloResult:
    m = _map(v)
    return HelloResult(int(_get(m, "version")), str(_get(m, "server")), str(_get(m, "node")), int(_get(m, "max_frame")))


@dataclass(frozen=True)
class GetResult:
    """The full ``cache.get`` answer.

    ``source`` is ``"l1"`` or ``"l2"`` on a hit. With ``lease=True`` a miss
    carries either a fill ``lease`` (you load and fill) or ``wait_ms`` (another
    caller holds the lease: read again after that long).
    """

    hit: bool
    value: Optional[bytes]
    source: Optional[str]
    ttl_ms: Optional[int]
    lease: Optional[str]
    wait_ms: Optional[int]


def parse_get(v: Any) -> GetResult:
    m = _map(v)
    return GetResult(
        bool(_get(m, "hit")),
        m.get("value"),
        m.get("from"),
        m.get("ttl_ms"),
        m.get("lease"),
        m.get("wait_ms"),
    )


def _value(v: Any) -> Optional[bytes]:
    m = _map(v)
    return m.get("value") if m.get("hit") else None


def _values(v: Any) -> List[Optional[bytes]]:
    if not isinstance(v, list):
        raise ProtocolError("cache.mget must answer an array")
    return [_value(x) for x in v]


def _gets(v: Any) -> List[GetResult]:
    if not isinstance(v, list):
        raise ProtocolError("cache.mget must answer an array")
    return [parse_get(x) for x in v]


def _field(name: str, conv: Callable[[Any], T]) -> Callable[[Any], T]:
    return lambda v: conv(_get(_map(v), name))


@dataclass(frozen=True)
class SessionCreated:
    """A new session: give ``token`` to the browser (see :class:`shoal.SessionCookie`)."""

    token: str
    expires_at_ms: int
    absolute_expires_at_ms: int


@dataclass(frozen=True)
class Session:
    """A validated session. ``raw`` is the stored data; ``data`` decodes it as
    MessagePack (what :meth:`~shoal.AsyncClient.session_create` stores)."""

    user: str
    raw: bytes
    created_at_ms: int
    last_seen_ms: int
    expires_at_ms: int
    absolute_expires_at_ms: int

    @property
    def data(self) -> Any:
        """The session data decoded from MessagePack (``None`` when empty)."""
        return unpack(self.raw) if self.raw else None


@dataclass(frozen=True)
class SessionListEntry:
    """One live session of a user, by id (never the token)."""

    session_id: str
    created_at_ms: int
    last_seen_ms: int
    expires_at_ms: int


def _created(v: Any) -> SessionCreated:
    m = _map(v)
    return SessionCreated(str(_get(m, "token")), int(_get(m, "expires_at_ms")), int(_get(m, "absolute_expires_at_ms")))


def _session(v: Any) -> Session:
    m = _map(v)
    return Session(
        str(_get(m, "user")),
        bytes(m.get("data") or b""),
        int(_get(m, "created_at_ms")),
        int(_get(m, "last_seen_ms")),
        int(_get(m, "expires_at_ms")),
        int(_get(m, "absolute_expires_at_ms")),
    )


def _session_list(v: Any) -> List[SessionListEntry]:
    if not isinstance(v, list):
        raise ProtocolError("session.list must answer an array")
    return [
        SessionListEntry(
            str(_get(m, "session_id")),
            int(_get(m, "created_at_ms")),
            int(_get(m, "last_seen_ms")),
            int(_get(m, "expires_at_ms")),
        )
        for m in map(_map, v)
    ]


def _decision(policy: str) -> Callable[[Any], Decision]:
    def parse(v: Any) -> Decision:
        m = _map(v)
        return Decision(
            policy=policy,
            allowed=bool(_get(m, "allowed")),
            limit=int(_get(m, "limit")),
            remaining=int(_get(m, "remaining")),
            reset_after_ms=int(_get(m, "reset_after_ms")),
            retry_after_ms=int(_get(m, "retry_after_ms")),
            window_ms=m.get("window_ms"),
            fallback=m.get("fallback"),
        )

    return parse


def _reservation(v: Any) -> Reservation:
    m = _map(v)
    return Reservation(bool(_get(m, "granted")), int(_get(m, "wait_ms")))


def _concurrent(v: Any) -> Concurrent:
    m = _map(v)
    return Concurrent(
        acquired=bool(_get(m, "acquired")),
        lease=m.get("lease"),
        limit=int(_get(m, "limit")),
        remaining=int(_get(m, "remaining")),
        retry_after_ms=int(_get(m, "retry_after_ms")),
        lease_ms=int(_get(m, "lease_ms")),
    )


def _quota(v: Any) -> QuotaUsage:
    m = _map(v)
    keys = [
        QuotaKeyUsage(
            str(_get(k, "key")),
            int(_get(k, "used")),
            int(_get(k, "limit")),
            int(_get(k, "remaining")),
            int(_get(k, "reset_after_ms")),
        )
        for k in map(_map, _get(m, "keys"))
    ]
    return QuotaUsage(
        policy=str(_get(m, "policy")),
        algorithm=str(_get(m, "algorithm")),
        limit=int(_get(m, "limit")),
        window_ms=int(_get(m, "window_ms")),
        keys=keys,
        truncated=bool(_get(m, "truncated")),
    )


def _ident(v: Any) -> Any:
    return v


def _none(v: Any) -> None:
    return None


# ---- typed values ----


def pack(obj: Any) -> bytes:
    """Encodes a value as MessagePack the way the Rust typed API does.

    dicts become maps (what Rust's ``rmp_serde::to_vec_named`` writes for
    structs and maps), lists and tuples arrays, ``bytes`` ``bin``, ``str``
    ``str``. A value written here reads as the matching Rust struct, and a Rust
    struct reads here as a dict keyed by field name.
    """
    try:
        out: bytes = msgpack.packb(obj, use_bin_type=True)
        return out
    except (TypeError, ValueError, OverflowError) as e:
        from .errors import CodecError

        raise CodecError(f"cannot encode value as MessagePack: {e}") from e


def unpack(data: bytes) -> Any:
    """Decodes a MessagePack value written by :func:`pack` or the Rust typed API.

    Maps become dicts, arrays lists, ``bin`` bytes. Raises
    :class:`~shoal.CodecError` on bytes that are not one MessagePack value.
    """
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several unrelated types
        from .errors import CodecError

        raise CodecError(f"cannot decode value as MessagePack: {e}") from e


# ---- request builders (one per op) ----


def _keys(keys: Iterable[str], what: str) -> List[str]:
    if isinstance(keys, (str, bytes)):
        raise TypeError(f"{what} must be an iterable of strings, not a single string")
    return list(keys)


def ping() -> Call[None]:
    return Call("ping", {}, _none)


def stats() -> Call[Dict[str, Any]]:
    return Call("stats", {}, _map)


def cache_get(key: str, lease: bool = False) -> Call[GetResult]:
    f: Dict[str, Any] = {"key": key}
    if lease:
        f["lease"] = True
    return Call("cache.get", f, parse_get)


def cache_get_value(key: str) -> Call[Optional[bytes]]:
    return Call("cache.get", {"key": key}, _value)


def cache_mget(keys: Iterable[str]) -> Call[List[Optional[bytes]]]:
    return Call("cache.mget", {"keys": _keys(keys, "keys")}, _values)


def cache_mget_full(keys: Iterable[str]) -> Call[List[GetResult]]:
    return Call("cache.mget", {"keys": _keys(keys, "keys")}, _gets)


def cache_set(
    key: str,
    value: bytes,
    ttl: Optional[Seconds] = None,
    tags: Iterable[str] = (),
    lease: Optional[str] = None,
) -> Call[bool]:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError("cache values are bytes; use set_value() for typed values")
    f: Dict[str, Any] = {"key": key, "value": bytes(value)}
    if ttl is not None:
        f["ttl_ms"] = duration_ms(ttl)
    if lease is not None:
        f["lease"] = lease
    tag_list = _keys(tags, "tags")
    if tag_list:
        f["tags"] = tag_list
    return Call("cache.set", f, _field("stored", bool))


def cache_invalidate(keys: Iterable[str]) -> Call[str]:
    return Call("cache.invalidate", {"keys": _keys(keys, "keys")}, _field("seq", str))


def cache_invalidate_tags(tags: Iterable[str]) -> Call[Tuple[str, int]]:
    def parse(v: Any) -> Tuple[str, int]:
        m = _map(v)
        return str(_get(m, "seq")), int(_get(m, "keys"))

    return Call("cache.invalidate_tags", {"tags": _keys(tags, "tags")}, parse)


def session_create(
    user: str, data: bytes, idle_ttl: Optional[Seconds] = None, absolute_ttl: Optional[Seconds] = None
) -> Call[SessionCreated]:
    f: Dict[str, Any] = {"user": user, "data": bytes(data)}
    if idle_ttl is not None:
        f["idle_ttl_ms"] = max(1, duration_ms(idle_ttl))
    if absolute_ttl is not None:
        f["absolute_ttl_ms"] = max(1, duration_ms(absolute_ttl))
    return Call("session.create", f, _created)


def session_get(token: str, touch: bool = True) -> Call[Session]:
    f: Dict[str, Any] = {"token": token}
    if not touch:
        f["touch"] = False
    return Call("session.get", f, _session)


def session_update(token: str, data: bytes) -> Call[bool]:
    return Call("session.update", {"token": token, "data": bytes(data)}, _field("updated", bool))


def session_rotate(token: str) -> Call[str]:
    return Call("session.rotate", {"token": token}, _field("token", str))


def session_revoke(token: Optional[str] = None, session_id: Optional[str] = None) -> Call[bool]:
    if (token is None) == (session_id is None):
        raise TypeError("give exactly one of token and session_id")
    f = {"token": token} if token is not None else {"session_id": session_id}
    return Call("session.revoke", f, _field("revoked", bool))


def session_revoke_user(user: str) -> Call[int]:
    return Call("session.revoke_user", {"user": user}, _field("revoked", int))


def session_list(user: str) -> Call[List[SessionListEntry]]:
    return Call("session.list", {"user": user}, _session_list)


def _pk(policy: str, key: str) -> Dict[str, Any]:
    return {"policy": policy, "key": key}


def ratelimit_check(policy: str, key: str, cost: int = 1) -> Call[Decision]:
    f = _pk(policy, key)
    if cost != 1:
        f["cost"] = cost
    return Call("ratelimit.check", f, _decision(policy))


def ratelimit_peek(policy: str, key: str) -> Call[Decision]:
    return Call("ratelimit.peek", _pk(policy, key), _decision(policy))


def ratelimit_reset(policy: str, key: str) -> Call[bool]:
    return Call("ratelimit.reset", _pk(policy, key), _field("reset", bool))


def ratelimit_reserve(policy: str, key: str, max_wait: Seconds, cost: int = 1) -> Call[Reservation]:
    f = _pk(policy, key)
    if cost != 1:
        f["cost"] = cost
    f["max_wait_ms"] = max(1, duration_ms(max_wait))
    return Call("ratelimit.reserve", f, _reservation)


def ratelimit_acquire_concurrent(policy: str, key: str, lease: Optional[Seconds] = None) -> Call[Concurrent]:
    f = _pk(policy, key)
    if lease is not None:
        f["lease_ms"] = max(1, duration_ms(lease))
    return Call("ratelimit.acquire_concurrent", f, _concurrent)


def ratelimit_release(policy: str, key: str, lease: str) -> Call[bool]:
    f = _pk(policy, key)
    f["lease"] = lease
    return Call("ratelimit.release", f, _field("released", bool))


def ratelimit_set_override(policy: str, key: str, limit: int, burst: Optional[int] = None) -> Call[bool]:
    f = _pk(policy, key)
    f["limit"] = limit
    if burst is not None:
        f["burst"] = burst
    return Call("ratelimit.set_override", f, _field("replaced", bool))


def ratelimit_clear_override(policy: str, key: str) -> Call[bool]:
    return Call("ratelimit.clear_override", _pk(policy, key), _field("cleared", bool))


def quota_usage(policy: str, prefix: Optional[str] = None, max_keys: Optional[int] = None) -> Call[QuotaUsage]:
    f: Dict[str, Any] = {"policy": policy}
    if prefix is not None:
        f["prefix"] = prefix
    if max_keys is not None:
        f["max_keys"] = max_keys
    return Call("quota.usage", f, _quota)


def raw(op: str, fields: Dict[str, Any]) -> Call[Any]:
    """Any op with the given fields; the ``ok`` result is returned as decoded."""
    for reserved in ("id", "op"):
        if reserved in fields:
            raise TypeError(f"`{reserved}` belongs to the envelope, not to an op's arguments")
    return Call(op, dict(fields), _ident)


__all__ = [
    "Call",
    "GetResult",
    "HelloResult",
    "Session",
    "SessionCreated",
    "SessionListEntry",
    "pack",
    "unpack",
    "duration_ms",
]
