"""shoal-client: talk to ``shoald`` over its local Unix socket.

``shoald`` runs next to the application and serves a fleet-coherent cache (L1
in the daemon, L2 in Redis), sessions and rate limits. This package is its
Python client: :class:`AsyncClient` for asyncio, :class:`Client` for blocking
code, each holding one multiplexed connection that pipelines requests,
reconnects on its own and bounds every call with a timeout. The wire contract
is ``PROTOCOL.md`` at the repository root.

Web middleware: :mod:`shoal.asgi` (Starlette / FastAPI) and :mod:`shoal.wsgi`.
"""

from ._proto import GetResult, HelloResult, Session, SessionCreated, SessionListEntry, pack, unpack
from ._base import DEFAULT_SOCKET_PATH
from .aio import AsyncClient
from .cookie import DEFAULT_COOKIE_NAME, SessionCookie
from .errors import (
    BadRequestError,
    CallTimeoutError,
    ClosedError,
    CodecError,
    ConnectError,
    ConnectionLostError,
    FrameTooLargeError,
    InternalError,
    NotFoundError,
    ProtocolError,
    ServerError,
    ServerTimeoutError,
    ShoalError,
    UnavailableError,
    UnknownOpError,
    UnknownPolicyError,
    UnsupportedVersionError,
)
from .ratelimit import Concurrent, Decision, QuotaKeyUsage, QuotaUsage, Reservation
from .sync import Client

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "Client",
    "DEFAULT_SOCKET_PATH",
    "DEFAULT_COOKIE_NAME",
    "SessionCookie",
    "GetResult",
    "HelloResult",
    "Session",
    "SessionCreated",
    "SessionListEntry",
    "Decision",
    "Reservation",
    "Concurrent",
    "QuotaUsage",
    "QuotaKeyUsage",
    "pack",
    "unpack",
    "ShoalError",
    "ServerError",
    "BadRequestError",
    "UnknownOpError",
    "UnsupportedVersionError",
    "FrameTooLargeError",
    "NotFoundError",
    "UnknownPolicyError",
    "UnavailableError",
    "ServerTimeoutError",
    "InternalError",
    "ConnectError",
    "ConnectionLostError",
    "CallTimeoutError",
    "ProtocolError",
    "CodecError",
    "ClosedError",
]
