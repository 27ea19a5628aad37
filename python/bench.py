"""Speed of the Python client, measured in one run against a real shoald.

Rows (microseconds per call: the median over rounds; in each round every row
of a group runs one block, so the ratio, the median of per-round ratios to the
group's raw row, compares blocks run under the same machine load):

- raw sync ping: a pre-encoded ``ping`` frame written with ``socket.send`` and
  its answer read with ``recv`` on a blocking socket: the floor of any
  blocking Python round trip to shoald. The same with a pre-encoded
  ``cache.get`` of an L1-resident key shows what the daemon adds for a hit.
- sync ``Client.get`` (L1 hit);
- raw asyncio ping: a minimal ``asyncio.Protocol`` that writes the frame and
  resolves a future when the answer arrives: the floor for asyncio.
- ``AsyncClient.get`` (L1 hit);
- pipelined ``AsyncClient.get`` throughput from one process (many tasks, one
  connection).

Usage: ``python bench.py`` (starts redis-server and shoald like the tests;
``SHOALD_BIN`` as there) or ``python bench.py --socket PATH`` for a running daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Awaitable, Callable, Dict, List, Optional, Tuple

import msgpack

import shoal

BLOCKS = 15


def ping_frame(rid: int) -> bytes:
    body = msgpack.packb({"id": rid, "op": "ping"})
    return len(body).to_bytes(4, "big") + body


def hello_frame() -> bytes:
    body = msgpack.packb({"id": 0, "op": "hello", "version": 1})
    return len(body).to_bytes(4, "big") + body


def recv_frame(s: socket.socket) -> bytes:
    buf = b""
    while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def timed(fn: Callable[[], None], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


async def timed_async(fn: Callable[[], Awaitable[object]], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        await fn()
    return (time.perf_counter() - t0) / n * 1e6


def summarise(rounds: List[Dict[str, float]], base: str) -> Dict[str, Tuple[float, float]]:
    """Median per-call time of each row, and the median of its per-round ratio
    to ``base``: rows are interleaved round by round, so a ratio compares
    blocks that ran under the same machine load."""
    return {
        name: (
            statistics.median(r[name] for r in rounds),
            statistics.median(r[name] / r[base] for r in rounds),
        )
        for name in rounds[0]
    }


class RawPing(asyncio.Protocol):
    def __init__(self) -> None:
        self.fut: Optional[asyncio.Future] = None  # type: ignore[type-arg]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) >= 4 and len(self.buf) >= 4 + int.from_bytes(self.buf[:4], "big"):
            self.buf = b""
            if self.fut is not None and not self.fut.done():
                self.fut.set_result(None)


def run(sock_path: str, n: int) -> List[str]:
    out: List[str] = []

    # Blocking rows.
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(sock_path)
    raw.sendall(hello_frame())
    recv_frame(raw)
    frame = ping_frame(1)

    def raw_ping() -> None:
        raw.sendall(frame)
        recv_frame(raw)

    client = shoal.Client(sock_path)
    client.set("bench:key", b"x" * 100, ttl=600)
    assert client.get_full("bench:key").source == "l1"
    get_frame = msgpack.packb({"id": 2, "op": "cache.get", "key": "bench:key"})
    get_frame = len(get_frame).to_bytes(4, "big") + get_frame

    def raw_get() -> None:
        raw.sendall(get_frame)
        recv_frame(raw)

    sync_rounds: List[Dict[str, float]] = []
    for _ in range(BLOCKS):
        sync_rounds.append(
            {
                "raw sync ping (socket send/recv)": timed(raw_ping, n),
                "raw sync `cache.get` L1 hit (pre-encoded frame, reply not decoded)": timed(raw_get, n),
                "`Client.ping`": timed(client.ping, n),
                "`Client.get`, L1 hit": timed(lambda: client.get("bench:key"), n),
            }
        )
    raw.close()
    client.close()

    async def async_rows() -> None:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_unix_connection(RawPing, sock_path)
        proto.fut = loop.create_future()
        transport.write(hello_frame())
        await proto.fut

        async def raw_async_ping() -> None:
            proto.fut = loop.create_future()
            transport.write(frame)
            await proto.fut

        c = await shoal.AsyncClient.connect(sock_path)
        async_rounds: List[Dict[str, float]] = []
        for _ in range(BLOCKS):
            async_rounds.append(
                {
                    "raw asyncio ping (Protocol + future)": await timed_async(raw_async_ping, n),
                    "`AsyncClient.ping`": await timed_async(c.ping, n),
                    "`AsyncClient.get`, L1 hit": await timed_async(lambda: c.get("bench:key"), n),
                }
            )
        transport.close()

        # Pipelined: `width` tasks each doing gets on one connection.
        width, per_task = 256, max(20, n // 50)

        async def worker() -> None:
            for _ in range(per_task):
                await c.get("bench:key")

        rates = []
        for _ in range(3):
            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(width)))
            rates.append(width * per_task / (time.perf_counter() - t0))
        await c.close()

        for rounds, base in (
            (sync_rounds, "raw sync ping (socket send/recv)"),
            (async_rounds, "raw asyncio ping (Protocol + future)"),
        ):
            for name, (us, ratio) in summarise(rounds, base).items():
                out.append(f"| {name} | {us:.1f} µs | {ratio:.2f}× |")
        out.append(
            f"| `AsyncClient.get` pipelined ({width} tasks, one connection) | "
            f"{statistics.median(rates):,.0f} gets/s | |"
        )

    asyncio.run(async_rows())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--socket", help="a running shoald's socket (default: start one)")
    ap.add_argument("-n", type=int, default=5000, help="calls per timed block")
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {BLOCKS} rounds of {args.n} calls per row")
    if args.socket:
        rows = run(args.socket, args.n)
    else:
        sys.path.insert(0, str(Path(__file__).parent / "tests"))
        from conftest import Cluster  # the tests' redis-server + shoald harness

        with tempfile.TemporaryDirectory() as tmp:
            cluster = Cluster(Path(tmp))
            try:
                rows = run(cluster.daemon("bench").socket, args.n)
            finally:
                cluster.close()
    print("| what | per call | vs raw (same round) |\n|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
