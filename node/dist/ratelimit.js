"use strict";
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
Object.defineProperty(exports, "__esModule", { value: true });
exports.Decision = void 0;
exports.secsCeil = secsCeil;
exports.sfString = sfString;
/** Seconds, rounded up. */
function secsCeil(ms) {
    return Math.ceil(Math.max(0, ms) / 1000);
}
/**
 * A structured-field string (RFC 8941): quoted, `\` and `"` escaped, anything
 * outside printable ASCII replaced by `_` (policy names are ASCII in practice).
 */
function sfString(s) {
    let out = '"';
    for (const c of s) {
        if (c === '"' || c === '\\')
            out += '\\' + c;
        else if (c >= ' ' && c <= '~')
            out += c;
        else
            out += '_';
    }
    return out + '"';
}
/** One rate-limit decision (`ratelimit.check` / `ratelimit.peek`). */
class Decision {
    /** The policy that decided (named in the `RateLimit` headers). */
    policy;
    allowed;
    /** Most that can pass at once (the burst, for token bucket and GCRA). */
    limit;
    /** What is left after this request. */
    remaining;
    /** Until the key is back to full capacity. */
    resetAfterMs;
    /** Until a request of the same cost would be allowed; 0 when allowed. */
    retryAfterMs;
    /** The policy's window, when the daemon said. */
    windowMs;
    /** Set when Redis was unreachable and the policy's fail mode decided: `open`, `closed` or `local`. */
    fallback;
    constructor(policy, d) {
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
    retryAfterSecs() {
        return this.allowed ? 0 : Math.max(1, secsCeil(this.retryAfterMs));
    }
    /**
     * The response headers for this decision, names in lower case, in this order:
     * - `ratelimit-policy: "<policy>";q=<limit>;w=<window s>` (only when the window is known)
     * - `ratelimit: "<policy>";r=<remaining>;t=<reset s>`
     * - `x-ratelimit-limit`, `x-ratelimit-remaining`, `x-ratelimit-reset` (seconds from now)
     * - `retry-after` (seconds) when denied.
     */
    headers() {
        const name = sfString(this.policy);
        const reset = secsCeil(this.resetAfterMs);
        const h = {};
        if (this.windowMs !== null) {
            h['ratelimit-policy'] = `${name};q=${this.limit};w=${Math.max(1, secsCeil(this.windowMs))}`;
        }
        h['ratelimit'] = `${name};r=${this.remaining};t=${reset}`;
        h['x-ratelimit-limit'] = String(this.limit);
        h['x-ratelimit-remaining'] = String(this.remaining);
        h['x-ratelimit-reset'] = String(reset);
        if (!this.allowed)
            h['retry-after'] = String(this.retryAfterSecs());
        return h;
    }
}
exports.Decision = Decision;
