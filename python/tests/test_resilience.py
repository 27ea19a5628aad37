"""Reconnects, timeouts, cancellation, in-flight bounds, pipelining, threads,
and get_or_load's one loader across two daemons: real processes throughout
(a daemon frozen with SIGSTOP is how a call is made to wait)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from contextlib import contextmanager
from typing import Iterator, List

import pytest

import shoal
from conftest import Cluster, Daemon, wait_until


def thread_state(pid: int, tid: str) -> str:
    with open(f"/proc/{pid}/task/{tid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@contextmanager
def frozen(d: Daemon) -> Iterator[None]:
    """The daemon process stopped (SIGSTOP) for the block: it reads nothing and answers nothing."""
    assert d.proc is not None
    d.proc.send_signal(signal.SIGSTOP)
    pid = d.proc.pid
    # kill() returns before every thread has stopped; wait until all have.
    wait_until("shoald stopped", lambda: all(thread_state(pid, t) in "tT" for t in os.listdir(f"/proc/{pid}/task")))
    try:
        yield
    finally:
        d.proc.send_signal(signal.SIGCONT)


def test_async_reconnects_after_a_daemon_restart(own_cluster: Cluster) -> None:
    d = own_cluster.daemon()

    async def main() -> None:
        c = shoal.AsyncClient(d.socket, reconnect_backoff=(0.01, 0.1), timeout=2.0)
        await c.set("k", b"v")
        first = c._conn
        d.stop()
        # Down: every call fails with a retryable error, none hangs.
        for _ in range(3):
            with pytest.raises(shoal.ShoalError) as e:
                await c.get("k")
            assert e.value.retryable and isinstance(e.value, (shoal.ConnectError, shoal.ConnectionLostError))
        d.start()
        deadline = time.monotonic() + 5
        while True:
            try:
                assert await c.get("k") == b"v"  # the value lives in Redis (L2)
                break
            except shoal.ShoalError as err:
                assert err.retryable, err
                assert time.monotonic() < deadline, "no reconnect within 5 s"
                await asyncio.sleep(0.02)
        assert c._conn is not first
        await c.close()
        with pytest.raises(shoal.ClosedError):
            await c.get("k")

    asyncio.run(main())


def test_sync_reconnects_after_a_daemon_restart(own_cluster: Cluster) -> None:
    d = own_cluster.daemon()
    c = shoal.Client(d.socket, reconnect_backoff=(0.01, 0.1), timeout=2.0)
    c.set("k", b"v")
    d.restart()
    errors: List[shoal.ShoalError] = []

    def read() -> bool:
        try:
            return c.get("k") == b"v"
        except shoal.ShoalError as e:
            errors.append(e)
            return False

    wait_until("sync client reads after restart", read, within=5)
    assert all(e.retryable for e in errors), errors
    c.close()
    with pytest.raises(shoal.ClosedError):
        c.ping()


def test_timeouts_cancellation_and_inflight_bound(own_cluster: Cluster) -> None:
    d = own_cluster.daemon()

    async def main() -> None:
        c = shoal.AsyncClient(d.socket, max_inflight=2)
        await c.set("k", b"v")
        conn = c._conn
        with frozen(d):
            # A per-call timeout.
            t0 = time.monotonic()
            with pytest.raises(shoal.CallTimeoutError) as e:
                await c._run(shoal._proto.cache_get_value("k"), timeout=0.2)
            assert e.value.retryable and isinstance(e.value, TimeoutError)
            assert 0.15 < time.monotonic() - t0 < 3.0
            # Two calls in flight fill the bound; a third waits for a slot, then times out.
            cancelled = asyncio.ensure_future(c.get("k"))
            survivor = asyncio.ensure_future(c.get("k"))
            await asyncio.sleep(0.05)
            with pytest.raises(shoal.CallTimeoutError):
                await c.call("ping", timeout=0.2)
            # Cancel one task mid-call.
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
        # The other call completes on the same connection once the daemon runs again.
        assert await survivor == b"v"
        assert await c.get("k") == b"v"
        assert c._conn is conn and conn is not None and conn.dead is None
        assert conn.pending == {}
        # asyncio.wait_for around a call cancels it the same way.
        with frozen(d):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(c.get("k"), 0.1)
        assert await c.get("k") == b"v" and c._conn is conn
        await c.close()

    asyncio.run(main())

    c = shoal.Client(d.socket, max_inflight=1)
    c.set("k", b"w")
    conn = c._conn
    with frozen(d):
        with pytest.raises(shoal.CallTimeoutError):
            c._run(shoal._proto.cache_get_value("k"), timeout=0.2)
        # One call in flight (in another thread) fills the bound of 1.
        got: List[object] = []
        t = threading.Thread(target=lambda: got.append(c.get("k")))
        t.start()
        wait_until("the thread's call is in flight", lambda: len(c._conn.pending) == 1)
        with pytest.raises(shoal.CallTimeoutError, match="in-flight"):
            c._run(shoal._proto.ping(), timeout=0.2)
    t.join(5)
    assert got == [b"w"]
    assert c.get("k") == b"w"  # the late answer to the timed-out call is dropped
    assert c._conn is conn and conn.pending == {}
    c.close()


def test_pipelining_and_threads(daemon: Daemon, ns: str) -> None:
    async def main() -> None:
        async with shoal.AsyncClient(daemon.socket) as c:
            await asyncio.gather(*(c.set(f"{ns}{i}", str(i).encode()) for i in range(200)))
            got = await asyncio.gather(*(c.get(f"{ns}{i}") for i in range(200)))
            assert got == [str(i).encode() for i in range(200)]

    asyncio.run(main())

    c = shoal.Client(daemon.socket)
    failures: List[str] = []

    def worker(t: int) -> None:
        for i in range(200):
            k = (t * 7 + i) % 200
            v = c.get(f"{ns}{k}")
            if v != str(k).encode():
                failures.append(f"{k}: {v!r}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert failures == []
    c.close()


def test_get_or_load_runs_one_loader_across_two_daemons(own_cluster: Cluster) -> None:
    a, b = own_cluster.daemon(), own_cluster.daemon()
    calls = 0

    async def loader() -> dict:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.2)
        return {"row": 7}

    async def main() -> None:
        # Waiters wait up to 10 s for the fill, so a slow machine cannot make them load too.
        ca = shoal.AsyncClient(a.socket, lease_wait_max=10)
        cb = shoal.AsyncClient(b.socket, lease_wait_max=10)
        results = await asyncio.gather(
            *(cl.get_or_load("row:7", loader, ttl=60) for cl in [ca, cb] * 10)
        )
        assert results == [{"row": 7}] * 20
        assert calls == 1, f"{calls} loaders ran"
        # Both daemons now serve the fill without loading.
        assert await ca.get_value("row:7") == {"row": 7}
        assert await cb.get_value("row:7") == {"row": 7}
        await ca.close()
        await cb.close()

    asyncio.run(main())

    # Blocking client, and the fallback: with the daemon gone, the loader's value is returned.
    c = shoal.Client(a.socket)
    assert c.get_or_load("row:7", lambda: {"other": 1}) == {"row": 7}
    a.stop()
    assert c.get_or_load("row:8", lambda: {"fallback": True}) == {"fallback": True}
    c.close()
