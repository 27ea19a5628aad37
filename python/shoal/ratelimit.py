"""Rate-limit results, and the HTTP headers a limited response carries.

:meth:`Decision.headers` emits exactly what the Rust client's
``Decision::headers()`` does, so a fleet mixing Rust, Python and Node services
answers with the same headers:

- ``ratelimit-policy: "<policy>";q=<limit>;w=<window s>`` and
  ``ratelimit: "<policy>";r=<remaining>;t=<reset s>`` (IETF draft
  httpapi-ratelimit-headers; ``ratelimit-policy`` only when the window is known);
- ``x-ratelimit-limit``, ``x-ratelimit-remaining``, ``x-ratelimit-reset``
  (legacy; reset in seconds from now);
- ``retry-after`` (seconds) when denied.

Every second count is rounded up, so a client that honours it is never early.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

__all__ = ["Decision", "Reservation", "Concurrent", "QuotaUsage", "QuotaKeyUsage"]


def _secs_ceil(ms: int) -> int:
    return -(-ms // 1000)


def _sf_string(s: str) -> str:
    """An RFC 8941 structured-field string: quoted, ``\\`` and ``"`` escaped,
    anything outside printable ASCII replaced by ``_``."""
    out = ['"']
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif " " <= c <= "~":
            out.append(c)
        else:
            out.append("_")
    out.append('"')
    return "".join(out)


@dataclass(frozen=True)
class Decision:
    """One ``ratelimit.check`` / ``ratelimit.peek`` answer.

    ``limit`` is the most that can pass at once (the burst, for token bucket and
    GCRA); ``remaining`` what is left after this request; ``reset_after_ms``
    until the key is back to full capacity; ``retry_after_ms`` until a request
    of the same cost would be allowed (0 when allowed). ``window_ms`` is the
    policy's window when the daemon said; ``fallback`` is ``"open"``,
    ``"closed"`` or ``"local"`` when Redis was unreachable and the policy's fail
    mode decided.
    """

    policy: str
    allowed: bool
    limit: int
    remaining: int
    reset_after_ms: int
    retry_after_ms: int
    window_ms: Optional[int] = None
    fallback: Optional[str] = None

    def retry_after_secs(self) -> int:
        """``Retry-After`` in whole seconds, rounded up (at least 1 when denied, 0 when allowed)."""
        if self.allowed:
            return 0
        return max(1, _secs_ceil(self.retry_after_ms))

    def headers(self) -> List[Tuple[str, str]]:
        """The response headers for this decision, names in lower case, in the
        order the Rust client emits them (see the module docstring)."""
        name = _sf_string(self.policy)
        reset = _secs_ceil(self.reset_after_ms)
        h: List[Tuple[str, str]] = []
        if self.window_ms is not None:
            h.append(("ratelimit-policy", f"{name};q={self.limit};w={max(1, _secs_ceil(self.window_ms))}"))
        h.append(("ratelimit", f"{name};r={self.remaining};t={reset}"))
        h.append(("x-ratelimit-limit", str(self.limit)))
        h.append(("x-ratelimit-remaining", str(self.remaining)))
        h.append(("x-ratelimit-reset", str(reset)))
        if not self.allowed:
            h.append(("retry-after", str(self.retry_after_secs())))
        return h


@dataclass(frozen=True)
class Reservation:
    """A ``ratelimit.reserve`` answer: granted, go after ``wait_ms``; not
    granted, the next slot was ``wait_ms`` away (nothing was booked)."""

    granted: bool
    wait_ms: int


@dataclass(frozen=True)
class Concurrent:
    """A ``ratelimit.acquire_concurrent`` answer. Give ``lease`` back with
    ``release`` when done; unreleased, it expires after ``lease_ms``."""

    acquired: bool
    lease: Optional[str]
    limit: int
    remaining: int
    retry_after_ms: int
    lease_ms: int


@dataclass(frozen=True)
class QuotaKeyUsage:
    """Usage of one key of a policy."""

    key: str
    used: int
    limit: int
    remaining: int
    reset_after_ms: int


@dataclass(frozen=True)
class QuotaUsage:
    """A ``quota.usage`` answer: a policy's keys and how much each has used."""

    policy: str
    algorithm: str
    limit: int
    window_ms: int
    keys: List[QuotaKeyUsage] = field(default_factory=list)
    truncated: bool = False
