"""The session cookie: the ``Set-Cookie`` value that carries a token, and finding
the token in a request's ``Cookie`` header.

Mirrors the Rust client's ``SessionCookie`` byte for byte: the cookie is
``HttpOnly`` (scripts cannot read it), ``Secure`` (HTTPS only), ``SameSite=Lax``
(not sent on cross-site subrequests), ``Path=/``, and lives until the session's
absolute expiry (``Max-Age``, rounded up); idle expiry is enforced by shoald.
The default name ``__Host-session`` makes browsers insist on ``Secure``,
``Path=/`` and no ``Domain``.
"""

from __future__ import annotations

import re
import time
from typing import Optional

__all__ = ["SessionCookie", "DEFAULT_COOKIE_NAME"]

DEFAULT_COOKIE_NAME = "__Host-session"

_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
_ATTRS = "Path=/; Secure; HttpOnly; SameSite=Lax"


class SessionCookie:
    """Builds and reads the session cookie (see the module docstring)."""

    def __init__(self, name: str = DEFAULT_COOKIE_NAME) -> None:
        # RFC 6265 token: visible ASCII without separators.
        if not _NAME.match(name):
            raise ValueError(f"{name!r} is not a valid cookie name")
        self.name = name

    def set_cookie(self, token: str, absolute_expires_at_ms: int, now_ms: Optional[int] = None) -> str:
        """The ``Set-Cookie`` value for ``token``, living until
        ``absolute_expires_at_ms``. A token that is not URL-safe base64 (never
        one shoald issued) gives the deleting cookie rather than a header that
        could be split or injected."""
        if not _TOKEN.match(token):
            return self.clear_cookie()
        now = int(time.time() * 1000) if now_ms is None else now_ms
        max_age = -(-max(0, absolute_expires_at_ms - now) // 1000)
        return f"{self.name}={token}; Max-Age={max_age}; {_ATTRS}"

    def clear_cookie(self) -> str:
        """A ``Set-Cookie`` value that deletes the cookie (after logout)."""
        return f"{self.name}=; Max-Age=0; {_ATTRS}"

    def token_from_header(self, cookie_header: str) -> Optional[str]:
        """The session token in a ``Cookie`` request header: the first cookie of
        this name whose value could be a token (quotes removed)."""
        for pair in cookie_header.split(";"):
            name, sep, value = pair.strip().partition("=")
            if not sep or name.strip() != self.name:
                continue
            v = value.strip()
            if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
                v = v[1:-1]
            if _TOKEN.match(v):
                return v
        return None
