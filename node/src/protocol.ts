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

import { Decoder, Encoder } from '@msgpack/msgpack';

/** The protocol version this client speaks. */
export const PROTOCOL_VERSION = 1;
/** Bytes in the frame length prefix. */
export const FRAME_HEADER_LEN = 4;
/** Default largest frame (16 MiB), until the server says otherwise in `hello`. */
export const DEFAULT_MAX_FRAME = 16 * 1024 * 1024;

// One encoder and decoder for every request and response of the process: they
// keep their buffers and key caches between calls, and JavaScript runs one call
// at a time, so sharing them is safe.
const encoder = new Encoder({ ignoreUndefined: true });
const decoder = new Decoder();

/**
 * Encodes `{id, op, ...args}` as a complete frame (length prefix included).
 * Arguments that are `undefined` are left out (the protocol's "absent").
 */
export function encodeRequest(id: number, op: string, args?: Record<string, unknown>): Buffer {
  const req: Record<string, unknown> = { id, op };
  if (args !== undefined) {
    // `id` and `op` belong to the envelope: an argument cannot replace them.
    for (const k in args) if (k !== 'id' && k !== 'op') req[k] = args[k];
  }
  const body = encoder.encodeSharedRef(req);
  const frame = Buffer.allocUnsafe(FRAME_HEADER_LEN + body.byteLength);
  frame.writeUInt32BE(body.byteLength, 0);
  frame.set(body, FRAME_HEADER_LEN);
  return frame;
}

/** A response as it comes off the wire. */
export interface WireResponse {
  id: number;
  ok?: unknown;
  err?: { code: string; msg: string; [extra: string]: unknown };
}

/** Decodes one frame body into a response; throws a message string when it is not one. */
export function decodeResponse(body: Uint8Array): WireResponse {
  const v = decoder.decode(body) as Record<string, unknown> | null;
  if (v === null || typeof v !== 'object' || Array.isArray(v) || v instanceof Uint8Array) {
    throw new Error('a response must be a map');
  }
  const id = v.id;
  if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) {
    throw new Error('a response must have an unsigned integer `id`');
  }
  if ('err' in v && v.err !== undefined && v.err !== null) {
    const e = v.err as Record<string, unknown>;
    if (typeof e !== 'object' || typeof e.code !== 'string') {
      throw new Error('`err` must be a map with a string `code`');
    }
    return { id, err: { ...e, code: e.code, msg: typeof e.msg === 'string' ? e.msg : '' } };
  }
  if (!('ok' in v)) {
    throw new Error('response has neither `ok` nor `err`');
  }
  return { id, ok: v.ok };
}

// ---- results, in wire form (snake_case) ----

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
