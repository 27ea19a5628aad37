/**
 * Rate-limit decisions and the HTTP headers a limited response should carry.
 *
 * `Decision.headers()` gives the same headers, spelled the same way, as the Rust
 * client's `Decision::headers`: the IETF `RateLimit` / `RateLimit-Policy` fields
 * (draft-ietf-httpapi-ratelimit-headers, structured-field form with the policy
 * name), the legacy `X-RateLimit-*` trio and `Retry-After` when denied. Every
 * second count is rounded up, so a client that honours it is never early. The
 * Express middleware (`shoal-client/express`) offers express-rate-limit's
 * spellings instead.
 */

import type { WireDecision } from './protocol';

/** Seconds, rounded up. */
export function secsCeil(ms: number): number {
  return Math.ceil(Math.max(0, ms) / 1000);
}

/**
 * A structured-field string (RFC 8941): quoted, `\` and `"` escaped, anything
 * outside printable ASCII replaced by `_` (policy names are ASCII in practice).
 */
export function sfString(s: string): string {
  let out = '"';
  for (const c of s) {
    if (c === '"' || c === '\\') out += '\\' + c;
    else if (c >= ' ' && c <= '~') out += c;
    else out += '_';
  }
  return out + '"';
}

/** One rate-limit decision (`ratelimit.check` / `ratelimit.peek`). */
export class Decision {
  /** The policy that decided (named in the `RateLimit` headers). */
  readonly policy: string;
  readonly allowed: boolean;
  /** Most that can pass at once (the burst, for token bucket and GCRA). */
  readonly limit: number;
  /** What is left after this request. */
  readonly remaining: number;
  /** Until the key is back to full capacity. */
  readonly resetAfterMs: number;
  /** Until a request of the same cost would be allowed; 0 when allowed. */
  readonly retryAfterMs: number;
  /** The policy's window, when the daemon said. */
  readonly windowMs: number | null;
  /** Set when Redis was unreachable and the policy's fail mode decided: `open`, `closed` or `local`. */
  readonly fallback: string | null;

  constructor(policy: string, d: WireDecision) {
    this.policy = policy;
    this.allowed = d.allowed;
    this.limit = d.limit;
    this.remaining = d.remaining;
    this.resetAfterMs = d.reset_after_ms;
    this.retryAfterMs = d.retry_after_ms;
    this.windowMs = d.window_ms ?? null;
    this.fallback = d.fallback ?? null;
  }

  /** `Retry-After` in whole seconds, rounded up (at least 1 when denied, 0 when allowed). */
  retryAfterSecs(): number {
    return this.allowed ? 0 : Math.max(1, secsCeil(this.retryAfterMs));
  }

  /**
   * The response headers for this decision, names in lower case, in this order:
   * - `ratelimit-policy: "<policy>";q=<limit>;w=<window s>` (only when the window is known)
   * - `ratelimit: "<policy>";r=<remaining>;t=<reset s>`
   * - `x-ratelimit-limit`, `x-ratelimit-remaining`, `x-ratelimit-reset` (seconds from now)
   * - `retry-after` (seconds) when denied.
   */
  headers(): Record<string, string> {
    const name = sfString(this.policy);
    const reset = secsCeil(this.resetAfterMs);
    const h: Record<string, string> = {};
    if (this.windowMs !== null) {
      h['ratelimit-policy'] = `${name};q=${this.limit};w=${Math.max(1, secsCeil(this.windowMs))}`;
    }
    h['ratelimit'] = `${name};r=${this.remaining};t=${reset}`;
    h['x-ratelimit-limit'] = String(this.limit);
    h['x-ratelimit-remaining'] = String(this.remaining);
    h['x-ratelimit-reset'] = String(reset);
    if (!this.allowed) h['retry-after'] = String(this.retryAfterSecs());
    return h;
  }
}

/** The answer of `Client.reserve`. */
export interface Reservation {
  /** The slot is booked: go after `waitMs`. */
  granted: boolean;
  /** Granted: how long to wait before the call. Not granted: how far away the next slot was (nothing was booked). */
  waitMs: number;
}

/** The answer of `Client.acquireConcurrent`. */
export interface Concurrent {
  acquired: boolean;
  /** Give it back with `Client.release` when done (null when not acquired). */
  lease: string | null;
  limit: number;
  /** In-flight slots left after this one. */
  remaining: number;
  /** Not acquired: at most this long until a slot frees. 0 when acquired. */
  retryAfterMs: number;
  /** How long the lease lives if never released. */
  leaseMs: number;
}

/** One key of a `quota.usage` answer. */
export interface QuotaKeyUsage {
  key: string;
  used: number;
  limit: number;
  remaining: number;
  resetAfterMs: number;
}

/** `quota.usage`: current usage of a policy's keys. */
export interface QuotaUsage {
  policy: string;
  algorithm: string;
  limit: number;
  windowMs: number;
  keys: QuotaKeyUsage[];
  /** True when the scan stopped at `maxKeys` before the end. */
  truncated: boolean;
}
