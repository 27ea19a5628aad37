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

import { createHash } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';

import type { Client, SessionOptions } from './client';
import { ShoalError } from './errors';
import { Decision, secsCeil, sfString } from './ratelimit';
import { DEFAULT_COOKIE_NAME, SessionCookie } from './session';
import { encodeValue } from './value';

type Req = IncomingMessage & Record<string, any>;
type Res = ServerResponse & { send?: (body?: unknown) => unknown };
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

/** The 12-byte partition key of draft-8 (sha256 of the key, as express-rate-limit computes it). */
function partitionKey(key: string): string {
  const hex = createHash('sha256').update(key).digest('hex').slice(0, 12);
  return Buffer.from(hex).toString('base64');
}

/** Sets the headers of `opts` for decision `d` on `res`. */
export function setRateLimitHeaders(
  res: ServerResponse,
  d: Decision,
  key: string,
  opts: Pick<RateLimitOptions, 'standardHeaders' | 'legacyHeaders' | 'identifier'>,
  nowMs: number = Date.now(),
): void {
  if (res.headersSent) return;
  const reset = secsCeil(d.resetAfterMs);
  const window = d.windowMs === null ? null : Math.max(1, secsCeil(d.windowMs));
  if (opts.legacyHeaders ?? true) {
    res.setHeader('X-RateLimit-Limit', String(d.limit));
    res.setHeader('X-RateLimit-Remaining', String(d.remaining));
    res.setHeader('Date', new Date(nowMs).toUTCString());
    res.setHeader('X-RateLimit-Reset', String(Math.ceil((nowMs + d.resetAfterMs) / 1000)));
  }
  let standard = opts.standardHeaders ?? false;
  if (standard === true) standard = 'draft-6';
  switch (standard) {
    case 'draft-6':
      if (window !== null) res.setHeader('RateLimit-Policy', `${d.limit};w=${window}`);
      res.setHeader('RateLimit-Limit', String(d.limit));
      res.setHeader('RateLimit-Remaining', String(d.remaining));
      if (reset > 0) res.setHeader('RateLimit-Reset', String(reset));
      break;
    case 'draft-7':
      if (window !== null) res.setHeader('RateLimit-Policy', `${d.limit};w=${window}`);
      res.setHeader('RateLimit', `limit=${d.limit}, remaining=${d.remaining}, reset=${reset}`);
      break;
    case 'draft-8': {
      const name = sfString(opts.identifier ?? d.policy);
      if (window !== null) {
        appendHeader(res, 'RateLimit-Policy', `${name}; q=${d.limit}; w=${window}; pk=:${partitionKey(key)}:`);
      }
      appendHeader(res, 'RateLimit', `${name}; r=${d.remaining}; t=${reset}`);
      break;
    }
    case false:
      break;
    default:
      throw new TypeError(`standardHeaders: unsupported value ${JSON.stringify(standard)}`);
  }
  if (!d.allowed) res.setHeader('Retry-After', String(d.retryAfterSecs()));
}

/** Appends a value to a list header (several limiters may each add theirs). */
function appendHeader(res: ServerResponse, name: string, value: string): void {
  const prev = res.getHeader(name);
  if (prev === undefined) res.setHeader(name, value);
  else res.setHeader(name, `${Array.isArray(prev) ? prev.join(', ') : String(prev)}, ${value}`);
}

function send(res: Res, status: number, body: unknown): void {
  res.statusCode = status;
  if (typeof res.send === 'function') {
    res.send(body);
    return;
  }
  if (typeof body === 'string' || body instanceof Uint8Array) {
    res.end(body);
  } else {
    res.setHeader('Content-Type', 'application/json');
    res.end(JSON.stringify(body));
  }
}

function defaultKey(req: Req): string | undefined {
  return (typeof req.ip === 'string' && req.ip) || req.socket?.remoteAddress || undefined;
}

/** Rate-limiting middleware backed by shoald, with express-rate-limit's options and headers. */
export function rateLimit(options: RateLimitOptions): Middleware {
  const { client, policy } = options;
  if (client === undefined || typeof policy !== 'string' || policy.length === 0) {
    throw new TypeError('rateLimit needs { client, policy }');
  }
  const standard = options.standardHeaders ?? false;
  if (![false, true, 'draft-6', 'draft-7', 'draft-8'].includes(standard)) {
    throw new TypeError(`standardHeaders: unsupported value ${JSON.stringify(standard)}`);
  }
  const keyOf = options.key ?? options.keyGenerator ?? defaultKey;
  const prop = options.requestPropertyName ?? 'rateLimit';
  const statusCode = options.statusCode ?? 429;
  const message = options.message ?? 'Too many requests, please try again later.';
  const passOnError = options.passOnStoreError ?? true;
  return (req: Req, res: Res, next: Next) => {
    void (async () => {
      if (options.skip !== undefined && (await options.skip(req, res))) return next();
      const key = await keyOf(req, res);
      if (key === null || key === undefined) return next();
      const cost = typeof options.cost === 'function' ? options.cost(req) : options.cost;
      let d: Decision;
      try {
        d = await client.check(policy, key, { cost });
      } catch (e) {
        if (passOnError && e instanceof ShoalError && e.code !== 'unknown_policy' && e.code !== 'bad_request') {
          return next();
        }
        return next(e);
      }
      const now = Date.now();
      const info: RateLimitInfo = {
        limit: d.limit,
        used: Math.max(0, d.limit - d.remaining),
        remaining: d.remaining,
        resetTime: new Date(now + d.resetAfterMs),
        key,
        policy,
        decision: d,
      };
      req[prop] = info;
      setRateLimitHeaders(res, d, key, options, now);
      if (d.allowed) return next();
      if (options.handler !== undefined) return options.handler(req, res, next, info);
      const body = typeof message === 'function' ? await (message as (q: any, s: any) => unknown)(req, res) : message;
      if (!res.writableEnded) send(res, statusCode, body);
    })().catch(next);
  };
}

// ---- sessions ----

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

const STATE = Symbol('shoal.session');

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

/** Own enumerable properties of the session: its data. */
function dataOf(s: ShoalSession): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const k of Object.keys(s)) out[k] = (s as any)[k];
  return out;
}

function userOf(opts: SessionMiddlewareOptions, data: Record<string, unknown>): string {
  if (opts.user !== undefined) return opts.user(data) || 'anonymous';
  if (typeof data.user === 'string' && data.user.length > 0) return data.user;
  if (data.userId !== undefined && data.userId !== null) return String(data.userId);
  return 'anonymous';
}

/** Replaces our cookie among the response's `Set-Cookie` headers. */
function putCookie(state: State, value: string): void {
  const res = state.res;
  if (res.headersSent) return;
  const prev = res.getHeader('Set-Cookie');
  const list = prev === undefined ? [] : Array.isArray(prev) ? prev : [String(prev)];
  const others = list.filter((c) => !c.startsWith(`${state.cookie.name}=`));
  res.setHeader('Set-Cookie', [...others, value]);
}

function withCallback(p: Promise<void>, cb?: SessionCallback): Promise<void> {
  if (cb === undefined) return p;
  return p.then(
    () => cb(),
    (e) => cb(e),
  );
}

/**
 * `req.session`: the session's data as own properties, and express-session's
 * methods. Each method takes an optional callback and returns a promise.
 */
export class ShoalSession {
  declare [STATE]: State;

  constructor(state: State, data: Record<string, unknown> | null) {
    Object.defineProperty(this, STATE, { value: state, enumerable: false, writable: true });
    if (data !== null && typeof data === 'object' && !Array.isArray(data)) Object.assign(this, data);
  }

  /** The session token (express-session's `id`), or undefined before the first save. */
  get id(): string | undefined {
    return this[STATE].token ?? undefined;
  }

  /** The user shoal indexes this session under, once saved. */
  get shoalUser(): string | undefined {
    return this[STATE].user ?? undefined;
  }

  /** Saves the data now: creates the session (and sets the cookie) if new, else updates it on every daemon. */
  save(cb?: SessionCallback): Promise<void> {
    return withCallback(saveSession(this), cb);
  }

  /** Revokes the session on every daemon, clears the cookie and removes `req.session`. */
  destroy(cb?: SessionCallback): Promise<void> {
    const st = this[STATE];
    const p = (async () => {
      const token = st.token;
      st.token = null;
      st.snapshot = null;
      if (st.req.session === this) delete st.req.session;
      delete st.req.sessionID;
      putCookie(st, st.cookie.clearCookie());
      if (token !== null) await st.client.sessionRevoke(token);
    })();
    return withCallback(p, cb);
  }

  /** Revokes this session and puts a new, empty one in `req.session` (saved when it gets data). */
  regenerate(cb?: SessionCallback): Promise<void> {
    const st = this[STATE];
    const p = (async () => {
      const token = st.token;
      st.token = null;
      st.snapshot = null;
      const fresh = new ShoalSession({ ...st, token: null, user: null, snapshot: null, absoluteExpiresAtMs: 0 }, null);
      st.req.session = fresh;
      delete st.req.sessionID;
      putCookie(st, st.cookie.clearCookie());
      if (token !== null) await st.client.sessionRevoke(token);
    })();
    return withCallback(p, cb);
  }

  /** Re-reads the data from shoald, dropping unsaved changes. */
  reload(cb?: SessionCallback): Promise<void> {
    const st = this[STATE];
    const p = (async () => {
      if (st.token === null) return;
      const s = await st.client.sessionGet<Record<string, unknown>>(st.token, { touch: false });
      if (s === null) throw new Error('failed to load session: it is gone (expired or revoked)');
      for (const k of Object.keys(this)) delete (this as any)[k];
      Object.assign(this, s.data);
      st.snapshot = encodeValue(dataOf(this));
    })();
    return withCallback(p, cb);
  }

  /** Issues a new token for the same session (same data and expiry) and revokes the old one: call it on privilege changes. */
  rotate(cb?: SessionCallback): Promise<void> {
    const st = this[STATE];
    const p = (async () => {
      if (st.token === null) return;
      const token = await st.client.sessionRotate(st.token);
      if (token === null) throw new Error('cannot rotate: the session is gone (expired or revoked)');
      st.token = token;
      st.req.sessionID = token;
      putCookie(st, st.cookie.setCookie(token, st.absoluteExpiresAtMs));
    })();
    return withCallback(p, cb);
  }

  /** Kept for express-session compatibility: every request's `session.get` already slides the idle expiry. */
  touch(): this {
    return this;
  }
}

/** Whether the session has something to save. */
function isDirty(s: ShoalSession): boolean {
  const st = s[STATE];
  const data = dataOf(s);
  if (st.token === null) return Object.keys(data).length > 0;
  return st.snapshot === null || !encodeValue(data).equals(st.snapshot);
}

async function saveSession(s: ShoalSession): Promise<void> {
  const st = s[STATE];
  const data = dataOf(s);
  const bytes = encodeValue(data);
  const user = userOf(st.opts, data);
  const life: SessionOptions = { idleTtlMs: st.opts.idleTtlMs, absoluteTtlMs: st.opts.absoluteTtlMs };
  if (st.token !== null && user === st.user) {
    if (st.snapshot !== null && bytes.equals(st.snapshot)) return;
    if (await st.client.sessionUpdateBytes(st.token, bytes)) {
      st.snapshot = bytes;
      return;
    }
    // Gone meanwhile (expired or revoked elsewhere): start a new one below.
  }
  const old = st.token;
  const created = await st.client.sessionCreateBytes(user, bytes, life);
  st.token = created.token;
  st.user = user;
  st.absoluteExpiresAtMs = created.absoluteExpiresAtMs;
  st.snapshot = bytes;
  st.req.sessionID = created.token;
  putCookie(st, st.cookie.setCookie(created.token, created.absoluteExpiresAtMs));
  // Another user now: the old token must not stay valid (session fixation).
  if (old !== null) await st.client.sessionRevoke(old);
}

/** Session middleware backed by shoald, shaped like express-session. */
export function session(options: SessionMiddlewareOptions): Middleware {
  if (options?.client === undefined) throw new TypeError('session needs { client }');
  const cookie = new SessionCookie(options.name ?? DEFAULT_COOKIE_NAME);
  const onError = options.onError ?? ((e: unknown) => console.error('shoal session save failed:', e));
  return (req: Req, res: Res, next: Next) => {
    if (req.session !== undefined) return next();
    void (async () => {
      const token = cookie.tokenFromHeader(req.headers.cookie);
      let found = null;
      if (token !== null) {
        found = await options.client.sessionGet<Record<string, unknown>>(token);
      }
      const state: State = {
        client: options.client,
        cookie,
        req,
        res,
        opts: options,
        token: found === null ? null : token,
        user: found?.user ?? null,
        absoluteExpiresAtMs: found?.absoluteExpiresAtMs ?? 0,
        snapshot: null,
      };
      const sess = new ShoalSession(state, found?.data ?? null);
      state.snapshot = found === null ? null : encodeValue(dataOf(sess));
      req.session = sess;
      if (state.token !== null) req.sessionID = state.token;
      // Save changes before the response ends (express-session's approach):
      // the end is held until shoald answered, so the cookie goes out with it.
      const end = res.end;
      let ending = false;
      res.end = function (this: Res, ...args: any[]) {
        if (ending) return (end as any).apply(this, args);
        ending = true;
        const cur = req.session;
        if (!(cur instanceof ShoalSession) || !isDirty(cur)) return (end as any).apply(this, args);
        saveSession(cur).then(
          () => (end as any).apply(res, args),
          (e) => {
            onError(e);
            (end as any).apply(res, args);
          },
        );
        return res;
      } as any;
      next();
    })().catch(next);
  };
}
