"""What the asyncio and the blocking client share: settings, request ids, and
the reconnect backoff bookkeeping. Each client adds its own connection type."""

from __future__ import annotations

import itertools
import time
from typing import Optional, Tuple

from ._proto import HelloResult
from .errors import ShoalError

DEFAULT_SOCKET_PATH = "/run/shoal/shoal.sock"
"""Where shoald listens unless configured otherwise."""

CLIENT_NAME = "shoal-client-python/0.1.0"
"""Sent in ``hello``; shows up in the daemon's logs."""


def copy_error(e: ShoalError) -> ShoalError:
    """A fresh exception of the same type and code: one failure is raised in many
    callers, and re-raising one instance would chain their tracebacks."""
    c = type(e).__new__(type(e))
    c.__dict__.update(e.__dict__)
    c.args = e.args
    return c


class ClientBase:
    """Settings and reconnect state of a client.

    ``timeout``: bound on one call, reconnecting included (seconds);
    ``connect_timeout``: bound on connect plus handshake; ``max_inflight``:
    calls in flight at once, more wait for a slot; ``reconnect_backoff``:
    (first, longest) wait after a failed connect, doubling; ``client_name``:
    sent in ``hello``; ``lease_wait_max``: how long ``get_or_load`` waits for
    another caller's fill.
    """

    def __init__(
        self,
        socket_path: str = DEFAULT_SOCKET_PATH,
        *,
        timeout: float = 5.0,
        connect_timeout: float = 1.0,
        max_inflight: int = 1024,
        reconnect_backoff: Tuple[float, float] = (0.01, 1.0),
        client_name: str = CLIENT_NAME,
        lease_wait_max: float = 1.0,
    ) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        self.socket_path = str(socket_path)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_inflight = max_inflight
        self.backoff_min, self.backoff_max = reconnect_backoff[0], max(reconnect_backoff)
        self.client_name = client_name
        self.lease_wait_max = lease_wait_max
        self._ids = itertools.count(1)
        self._closed = False
        self._failures = 0
        self._retry_at = 0.0
        self._last_error: Optional[ShoalError] = None
        self._hello: Optional[HelloResult] = None
        self._init_conn()

    def _init_conn(self) -> None:
        """The subclass's connection state."""

    @property
    def server_info(self) -> Optional[HelloResult]:
        """The last handshake's answer (node id, server version, ``max_frame``)."""
        return self._hello

    def _backing_off(self) -> Optional[ShoalError]:
        """The last connect error while its backoff interval lasts (raise it
        instead of trying again), else ``None``."""
        if self._last_error is not None and time.monotonic() < self._retry_at:
            return copy_error(self._last_error)
        return None

    def _connect_failed(self, err: ShoalError) -> None:
        delay = min(self.backoff_max, self.backoff_min * (2 ** min(self._failures, 30)))
        self._failures += 1
        self._retry_at = time.monotonic() + delay
        self._last_error = err

    def _connected(self, hello: Optional[HelloResult]) -> None:
        self._failures = 0
        self._last_error = None
        self._hello = hello
