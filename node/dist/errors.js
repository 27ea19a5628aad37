"use strict";
/**
 * Errors of the shoal client, each carrying a `code` and whether retrying can help.
 *
 * Callers mostly need one decision from an error: try again later (or fall back to
 * the database), or give up because retrying cannot help. `retryable` encodes that
 * decision once, the same way as the Rust client: transport trouble and the
 * server's `unavailable` / `timeout` are retryable; a bad request, a value that
 * does not decode, or a misbehaving server are not. Errors shoald answered with
 * are `ServerError` and carry the protocol's error code; errors the client raises
 * itself use the nearest protocol code (`timeout`, `unavailable`,
 * `frame_too_large`) or a client-only one (`codec`, `protocol`, `closed`).
 */
Object.defineProperty(exports, "__esModule", { value: true });
exports.ClosedError = exports.CodecError = exports.ProtocolError = exports.TooLargeError = exports.ConnectionError = exports.TimeoutError = exports.ServerError = exports.ShoalError = exports.ERROR_CODES = void 0;
exports.isRetryableCode = isRetryableCode;
/** Every error code PROTOCOL.md defines. */
exports.ERROR_CODES = [
    'bad_request',
    'unknown_op',
    'unsupported_version',
    'frame_too_large',
    'not_found',
    'unknown_policy',
    'unavailable',
    'timeout',
    'internal',
];
/** Whether a protocol error code means the same request may succeed later. */
function isRetryableCode(code) {
    return code === 'unavailable' || code === 'timeout';
}
/** Base class of every error the client throws (except aborts, see `call`). */
class ShoalError extends Error {
    /** A protocol code (see `ERROR_CODES`) or a client-only one (`ClientErrorCode`). */
    code;
    /** Whether the same call may succeed if made again later. */
    retryable;
    constructor(message, code, retryable, options) {
        super(message, options);
        this.name = new.target.name;
        this.code = code;
        this.retryable = retryable;
    }
}
exports.ShoalError = ShoalError;
/** shoald answered the request with an error. Retryable iff the code is. */
class ServerError extends ShoalError {
    /** The server's message. */
    serverMessage;
    constructor(code, msg) {
        super(`shoald error \`${code}\`: ${msg}`, code, isRetryableCode(code));
        this.serverMessage = msg;
    }
}
exports.ServerError = ServerError;
/** No answer within the call's timeout. Retryable; code `timeout`. */
class TimeoutError extends ShoalError {
    constructor(ms) {
        super(`shoald did not answer within ${ms} ms`, 'timeout', true);
    }
}
exports.TimeoutError = TimeoutError;
/**
 * The daemon could not be reached (connect or handshake failed), or the
 * connection died while the call was in flight (`lost`: the request may or may not
 * have been applied). Retryable; code `unavailable`.
 */
class ConnectionError extends ShoalError {
    /** True when the call had been sent on a connection that then died. */
    lost;
    constructor(message, lost, options) {
        super(message, 'unavailable', true, options);
        this.lost = lost;
    }
}
exports.ConnectionError = ConnectionError;
/**
 * The request is larger than the server's `max_frame`: refused before sending
 * (the server would close the connection, failing everyone's calls). Not
 * retryable; code `frame_too_large`.
 */
class TooLargeError extends ShoalError {
    len;
    max;
    constructor(len, max) {
        super(`request of ${len} bytes exceeds the server's max_frame (${max} bytes)`, 'frame_too_large', false);
        this.len = len;
        this.max = max;
    }
}
exports.TooLargeError = TooLargeError;
/** shoald sent something the protocol does not allow. Not retryable; code `protocol`. */
class ProtocolError extends ShoalError {
    constructor(message) {
        super(`protocol violation by shoald: ${message}`, 'protocol', false);
    }
}
exports.ProtocolError = ProtocolError;
/** A typed value could not be encoded or decoded as MessagePack. Not retryable; code `codec`. */
class CodecError extends ShoalError {
    constructor(message, options) {
        super(`cannot encode or decode a value: ${message}`, 'codec', false, options);
    }
}
exports.CodecError = CodecError;
/** `Client.close()` was called. Not retryable; code `closed`. */
class ClosedError extends ShoalError {
    constructor() {
        super('the shoal client was closed', 'closed', false);
    }
}
exports.ClosedError = ClosedError;
