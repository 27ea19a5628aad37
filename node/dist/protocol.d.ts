/**
 * The shoal wire protocol, version 1, as this client speaks it: framing, the
 * request envelope, and the shapes of the results shoald answers with.
 *
 * A frame is a 4-byte big-endian length `N`, then `N` bytes holding one
 * MessagePack map. Requests are `{id, op, ...arguments}`; responses are
 * `{id, ok}` or `{id, err: {code, msg}}`, matched to requests by `id` (they may
 * come back in any order). Field names here are the wire's snake_case; the
 * `Client` methods convert them to camelCase results. The contract is the
 * repository's PROTOCOL.md and PROTOCOL-EXTENSIONS.md.
 */
/** The protocol version this client speaks. */
export declare const PROTOCOL_VERSION = 1;
/** Bytes in the frame length prefix. */
export declare const FRAME_HEADER_LEN = 4;
/** Default largest frame (16 MiB), until the server says otherwise in `hello`. */
export declare const DEFAULT_MAX_FRAME: number;
/**
 * Encodes `{id, op, ...args}` as a complete frame (length prefix included).
 * Arguments that are `undefined` are left out (the protocol's "absent").
 */
export declare function encodeRequest(id: number, op: string, args?: Record<string, unknown>): Buffer;
/** A response as it comes off the wire. */
export interface WireResponse {
    id: number;
    ok?: unknown;
    err?: {
        code: string;
        msg: string;
        [extra: string]: unknown;
    };
}
/** Decodes one frame body into a response; throws a message string when it is not one. */
export declare function decodeResponse(body: Uint8Array): WireResponse;
/** `hello`'s result. */
export interface WireHello {
    version: number;
    server: string;
    node: string;
    max_frame: number;
}
/** `cache.get`'s result (and each item of `cache.mget`'s). */
export interface WireGet {
    hit: boolean;
    value: Uint8Array | null;
    from: 'l1' | 'l2' | null;
    ttl_ms: number | null;
    lease: string | null;
    wait_ms: number | null;
}
export interface WireSessionCreated {
    token: string;
    expires_at_ms: number;
    absolute_expires_at_ms: number;
}
export interface WireSessionInfo {
    user: string;
    data: Uint8Array;
    created_at_ms: number;
    last_seen_ms: number;
    expires_at_ms: number;
    absolute_expires_at_ms: number;
}
export interface WireSessionListEntry {
    session_id: string;
    created_at_ms: number;
    last_seen_ms: number;
    expires_at_ms: number;
}
/** `ratelimit.check` / `ratelimit.peek`, with shoal's optional extras. */
export interface WireDecision {
    allowed: boolean;
    limit: number;
    remaining: number;
    reset_after_ms: number;
    retry_after_ms: number;
    window_ms?: number | null;
    fallback?: string | null;
}
export interface WireReserve {
    granted: boolean;
    wait_ms: number;
}
export interface WireConcurrent {
    acquired: boolean;
    lease: string | null;
    limit: number;
    remaining: number;
    retry_after_ms: number;
    lease_ms: number;
}
export interface WireQuotaKeyUsage {
    key: string;
    used: number;
    limit: number;
    remaining: number;
    reset_after_ms: number;
}
export interface WireQuotaUsage {
    policy: string;
    algorithm: string;
    limit: number;
    window_ms: number;
    keys: WireQuotaKeyUsage[];
    truncated: boolean;
}
