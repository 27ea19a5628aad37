"use strict";
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
Object.defineProperty(exports, "__esModule", { value: true });
exports.ShoalSession = void 0;
exports.setRateLimitHeaders = setRateLimitHeaders;
exports.rateLimit = rateLimit;
exports.session = session;
const node_crypto_1 = require("node:crypto");
const errors_1 = require("./errors");
const ratelimit_1 = require("./ratelimit");
const session_1 = require("./session");
const value_1 = require("./value");
/** The 12-byte partition key of draft-8 (sha256 of the key, as express-rate-limit computes it). */
function partitionKey(key) {
    const hex = (0, node_crypto_1.createHash)('sha256').update(key).digest('hex').slice(0, 12);
    return Buffer.from(hex).toString('base64');
}
/** Sets the headers of `opts` for decision `d` on `res`. */
function setRateLimitHeaders(res, d, key, opts, nowMs = Date.now()) {
    if (res.headersSent)
        return;
    const reset = (0, ratelimit_1.secsCeil)(d.resetAfterMs);
    const window = d.windowMs === null ? null : Math.max(1, (0, ratelimit_1.secsCeil)(d.windowMs));
    if (opts.legacyHeaders ?? true) {
        res.setHeader('X-RateLimit-Limit', String(d.limit));
        res.setHeader('X-RateLimit-Remaining', String(d.remaining));
        res.setHeader('Date', new Date(nowMs).toUTCString());
        res.setHeader('X-RateLimit-Reset', String(Math.ceil((nowMs + d.resetAfterMs) / 1000)));
    }
    let standard = opts.standardHeaders ?? false;
    if (standard === true)
        standard = 'draft-6';
    switch (standard) {
        case 'draft-6':
            if (window !== null)
                res.setHeader('RateLimit-Policy', `${d.limit};w=${window}`);
            res.setHeader('RateLimit-Limit', String(d.limit));
            res.setHeader('RateLimit-Remaining', String(d.remaining));
            if (reset > 0)
                res.setHeader('RateLimit-Reset', String(reset));
            break;
        case 'draft-7':
            if (window !== null)
                res.setHeader('RateLimit-Policy', `${d.limit};w=${window}`);
            res.setHeader('RateLimit', `limit=${d.limit}, remaining=${d.remaining}, reset=${reset}`);
            break;
        case 'draft-8': {
            const name = (0, ratelimit_1.sfString)(opts.identifier ?? d.policy);
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
    if (!d.allowed)
        res.setHeader('Retry-After', String(d.retryAfterSecs()));
}
/** Appends a value to a list header (several limiters may each add theirs). */
function appendHeader(res, name, value) {
    const prev = res.getHeader(name);
    if (prev === undefined)
        res.setHeader(name, value);
    else
        res.setHeader(name, `${Array.isArray(prev) ? prev.join(', ') : String(prev)}, ${value}`);
}
function send(res, status, body) {
    res.statusCode = status;
    if (typeof res.send === 'function') {
        res.send(body);
        return;
    }
    if (typeof body === 'string' || body instanceof Uint8Array) {
        res.end(body);
    }
    else {
        res.setHeader('Content-Type', 'application/json');
        res.end(JSON.stringify(body));
    }
}
function defaultKey(req) {
    return (typeof req.ip === 'string' && req.ip) || req.socket?.remoteAddress || undefined;
}
/** Rate-limiting middleware backed by shoald, with express-rate-limit's options and headers. */
function rateLimit(options) {
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
    return (req, res, next) => {
        void (async () => {
            if (options.skip !== undefined && (await options.skip(req, res)))
                return next();
            const key = await keyOf(req, res);
            if (key === null || key === undefined)
                return next();
            const cost = typeof options.cost === 'function' ? options.cost(req) : options.cost;
            let d;
            try {
                d = await client.check(policy, key, { cost });
            }
            catch (e) {
                if (passOnError && e instanceof errors_1.ShoalError && e.code !== 'unknown_policy' && e.code !== 'bad_request') {
                    return next();
                }
                return next(e);
            }
            const now = Date.now();
            const info = {
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
            if (d.allowed)
                return next();
            if (options.handler !== undefined)
                return options.handler(req, res, next, info);
            const body = typeof message === 'function' ? await message(req, res) : message;
            if (!res.writableEnded)
                send(res, statusCode, body);
        })().catch(next);
    };
}
const STATE = Symbol('shoal.session');
/** Own enumerable properties of the session: its data. */
function dataOf(s) {
    const out = {};
    for (const k of Object.keys(s))
        out[k] = s[k];
    return out;
}
function userOf(opts, data) {
    if (opts.user !== undefined)
        return opts.user(data) || 'anonymous';
    if (typeof data.user === 'string' && data.user.length > 0)
        return data.user;
    if (data.userId !== undefined && data.userId !== null)
        return String(data.userId);
    return 'anonymous';
}
/** Replaces our cookie among the response's `Set-Cookie` headers. */
function putCookie(state, value) {
    const res = state.res;
    if (res.headersSent)
        return;
    const prev = res.getHeader('Set-Cookie');
    const list = prev === undefined ? [] : Array.isArray(prev) ? prev : [String(prev)];
    const others = list.filter((c) => !c.startsWith(`${state.cookie.name}=`));
    res.setHeader('Set-Cookie', [...others, value]);
}
function withCallback(p, cb) {
    if (cb === undefined)
        return p;
    return p.then(() => cb(), (e) => cb(e));
}
/**
 * `req.session`: the session's data as own properties, and express-session's
 * methods. Each method takes an optional callback and returns a promise.
 */
class ShoalSession {
    constructor(state, data) {
        Object.defineProperty(this, STATE, { value: state, enumerable: false, writable: true });
        if (data !== null && typeof data === 'object' && !Array.isArray(data))
            Object.assign(this, data);
    }
    /** The session token (express-session's `id`), or undefined before the first save. */
    get id() {
        return this[STATE].token ?? undefined;
    }
    /** The user shoal indexes this session under, once saved. */
    get shoalUser() {
        return this[STATE].user ?? undefined;
    }
    /** Saves the data now: creates the session (and sets the cookie) if new, else updates it on every daemon. */
    save(cb) {
        return withCallback(saveSession(this), cb);
    }
    /** Revokes the session on every daemon, clears the cookie and removes `req.session`. */
    destroy(cb) {
        const st = this[STATE];
        const p = (async () => {
            const token = st.token;
            st.token = null;
            st.snapshot = null;
            if (st.req.session === this)
                delete st.req.session;
            delete st.req.sessionID;
            putCookie(st, st.cookie.clearCookie());
            if (token !== null)
                await st.client.sessionRevoke(token);
        })();
        return withCallback(p, cb);
    }
    /** Revokes this session and puts a new, empty one in `req.session` (saved when it gets data). */
    regenerate(cb) {
        const st = this[STATE];
        const p = (async () => {
            const token = st.token;
            st.token = null;
            st.snapshot = null;
            const fresh = new ShoalSession({ ...st, token: null, user: null, snapshot: null, absoluteExpiresAtMs: 0 }, null);
            st.req.session = fresh;
            delete st.req.sessionID;
            putCookie(st, st.cookie.clearCookie());
            if (token !== null)
                await st.client.sessionRevoke(token);
        })();
        return withCallback(p, cb);
    }
    /** Re-reads the data from shoald, dropping unsaved changes. */
    reload(cb) {
        const st = this[STATE];
        const p = (async () => {
            if (st.token === null)
                return;
            const s = await st.client.sessionGet(st.token, { touch: false });
            if (s === null)
                throw new Error('failed to load session: it is gone (expired or revoked)');
            for (const k of Object.keys(this))
                delete this[k];
            Object.assign(this, s.data);
            st.snapshot = (0, value_1.encodeValue)(dataOf(this));
        })();
        return withCallback(p, cb);
    }
    /** Issues a new token for the same session (same data and expiry) and revokes the old one: call it on privilege changes. */
    rotate(cb) {
        const st = this[STATE];
        const p = (async () => {
            if (st.token === null)
                return;
            const token = await st.client.sessionRotate(st.token);
            if (token === null)
                throw new Error('cannot rotate: the session is gone (expired or revoked)');
            st.token = token;
            st.req.sessionID = token;
            putCookie(st, st.cookie.setCookie(token, st.absoluteExpiresAtMs));
        })();
        return withCallback(p, cb);
    }
    /** Kept for express-session compatibility: every request's `session.get` already slides the idle expiry. */
    touch() {
        return this;
    }
}
exports.ShoalSession = ShoalSession;
/** Whether the session has something to save. */
function isDirty(s) {
    const st = s[STATE];
    const data = dataOf(s);
    if (st.token === null)
        return Object.keys(data).length > 0;
    return st.snapshot === null || !(0, value_1.encodeValue)(data).equals(st.snapshot);
}
async function saveSession(s) {
    const st = s[STATE];
    const data = dataOf(s);
    const bytes = (0, value_1.encodeValue)(data);
    const user = userOf(st.opts, data);
    const life = { idleTtlMs: st.opts.idleTtlMs, absoluteTtlMs: st.opts.absoluteTtlMs };
    if (st.token !== null && user === st.user) {
        if (st.snapshot !== null && bytes.equals(st.snapshot))
            return;
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
    if (old !== null)
        await st.client.sessionRevoke(old);
}
/** Session middleware backed by shoald, shaped like express-session. */
function session(options) {
    if (options?.client === undefined)
        throw new TypeError('session needs { client }');
    const cookie = new session_1.SessionCookie(options.name ?? session_1.DEFAULT_COOKIE_NAME);
    const onError = options.onError ?? ((e) => console.error('shoal session save failed:', e));
    return (req, res, next) => {
        if (req.session !== undefined)
            return next();
        void (async () => {
            const token = cookie.tokenFromHeader(req.headers.cookie);
            let found = null;
            if (token !== null) {
                found = await options.client.sessionGet(token);
            }
            const state = {
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
            state.snapshot = found === null ? null : (0, value_1.encodeValue)(dataOf(sess));
            req.session = sess;
            if (state.token !== null)
                req.sessionID = state.token;
            // Save changes before the response ends (express-session's approach):
            // the end is held until shoald answered, so the cookie goes out with it.
            const end = res.end;
            let ending = false;
            res.end = function (...args) {
                if (ending)
                    return end.apply(this, args);
                ending = true;
                const cur = req.session;
                if (!(cur instanceof ShoalSession) || !isDirty(cur))
                    return end.apply(this, args);
                saveSession(cur).then(() => end.apply(res, args), (e) => {
                    onError(e);
                    end.apply(res, args);
                });
                return res;
            };
            next();
        })().catch(next);
    };
}
