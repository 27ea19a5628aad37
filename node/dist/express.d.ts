/**
 * Express (and Connect-style) middleware: `rateLimit()` shaped like
 * express-rate-limit and `session()` shaped like express-session, both backed by
 * shoald so every replica of an API shares one view of limits and sessions.
 *
 * The middleware only uses Node's `http` types plus `res.send` when present, so
 * it needs no runtime dependency on Express and works with Express 4 and 5.
 *
 * - `rateLimit({ client, policy, key })` asks `ratelimit.check` per request and
 *   answers 429 when denied. Headers use express-rate-limit's spellings:
 *   `legacyHeaders` (default true) sends `X-RateLimit-Limit`,
 *   `X-RateLimit-Remaining`, `X-RateLimit-Reset` (Unix seconds) and `Date`;
 *   `standardHeaders` (default false; `true` means `'draft-6'`) sends
 *   `RateLimit-Policy` / `RateLimit-Limit` / `RateLimit-Remaining` /
 *   `RateLimit-Reset` (draft-6), `RateLimit-Policy` + combined `RateLimit`
 *   (draft-7) or the named `RateLimit-Policy` / `RateLimit` of draft-8. A denial
 *   carries `Retry-After`. `req.rateLimit` gets `{limit, used, remaining,
 *   resetTime, key, policy, decision}`.
 * - `session({ client })` sets `req.session` from the session cookie: data are
 *   its own properties, and `save` / `destroy` / `regenerate` / `reload` /
 *   `touch` behave like express-session's (callback or promise), plus `rotate`.
 *   A new session is created on the first save with data (like
 *   `saveUninitialized: false`); a changed one is saved before the response ends.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Client } from './client';
import { Decision } from './ratelimit';
import { SessionCookie } from './session';
type Req = IncomingMessage & Record<string, any>;
type Res = ServerResponse & {
    send?: (body?: unknown) => unknown;
};
type Next = (err?: unknown) => void;
/** A Connect/Express middleware function. */
export type Middleware = (req: any, res: any, next: Next) => void;
/** The info `rateLimit` stores on the request (`req.rateLimit` by default). */
export interface RateLimitInfo {
    limit: number;
    used: number;
    remaining: number;
    resetTime: Date;
    key: string;
    policy: string;
    decision: Decision;
}
export interface RateLimitOptions {
    /** The shoal client. */
    client: Client;
    /** The policy (a `[ratelimit.policies.NAME]` of shoald's config). */
    policy: string;
    /**
     * The key to limit by (a tenant, an API key, an IP). Default: `req.ip`, else the
     * socket's remote address. Returning null or undefined lets the request through
     * unlimited. `keyGenerator` is accepted as an alias (express-rate-limit's name).
     */
    key?: (req: any, res: any) => string | null | undefined | Promise<string | null | undefined>;
    keyGenerator?: (req: any, res: any) => string | null | undefined | Promise<string | null | undefined>;
    /** Weight of a request (default 1). */
    cost?: number | ((req: any) => number);
    /** IETF headers: `false` (default), `true` (= `'draft-6'`), `'draft-6'`, `'draft-7'`, `'draft-8'`. */
    standardHeaders?: boolean | 'draft-6' | 'draft-7' | 'draft-8';
    /** `X-RateLimit-*` headers (default true). */
    legacyHeaders?: boolean;
    /** The quota policy's name in draft-8 headers (default: the policy). */
    identifier?: string;
    /** Status of a denial (default 429). */
    statusCode?: number;
    /** Body of a denial (default "Too many requests, please try again later."); a function is called per request. */
    message?: unknown | ((req: any, res: any) => unknown);
    /** Replaces the default denial (status + message); headers are already set. */
    handler?: (req: any, res: any, next: Next, info: RateLimitInfo) => void;
    /** Requests for which this returns true are not limited. */
    skip?: (req: any, res: any) => boolean | Promise<boolean>;
    /**
     * When shoald cannot be asked (daemon down, timeout): true (default) lets the
     * request through, false passes the error to `next(err)`. Redis outages are
     * not this: the daemon's `on_unavailable` mode decides those. (express-rate-limit's
     * default is false; shoal's is true, like the Rust layer: a broken limiter
     * should not take the API down.)
     */
    passOnStoreError?: boolean;
    /** Property of `req` that gets the `RateLimitInfo` (default `rateLimit`). */
    requestPropertyName?: string;
}
/** Sets the headers of `opts` for decision `d` on `res`. */
export declare function setRateLimitHeaders(res: ServerResponse, d: Decision, key: string, opts: Pick<RateLimitOptions, 'standardHeaders' | 'legacyHeaders' | 'identifier'>, nowMs?: number): void;
/** Rate-limiting middleware backed by shoald, with express-rate-limit's options and headers. */
export declare function rateLimit(options: RateLimitOptions): Middleware;
export interface SessionMiddlewareOptions {
    /** The shoal client. */
    client: Client;
    /** Cookie name (default `__Host-session`, which requires HTTPS in browsers other than on localhost). */
    name?: string;
    /** Lifetimes of new sessions (default: the daemon's `session.idle_ttl` / `absolute_ttl`). */
    idleTtlMs?: number;
    absoluteTtlMs?: number;
    /**
     * The user a session belongs to (shoal indexes sessions by user for
     * `revokeUser` / `list`). Default: `data.user` if it is a string, else
     * `String(data.userId)` if set, else `"anonymous"`. A save whose user differs
     * from the session's creates a new session (new token) and revokes the old one.
     */
    user?: (data: Record<string, unknown>) => string | null | undefined;
    /** Errors of the automatic save at the end of a response (default: console.error). */
    onError?: (err: unknown) => void;
}
/** Callback of the express-session-style methods. */
export type SessionCallback = (err?: unknown) => void;
declare const STATE: unique symbol;
interface State {
    client: Client;
    cookie: SessionCookie;
    req: Req;
    res: Res;
    opts: SessionMiddlewareOptions;
    token: string | null;
    user: string | null;
    absoluteExpiresAtMs: number;
    /** MessagePack of the data as last loaded or saved (null: never saved). */
    snapshot: Buffer | null;
}
/**
 * `req.session`: the session's data as own properties, and express-session's
 * methods. Each method takes an optional callback and returns a promise.
 */
export declare class ShoalSession {
    [STATE]: State;
    constructor(state: State, data: Record<string, unknown> | null);
    /** The session token (express-session's `id`), or undefined before the first save. */
    get id(): string | undefined;
    /** The user shoal indexes this session under, once saved. */
    get shoalUser(): string | undefined;
    /** Saves the data now: creates the session (and sets the cookie) if new, else updates it on every daemon. */
    save(cb?: SessionCallback): Promise<void>;
    /** Revokes the session on every daemon, clears the cookie and removes `req.session`. */
    destroy(cb?: SessionCallback): Promise<void>;
    /** Revokes this session and puts a new, empty one in `req.session` (saved when it gets data). */
    regenerate(cb?: SessionCallback): Promise<void>;
    /** Re-reads the data from shoald, dropping unsaved changes. */
    reload(cb?: SessionCallback): Promise<void>;
    /** Issues a new token for the same session (same data and expiry) and revokes the old one: call it on privilege changes. */
    rotate(cb?: SessionCallback): Promise<void>;
    /** Kept for express-session compatibility: every request's `session.get` already slides the idle expiry. */
    touch(): this;
}
/** Session middleware backed by shoald, shaped like express-session. */
export declare function session(options: SessionMiddlewareOptions): Middleware;
export {};
