"""Sessions and rate limits through both clients against a real shoald."""

from __future__ import annotations

import asyncio

import pytest

import shoal
from conftest import Daemon


def test_async_sessions(daemon: Daemon, ns: str) -> None:
    user = ns + "alice"

    async def main() -> None:
        async with shoal.AsyncClient(daemon.socket) as c:
            created = await c.session_create(user, {"roles": ["admin"]}, idle_ttl=60, absolute_ttl=3600)
            assert len(created.token) >= 43
            assert created.expires_at_ms <= created.absolute_expires_at_ms
            s = await c.session_get(created.token)
            assert s is not None and s.user == user and s.data == {"roles": ["admin"]}
            assert await c.session_update(created.token, {"roles": []}) is True
            s = await c.session_get(created.token, touch=False)
            assert s is not None and s.data == {"roles": []}
            new = await c.session_rotate(created.token)
            assert new is not None and new != created.token
            assert await c.session_get(created.token) is None
            assert await c.session_rotate(created.token) is None
            other = await c.session_create_raw(user, b"opaque")
            listed = await c.session_list(user)
            assert len(listed) == 2 and all(e.session_id for e in listed)
            s2 = await c.session_get(other.token)
            assert s2 is not None and s2.raw == b"opaque"
            assert await c.session_update_raw(other.token, b"x") is True
            assert await c.session_revoke_id(listed[0].session_id) is True
            assert len(await c.session_list(user)) == 1
            assert await c.session_revoke_user(user) == 1
            assert await c.session_list(user) == []
            third = await c.session_create(user)
            s3 = await c.session_get(third.token)
            assert s3 is not None and s3.data is None
            assert await c.session_revoke(third.token) is True
            assert await c.session_revoke(third.token) is False
            assert await c.session_update(third.token, 1) is False

    asyncio.run(main())


def test_sync_sessions(daemon: Daemon, ns: str) -> None:
    user = ns + "bob"
    with shoal.Client(daemon.socket) as c:
        created = c.session_create(user, {"n": 1})
        s = c.session_get(created.token)
        assert s is not None and s.data == {"n": 1}
        assert c.session_update(created.token, {"n": 2})
        assert c.session_update_raw(created.token, shoal.pack({"n": 3}))
        got = c.session_get(created.token)
        assert got is not None and got.data == {"n": 3}
        tok = c.session_rotate(created.token)
        assert tok is not None and c.session_get(created.token) is None
        assert len(c.session_list(user)) == 1
        assert c.session_revoke(tok)
        assert c.session_get(tok) is None
        c.session_create_raw(user, b"", idle_ttl=10)
        assert c.session_revoke_id(c.session_list(user)[0].session_id)
        assert c.session_revoke_user(user) == 0


def test_async_rate_limits(daemon: Daemon, ns: str) -> None:
    async def main() -> None:
        async with shoal.AsyncClient(daemon.socket) as c:
            key = ns + "client"
            decisions = [await c.check("api", key) for _ in range(4)]
            assert [d.allowed for d in decisions] == [True, True, True, False]
            denied = decisions[-1]
            assert denied.limit == 3 and denied.remaining == 0 and denied.retry_after_ms > 0
            h = dict(denied.headers())
            assert h["retry-after"] == str(denied.retry_after_secs()) and int(h["retry-after"]) >= 1
            assert h["x-ratelimit-limit"] == "3" and h["x-ratelimit-remaining"] == "0"
            assert h["ratelimit"].startswith('"api";r=0;t=')
            assert denied.window_ms == 10_000
            assert h["ratelimit-policy"] == '"api";q=3;w=10'
            assert "retry-after" not in dict(decisions[0].headers())
            peeked = await c.peek("api", key)
            assert not peeked.allowed
            assert await c.reset_limit("api", key) is True
            assert (await c.check("api", key, cost=2)).remaining == 1
            with pytest.raises(shoal.BadRequestError):
                await c.check("api", key, cost=100)
            # Runtime override, then back to the policy.
            assert await c.set_override("api", key, 100) is False
            assert (await c.check("api", key)).limit == 100
            assert await c.clear_override("api", key) is True
            assert await c.clear_override("api", key) is False
            usage = await c.quota_usage("api", prefix=ns)
            assert usage.policy == "api" and usage.limit == 3
            assert [k.key for k in usage.keys] == [key]
            # Reservations (gcra: one slot per 100 ms).
            r1 = await c.reserve("vendor", ns + "v", max_wait=1.0)
            r2 = await c.reserve("vendor", ns + "v", max_wait=1.0)
            assert r1.granted and r2.granted and r2.wait_ms > r1.wait_ms
            far = await c.reserve("vendor", ns + "v", max_wait=0.001)
            assert not far.granted
            assert await c.acquire("vendor", ns + "w") is True
            # Concurrency leases.
            a = await c.acquire_concurrent("conc", ns + "c")
            b = await c.acquire_concurrent("conc", ns + "c", lease=5)
            full = await c.acquire_concurrent("conc", ns + "c")
            assert a.acquired and b.acquired and not full.acquired and full.lease is None
            assert b.lease_ms == 5000
            assert a.lease is not None and await c.release("conc", ns + "c", a.lease) is True
            assert await c.release("conc", ns + "c", a.lease) is False
            assert (await c.acquire_concurrent("conc", ns + "c")).acquired

    asyncio.run(main())


def test_sync_rate_limits(daemon: Daemon, ns: str) -> None:
    with shoal.Client(daemon.socket) as c:
        key = ns + "k"
        assert [c.check("bucket", key).allowed for _ in range(3)] == [True, True, False]
        assert c.peek("bucket", key).limit == 2
        assert c.reset_limit("bucket", key)
        assert c.reserve("vendor", key, 1.0).granted
        assert c.acquire("vendor", key, max_wait=1.0)
        lease = c.acquire_concurrent("conc", key)
        assert lease.lease is not None and c.release("conc", key, lease.lease)
        assert c.set_override("bucket", key, 50, burst=50) is False
        assert c.check("bucket", key).limit == 50
        assert c.clear_override("bucket", key)
        assert c.quota_usage("bucket", prefix=ns, max_keys=10).truncated is False
