"""Cache ops through both clients against a real shoald."""

from __future__ import annotations

import asyncio

import pytest

import shoal
from conftest import MAX_FRAME, Daemon


def test_async_cache_ops(daemon: Daemon, ns: str) -> None:
    async def main() -> None:
        async with shoal.AsyncClient(daemon.socket) as c:
            await c.ping()
            assert await c.get(ns + "a") is None
            assert await c.set(ns + "a", b"\x00\x01", ttl=60) is True
            assert await c.get(ns + "a") == b"\x00\x01"
            full = await c.get_full(ns + "a")
            assert full.hit and full.source == "l1" and full.ttl_ms is not None and 0 < full.ttl_ms <= 60_000
            await c.set(ns + "b", b"bee", tags=[ns + "tag"])
            assert await c.mget([ns + "a", ns + "missing", ns + "b"]) == [b"\x00\x01", None, b"bee"]
            fulls = await c.mget_full([ns + "a", ns + "missing"])
            assert [f.hit for f in fulls] == [True, False]
            seq = await c.invalidate(ns + "a")
            assert isinstance(seq, str) and seq
            assert await c.get(ns + "a") is None
            seq2, n = await c.invalidate_tags([ns + "tag"])
            assert n == 1 and seq2
            assert await c.get(ns + "b") is None
            # Typed values.
            await c.set_value(ns + "v", {"name": "alice", "tags": ["x"], "n": 3})
            assert await c.get_value(ns + "v") == {"name": "alice", "tags": ["x"], "n": 3}
            assert await c.mget_values([ns + "v", ns + "nope"]) == [{"name": "alice", "tags": ["x"], "n": 3}, None]
            assert c.server_info is not None and c.server_info.node == "shared"
            stats = await c.stats()
            assert stats["ready"] == 1
            # Escape hatch for any op.
            assert await c.call("ping") == "pong"

    asyncio.run(main())


def test_sync_cache_ops(daemon: Daemon, ns: str) -> None:
    with shoal.Client(daemon.socket) as c:
        c.ping()
        assert c.get(ns + "a") is None
        assert c.set(ns + "a", b"x", ttl=60, tags=[ns + "t"]) is True
        assert c.get(ns + "a") == b"x"
        assert c.get_full(ns + "a").source == "l1"
        assert c.mget([ns + "a", ns + "z"]) == [b"x", None]
        assert [r.hit for r in c.mget_full([ns + "a", ns + "z"])] == [True, False]
        assert c.invalidate_tags(ns + "t")[1] == 1
        assert c.get(ns + "a") is None
        c.set_value(ns + "v", [1, "two", None, b"\xff"])
        assert c.get_value(ns + "v") == [1, "two", None, b"\xff"]
        assert c.mget_values([ns + "v"]) == [[1, "two", None, b"\xff"]]
        assert c.invalidate([ns + "v"])
        assert c.get_value(ns + "v") is None
        assert c.stats()["ready"] == 1
        assert c.call("cache.get", key=ns + "q")["hit"] is False


def test_fill_leases(daemon: Daemon, ns: str) -> None:
    with shoal.Client(daemon.socket) as c:
        first = c.get_full(ns + "k", lease=True)
        assert not first.hit and first.lease is not None
        second = c.get_full(ns + "k", lease=True)
        assert second.lease is None and second.wait_ms is not None
        # A fill invalidated before it lands is refused (no stale resurrection).
        c.invalidate(ns + "k")
        assert c.set(ns + "k", b"stale", lease=first.lease) is False
        assert c.get(ns + "k") is None


def test_bad_input_keeps_the_connection(daemon: Daemon, ns: str) -> None:
    async def main() -> None:
        async with shoal.AsyncClient(daemon.socket) as c:
            await c.ping()
            conn = c._conn
            # A request larger than max_frame: refused before sending, with the
            # protocol's code; the connection is the same one afterwards.
            with pytest.raises(shoal.FrameTooLargeError) as e:
                await c.set(ns + "big", b"x" * (MAX_FRAME + 1))
            assert e.value.code == "frame_too_large" and not e.value.retryable
            # A key too long: the daemon answers bad_request for that id.
            with pytest.raises(shoal.BadRequestError) as e2:
                await c.get("k" * 5000)
            assert e2.value.code == "bad_request" and not e2.value.retryable
            # A result too large to send: the daemon answers frame_too_large for that id.
            chunk = b"y" * (MAX_FRAME // 2)
            await c.set(ns + "h1", chunk)
            await c.set(ns + "h2", chunk)
            with pytest.raises(shoal.FrameTooLargeError):
                await c.mget([ns + "h1", ns + "h2"])
            # Unknown op and a wrong argument type.
            with pytest.raises(shoal.UnknownOpError):
                await c.call("cache.frobnicate")
            with pytest.raises(shoal.BadRequestError):
                await c.call("cache.get", key=5)
            with pytest.raises(shoal.UnknownPolicyError) as e3:
                await c.check("no-such-policy", "k")
            assert e3.value.code == "unknown_policy"
            assert await c.get(ns + "h1") == chunk
            assert c._conn is conn and conn is not None and conn.dead is None

    asyncio.run(main())

    with shoal.Client(daemon.socket) as c:
        c.ping()
        conn = c._conn
        with pytest.raises(shoal.FrameTooLargeError):
            c.set(ns + "big", b"x" * (MAX_FRAME + 1))
        with pytest.raises(shoal.BadRequestError):
            c.get("k" * 5000)
        c.ping()
        assert c._conn is conn
