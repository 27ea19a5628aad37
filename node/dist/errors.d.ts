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
/** Every error code PROTOCOL.md defines. */
export declare const ERROR_CODES: readonly ["bad_request", "unknown_op", "unsupported_version", "frame_too_large", "not_found", "unknown_policy", "unavailable", "timeout", "internal"];
/** A protocol error code. */
export type ErrorCode = (typeof ERROR_CODES)[number];
/** Codes the client uses for failures that never reached the server's answer. */
export type ClientErrorCode = 'codec' | 'protocol' | 'closed';
/** Whether a protocol error code means the same request may succeed later. */
export declare function isRetryableCode(code: string): boolean;
/** Base class of every error the client throws (except aborts, see `call`). */
export declare class ShoalError extends Error {
    /** A protocol code (see `ERROR_CODES`) or a client-only one (`ClientErrorCode`). */
    readonly code: ErrorCode | ClientErrorCode | string;
    /** Whether the same call may succeed if made again later. */
    readonly retryable: boolean;
    constructor(message: string, code: string, retryable: boolean, options?: {
        cause?: unknown;
    });
}
/** shoald answered the request with an error. Retryable iff the code is. */
export declare class ServerError extends ShoalError {
    /** The server's message. */
    readonly serverMessage: string;
    constructor(code: string, msg: string);
}
/** No answer within the call's timeout. Retryable; code `timeout`. */
export declare class TimeoutError extends ShoalError {
    constructor(ms: number);
}
/**
 * The daemon could not be reached (connect or handshake failed), or the
 * connection died while the call was in flight (`lost`: the request may or may not
 * have been applied). Retryable; code `unavailable`.
 */
export declare class ConnectionError extends ShoalError {
    /** True when the call had been sent on a connection that then died. */
    readonly lost: boolean;
    constructor(message: string, lost: boolean, options?: {
        cause?: unknown;
    });
}
/**
 * The request is larger than the server's `max_frame`: refused before sending
 * (the server would close the connection, failing everyone's calls). Not
 * retryable; code `frame_too_large`.
 */
export declare class TooLargeError extends ShoalError {
    readonly len: number;
    readonly max: number;
    constructor(len: number, max: number);
}
/** shoald sent something the protocol does not allow. Not retryable; code `protocol`. */
export declare class ProtocolError extends ShoalError {
    constructor(message: string);
}
/** A typed value could not be encoded or decoded as MessagePack. Not retryable; code `codec`. */
export declare class CodecError extends ShoalError {
    constructor(message: string, options?: {
        cause?: unknown;
    });
}
/** `Client.close()` was called. Not retryable; code `closed`. */
export declare class ClosedError extends ShoalError {
    constructor();
}
