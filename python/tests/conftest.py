"""Fixtures: a real redis-server and real shoald processes on free ports in a
temporary directory. The shoald binary is ``$SHOALD_BIN``, default
``<repo>/target/debug/shoald`` (``cargo build --workspace --bins``); a missing
binary or redis-server fails the tests, it does not skip them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

import shoal

REPO = Path(__file__).resolve().parents[2]

POLICIES = """
[ratelimit.policies.api]
algorithm = "fixed_window"
limit = 3
window = "10s"

[ratelimit.policies.bucket]
algorithm = "token_bucket"
limit = 10
window = "1s"
burst = 2

[ratelimit.policies.vendor]
algorithm = "gcra"
limit = 10
window = "1s"
burst = 1

[ratelimit.policies.conc]
algorithm = "concurrency"
limit = 2
window = "10s"
"""

MAX_FRAME = 64 * 1024
"""The test daemons' max_frame, small so frame_too_large is cheap to reach."""


def shoald_bin() -> str:
    path = os.environ.get("SHOALD_BIN") or str(REPO / "target" / "debug" / "shoald")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"shoald binary not found at {path}: run `cargo build --workspace --bins` or set SHOALD_BIN")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, cond, within: float = 10.0, every: float = 0.02):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within}s")
        time.sleep(every)


class Redis:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--protected-mode", "no", "--dir", str(tmp)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until("redis-server answers PING", self._pong)

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Daemon:
    """One shoald process; ``restart()`` keeps its socket path."""

    def __init__(self, tmp: Path, redis: Redis, node: str) -> None:
        self.tmp, self.redis, self.node = tmp, redis, node
        self.socket = str(tmp / f"{node}.sock")
        self.proc: Optional[subprocess.Popen] = None  # type: ignore[type-arg]
        self.start()

    def config(self) -> str:
        return (
            f'[node]\nid = "{self.node}"\n'
            f'[socket]\npath = "{self.socket}"\nmax_frame = {MAX_FRAME}\n'
            f'[redis]\nurl = "{self.redis.url}"\ntimeout = "300ms"\n'
            '[admin]\nlisten = ""\n[cache]\nlease_ttl = "10s"\n'
            '[shutdown]\ngrace = "2s"\n[ratelimit]\noverride_refresh = "100ms"\n' + POLICIES
        )

    def start(self) -> None:
        cfg = self.tmp / f"{self.node}.toml"
        cfg.write_text(self.config())
        self.proc = subprocess.Popen(
            [shoald_bin(), "--config", str(cfg)],
            env={**os.environ, "SHOAL_LOG": "warn"},
            stdout=subprocess.DEVNULL,
        )
        wait_until(f"shoald {self.node} ready", self._ready)

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"shoald exited early with {self.proc.returncode}")
        try:
            with shoal.Client(self.socket, timeout=1.0) as c:
                return c.stats().get("ready") == 1
        except shoal.ShoalError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.redis = Redis(tmp)
        self.daemons: List[Daemon] = []

    def daemon(self, node: Optional[str] = None) -> Daemon:
        d = Daemon(self.tmp, self.redis, node or f"py-{len(self.daemons)}")
        self.daemons.append(d)
        return d

    def close(self) -> None:
        for d in self.daemons:
            d.stop()
        self.redis.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One redis-server and one shoald shared by the tests that do not restart it."""
    c = Cluster(tmp_path_factory.mktemp("shoal"))
    c.daemon("shared")
    yield c
    c.close()


@pytest.fixture(scope="session")
def daemon(cluster: Cluster) -> Daemon:
    return cluster.daemons[0]


@pytest.fixture
def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A private redis-server for tests that restart or add daemons."""
    c = Cluster(tmp_path_factory.mktemp("own"))
    yield c
    c.close()


@pytest.fixture
def ns() -> str:
    """A key prefix unique to the test, so tests sharing a daemon never collide."""
    return f"t{uuid.uuid4().hex[:10]}:"
