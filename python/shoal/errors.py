"""The exceptions a shoal call can raise, each knowing whether a retry can help.

Callers mostly need one decision from a failure: try again later (or fall back
to the database), or give up because retrying cannot help. ``retryable``
encodes that decision once: transport trouble and the server's ``unavailable``
and ``timeout`` codes are retryable; a bad request, a value that does not
decode, or a misbehaving server are not. Errors the daemon answered with carry
its protocol error ``code`` (the wire spelling, e.g. ``"bad_request"``).
"""

from __future__ import annotations

from typing import Dict, Optional, Type

__all__ = [
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
    "server_error",
]


class ShoalError(Exception):
    """Base class of every error this package raises.

    ``code`` is the protocol error code when the daemon answered with an error
    (or when the client refused a request the daemon would refuse with that
    code), else ``None``. ``retryable`` says whether the same call may succeed
    if made again later.
    """

    code: Optional[str] = None
    retryable: bool = False

    def __init__(self, message: str, code: Optional[str] = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class ServerError(ShoalError):
    """shoald answered with ``{"err": {"code", "msg"}}``.

    Retryable iff the code is ``unavailable`` or ``timeout``. ``msg`` is the
    daemon's message; ``extra`` holds any further fields of the error map.
    """

    def __init__(self, code: str, msg: str, extra: Optional[Dict[str, object]] = None) -> None:
        super().__init__(f"shoald error `{code}`: {msg}", code)
        self.msg = msg
        self.extra: Dict[str, object] = extra or {}
        self.retryable = code in ("unavailable", "timeout")


class BadRequestError(ServerError):
    """``bad_request``: a malformed or missing field, a wrong type, a key too long."""


class UnknownOpError(ServerError):
    """``unknown_op``: the daemon does not know the op (an older server)."""


class UnsupportedVersionError(ServerError):
    """``unsupported_version``: the daemon does not speak protocol version 1."""


class FrameTooLargeError(ServerError):
    """``frame_too_large``: a request or its result exceeds ``max_frame``.

    Raised by the daemon for a result too large to send, and by this client,
    without sending, for a request larger than the ``max_frame`` the daemon
    announced (the daemon would close the connection on it).
    """


class NotFoundError(ServerError):
    """``not_found``: for example an unknown, expired or revoked session."""


class UnknownPolicyError(ServerError):
    """``unknown_policy``: the rate-limit policy is not configured."""


class UnavailableError(ServerError):
    """``unavailable``: Redis is unreachable and there is no safe fallback. Retryable."""


class ServerTimeoutError(ServerError):
    """``timeout``: a Redis command exceeded the daemon's deadline. Retryable."""


class InternalError(ServerError):
    """``internal``: the daemon failed unexpectedly."""


_BY_CODE: Dict[str, Type[ServerError]] = {
    "bad_request": BadRequestError,
    "unknown_op": UnknownOpError,
    "unsupported_version": UnsupportedVersionError,
    "frame_too_large": FrameTooLargeError,
    "not_found": NotFoundError,
    "unknown_policy": UnknownPolicyError,
    "unavailable": UnavailableError,
    "timeout": ServerTimeoutError,
    "internal": InternalError,
}


def server_error(code: str, msg: str, extra: Optional[Dict[str, object]] = None) -> ServerError:
    """The exception for an error the daemon answered; unknown codes (from a
    newer server) give a plain, non-retryable :class:`ServerError`."""
    return _BY_CODE.get(code, ServerError)(code, msg, extra)


class ConnectError(ShoalError):
    """The socket could not be connected or the ``hello`` handshake failed
    (daemon not running, socket missing). Retryable."""

    retryable = True


class ConnectionLostError(ShoalError):
    """The connection died while the call was in flight; the request may or may
    not have been applied. Retryable."""

    retryable = True


class CallTimeoutError(ShoalError, TimeoutError):
    """No answer within the per-call timeout. Retryable. Also a builtin
    :class:`TimeoutError`."""

    retryable = True


class ProtocolError(ShoalError):
    """shoald sent something the protocol does not allow. Not retryable."""


class CodecError(ShoalError):
    """A typed value could not be encoded, or a stored value could not be
    decoded as MessagePack. Not retryable."""


class ClosedError(ShoalError):
    """The client was closed."""
