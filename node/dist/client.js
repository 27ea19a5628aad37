"use strict";
/**
 * `Client`: the promise-based handle to shoald, with every op of protocol v1 and
 * shoal's extensions.
 *
 * A `Client` owns at most one connection at a time and multiplexes every call
 * over it with request ids, so an application creates one at startup and shares
 * it. Calls beyond `maxInFlight` wait in line for a slot. Each call is bounded by
 * a timeout (the client's, or the call's `timeoutMs`) and can be cancelled with an
 * `AbortSignal`; either only forgets that call's id, so the connection and
 * everyone else's calls carry on. When the connection dies, the next call
 * reconnects; a burst of callers shares one attempt, and failed attempts back off
 * exponentially (with jitter) so a missing daemon costs one connect per backoff
 * interval, not one per call: calls in between fail at once with the last
 * connect error, which is retryable, so callers can fall back instead of queueing.
 */
Object.defineProperty(exports, "__esModule", { value: true });
exports.Client = exports.DEFAULT_ACQUIRE_MAX_WAIT_MS = exports.DEFAULT_SOCKET_PATH = void 0;
const connection_1 = require("./connection");
const errors_1 = require("./errors");
const protocol_1 = require("./protocol");
const ratelimit_1 = require("./ratelimit");
const value_1 = require("./value");
/** The socket shoald listens on unless configured otherwise. */
exports.DEFAULT_SOCKET_PATH = '/run/shoal/shoal.sock';
const VERSION = '0.1.0';
/** An error is worth falling back on (daemon away, Redis away, timeout). */
function isRetryable(e) {
    return e instanceof errors_1.ShoalError && e.retryable;
}
/** Longest single sleep while another caller fills a key. */
const MAX_WAIT_ROUND_MS = 50;
/** Longest acquire wait by default. */
exports.DEFAULT_ACQUIRE_MAX_WAIT_MS = 60_000;
function sleep(ms, signal) {
    return new Promise((resolve, reject) => {
        if (signal?.aborted) {
            reject(signal.reason);
            return;
        }
        const onAbort = () => {
            clearTimeout(t);
            reject(signal?.reason);
        };
        const t = setTimeout(() => {
            signal?.removeEventListener('abort', onAbort);
            resolve();
        }, ms);
        signal?.addEventListener('abort', onAbort, { once: true });
    });
}
function toBuffer(u) {
    return Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}
function getResult(r) {
    return {
        hit: r.hit,
        value: r.hit && r.value != null ? toBuffer(r.value) : r.hit ? Buffer.alloc(0) : null,
        from: r.from ?? null,
        ttlMs: r.ttl_ms ?? null,
        lease: r.lease ?? null,
        waitMs: r.wait_ms ?? null,
    };
}
function hitValue(r) {
    if (!r.hit)
        return null;
    return r.value == null ? Buffer.alloc(0) : toBuffer(r.value);
}
function keysOf(keys) {
    return typeof keys === 'string' ? [keys] : [...keys];
}
/** A call on its way: waiting for a slot or a connection, or sent. */
class Call {
    client;
    id;
    frame;
    signal;
    res;
    rej;
    settled = false;
    holdsSlot = false;
    conn = null;
    timer;
    onAbort;
    constructor(client, id, frame, signal, res, rej) {
        this.client = client;
        this.id = id;
        this.frame = frame;
        this.signal = signal;
        this.res = res;
        this.rej = rej;
    }
    resolve(v) {
        if (this.finish())
            this.res(v);
    }
    reject(e) {
        if (this.finish())
            this.rej(e);
    }
    /** Ends the call's bookkeeping once; false if it had already ended. */
    finish() {
        if (this.settled)
            return false;
        this.settled = true;
        if (this.timer !== undefined)
            clearTimeout(this.timer);
        if (this.onAbort !== undefined)
            this.signal?.removeEventListener('abort', this.onAbort);
        if (this.conn !== null)
            this.conn.forget(this.id);
        if (this.holdsSlot) {
            this.holdsSlot = false;
            this.client.releaseSlot();
        }
        return true;
    }
}
/**
 * A handle to shoald. Create one with `Client.connect(path)` and share it; call
 * `close()` when done (an open connection keeps the process alive).
 */
class Client {
    path;
    timeoutMs;
    connectTimeoutMs;
    backoffMin;
    backoffMax;
    maxInFlight;
    clientName;
    leaseWaitMaxMs;
    conn = null;
    connecting = null;
    failures = 0;
    retryAt = 0;
    lastError = null;
    closed = false;
    nextId = 1;
    inFlight = 0;
    opened = 0;
    waiting = [];
    info = { version: 0, server: '', node: '', maxFrame: 0 };
    constructor(path, o) {
        this.path = path;
        this.timeoutMs = o.timeoutMs ?? 5000;
        this.connectTimeoutMs = o.connectTimeoutMs ?? 1000;
        this.backoffMin = o.reconnectBackoffMinMs ?? 10;
        this.backoffMax = Math.max(this.backoffMin, o.reconnectBackoffMaxMs ?? 1000);
        this.maxInFlight = Math.max(1, o.maxInFlight ?? 256);
        this.clientName = o.clientName ?? `shoal-client-node/${VERSION}`;
        this.leaseWaitMaxMs = o.leaseWaitMaxMs ?? 1000;
    }
    /**
     * Connects to the daemon at `path` and performs the handshake. Fails if the
     * daemon cannot be reached now; once connected, later connection losses are
     * repaired by the next call.
     */
    static async connect(path = exports.DEFAULT_SOCKET_PATH, options = {}) {
        const c = new Client(path, options);
        await c.getConn();
        return c;
    }
    /** What the daemon said in the latest handshake: version, server name, node id, `maxFrame`. */
    get serverInfo() {
        return { ...this.info };
    }
    /** How many connections this client has opened (1 plus reconnects). */
    get connects() {
        return this.opened;
    }
    /** Calls sent (or being connected) and not yet answered. */
    get inFlightCount() {
        return this.inFlight;
    }
    /** Calls waiting for an in-flight slot. */
    get queuedCount() {
        return this.waiting.filter((c) => !c.settled).length;
    }
    /** Whether a live connection is open now. */
    get connected() {
        return this.conn !== null && this.conn.alive;
    }
    /** Closes the connection. In-flight, queued and later calls fail with `ClosedError`. */
    close() {
        this.closed = true;
        const err = new errors_1.ClosedError();
        for (const w of this.waiting.splice(0))
            w.reject(err);
        this.conn?.kill(err);
        this.conn = null;
    }
    // ---- connection management ----
    onDeath = (conn) => {
        if (this.conn === conn)
            this.conn = null;
    };
    getConn() {
        if (this.closed)
            return Promise.reject(new errors_1.ClosedError());
        if (this.conn !== null && this.conn.alive)
            return this.conn;
        if (this.connecting !== null)
            return this.connecting;
        if (this.lastError !== null && Date.now() < this.retryAt) {
            // A recent attempt failed: share its outcome rather than hammering a
            // daemon that just refused.
            const e = this.lastError;
            return Promise.reject(e instanceof errors_1.ConnectionError ? new errors_1.ConnectionError(e.message, false, { cause: e.cause }) : new errors_1.ServerError(e.code, e.serverMessage));
        }
        this.connecting = connection_1.Connection.open(this.path, this.clientName, this.connectTimeoutMs, this.onDeath).then((conn) => {
            this.connecting = null;
            if (this.closed) {
                conn.kill(new errors_1.ClosedError());
                throw new errors_1.ClosedError();
            }
            this.failures = 0;
            this.lastError = null;
            this.opened += 1;
            this.conn = conn;
            this.info = { ...conn.info };
            return conn;
        }, (err) => {
            this.connecting = null;
            this.failures += 1;
            this.retryAt = Date.now() + this.backoff();
            this.lastError = err instanceof errors_1.ServerError ? err : err instanceof errors_1.ConnectionError ? err : new errors_1.ConnectionError(err.message, false, { cause: err });
            throw this.lastError;
        });
        return this.connecting;
    }
    /** Delay before the next attempt: doubling from the minimum, capped, with jitter. */
    backoff() {
        const exp = Math.min(20, Math.max(0, this.failures - 1));
        const base = Math.min(this.backoffMax, this.backoffMin * 2 ** exp);
        return base / 2 + (base / 2) * Math.random();
    }
    /** Frees an in-flight slot and starts the next waiting call. */
    releaseSlot() {
        this.inFlight -= 1;
        while (this.waiting.length > 0 && this.inFlight < this.maxInFlight) {
            const next = this.waiting.shift();
            if (!next.settled)
                this.dispatch(next);
        }
    }
    /**
     * Takes a slot for `call` (held until it settles, so the bound also covers a
     * burst waiting for a reconnect) and sends it, connecting first if needed.
     */
    dispatch(call) {
        this.inFlight += 1;
        call.holdsSlot = true;
        this.route(call);
    }
    route(call) {
        const c = this.getConn();
        if (c instanceof connection_1.Connection) {
            this.sendOn(c, call);
            return;
        }
        c.then((conn) => {
            if (!call.settled)
                this.sendOn(conn, call);
        }, (err) => call.reject(err));
    }
    sendOn(conn, call) {
        const len = call.frame.length - protocol_1.FRAME_HEADER_LEN;
        if (len > conn.info.maxFrame) {
            // The server would answer frame_too_large and close the connection,
            // failing everyone else's calls too.
            call.reject(new errors_1.TooLargeError(len, conn.info.maxFrame));
            return;
        }
        if (!conn.alive) {
            // Died between getConn and now: nothing was sent, so try a fresh one.
            this.route(call);
            return;
        }
        call.conn = conn;
        conn.send(call.id, call.frame, call);
    }
    /**
     * Sends op `op` with `args` (wire names, snake_case) and resolves with its `ok`
     * result as shoald sent it. Every method goes through here; use it directly for
     * ops without a dedicated method. Rejects with a `ShoalError`, or with
     * `signal.reason` when aborted.
     */
    call(op, args, opts) {
        if (this.closed)
            return Promise.reject(new errors_1.ClosedError());
        const signal = opts?.signal;
        if (signal?.aborted)
            return Promise.reject(signal.reason);
        const id = this.nextId;
        this.nextId = id >= 0xffff_fffe ? 1 : id + 1;
        let frame;
        try {
            frame = (0, protocol_1.encodeRequest)(id, op, args);
        }
        catch (e) {
            return Promise.reject(e);
        }
        return new Promise((resolve, reject) => {
            const call = new Call(this, id, frame, signal, resolve, reject);
            const ms = opts?.timeoutMs ?? this.timeoutMs;
            call.timer = setTimeout(() => call.reject(new errors_1.TimeoutError(ms)), ms);
            if (signal !== undefined) {
                call.onAbort = () => call.reject(signal.reason);
                signal.addEventListener('abort', call.onAbort, { once: true });
            }
            if (this.inFlight < this.maxInFlight && this.waiting.length === 0) {
                this.dispatch(call);
            }
            else {
                this.waiting.push(call);
            }
        });
    }
    // ---- misc ----
    /** Round trip with no payload: checks the daemon is up and answering. */
    async ping(opts) {
        await this.call('ping', undefined, opts);
    }
    /** The daemon's counters (a free-form map). */
    stats(opts) {
        return this.call('stats', undefined, opts);
    }
    // ---- cache, raw bytes ----
    /** The full `cache.get` result. With `lease`, a miss carries a fill lease or `waitMs` (see `getOrLoad`). */
    getFull(key, opts) {
        // `.then` rather than `async`: an L1 hit is a few microseconds, and each
        // async layer costs a share of that.
        return this.call('cache.get', { key, lease: opts?.lease ? true : undefined }, opts).then(getResult);
    }
    /** The bytes of `key`, or null on a miss. */
    getBytes(key, opts) {
        return this.call('cache.get', { key }, opts).then(hitValue);
    }
    /** The full `cache.get` results for `keys`, in order. */
    async mgetFull(keys, opts) {
        if (keys.length === 0)
            return []; // the protocol requires a non-empty list
        const rs = await this.call('cache.mget', { keys: [...keys] }, opts);
        if (!Array.isArray(rs) || rs.length !== keys.length) {
            throw new errors_1.ProtocolError(`cache.mget of ${keys.length} keys answered ${Array.isArray(rs) ? rs.length : 'no'} results`);
        }
        return rs.map(getResult);
    }
    /** The bytes of `keys`, in order, null for misses. */
    async mgetBytes(keys, opts) {
        return (await this.mgetFull(keys, opts)).map((r) => r.value);
    }
    /**
     * Stores `value` under `key` for the whole fleet. Resolves with whether it was
     * stored: false only for a fill whose lease was lost (invalidated, expired, replaced).
     */
    async setBytes(key, value, opts) {
        const r = await this.call('cache.set', {
            key,
            value,
            ttl_ms: opts?.ttlMs,
            lease: opts?.lease,
            tags: opts?.tags !== undefined && opts.tags.length > 0 ? opts.tags : undefined,
        }, opts);
        return r.stored;
    }
    /** Deletes `keys` fleet-wide. Resolves with the invalidation log position. */
    async invalidate(keys, opts) {
        const r = await this.call('cache.invalidate', { keys: keysOf(keys) }, opts);
        return r.seq;
    }
    /** Deletes every key tagged with any of `tags`. */
    async invalidateTags(tags, opts) {
        return this.call('cache.invalidate_tags', { tags: keysOf(tags) }, opts);
    }
    // ---- cache, typed (MessagePack, readable by the Rust and Python typed APIs) ----
    /** The value of `key` decoded from MessagePack, or null on a miss. */
    get(key, opts) {
        return this.getBytes(key, opts).then((b) => (b === null ? null : (0, value_1.decodeValue)(b)));
    }
    /** Stores `value` encoded as MessagePack under `key`. */
    set(key, value, opts) {
        let bytes;
        try {
            bytes = (0, value_1.encodeValue)(value);
        }
        catch (e) {
            return Promise.reject(e);
        }
        return this.setBytes(key, bytes, opts);
    }
    /** The values of `keys` decoded from MessagePack, in order, null for misses. */
    async mget(keys, opts) {
        return (await this.mgetBytes(keys, opts)).map((b) => (b === null ? null : (0, value_1.decodeValue)(b)));
    }
    /**
     * The value of `key`; on a miss, loaded with `loader`, stored and returned.
     *
     * Across the fleet, one caller at a time runs the loader for a key (fill
     * leases): the others wait for its fill, up to `leaseWaitMaxMs`, then run the
     * loader themselves without storing. If the cache fails with a retryable error
     * (daemon away, Redis `unavailable`, timeout) the loader runs and its value is
     * returned: a cache outage costs database load, not errors. The loader's own
     * errors propagate as they are.
     */
    getOrLoad(key, loader, opts) {
        return this.load(key, loader, value_1.encodeValue, (b) => (0, value_1.decodeValue)(b), opts);
    }
    /** `getOrLoad` with raw bytes. */
    getOrLoadBytes(key, loader, opts) {
        return this.load(key, loader, (v) => v, (b) => b, opts);
    }
    async load(key, loader, encode, decode, opts) {
        const giveUpAt = Date.now() + this.leaseWaitMaxMs;
        for (;;) {
            let r;
            try {
                r = await this.getFull(key, { ...opts, lease: true });
            }
            catch (e) {
                if (isRetryable(e))
                    return loader();
                throw e;
            }
            if (r.hit)
                return decode(r.value ?? Buffer.alloc(0));
            if (r.lease !== null) {
                const value = await loader();
                try {
                    await this.setBytes(key, encode(value), { ...opts, lease: r.lease });
                }
                catch (e) {
                    // Other callers stop waiting after leaseWaitMaxMs; the value we hold is
                    // good, so a failed fill costs only a later miss. Codec and bad-request
                    // errors are the caller's to see.
                    if (!isRetryable(e))
                        throw e;
                }
                return value;
            }
            const now = Date.now();
            if (r.waitMs === null || now >= giveUpAt) {
                // Waited long enough for someone else's fill (or no lease and no wait):
                // load without storing, since a plain set would cancel the holder's lease.
                return loader();
            }
            await sleep(Math.min(Math.max(r.waitMs, 1), MAX_WAIT_ROUND_MS, giveUpAt - now), opts?.signal);
        }
    }
    // ---- sessions ----
    /** Creates a session for `user` holding `data` (MessagePack); the result carries the token. */
    sessionCreate(user, data = {}, opts) {
        let bytes;
        try {
            bytes = (0, value_1.encodeValue)(data);
        }
        catch (e) {
            return Promise.reject(e);
        }
        return this.sessionCreateBytes(user, bytes, opts);
    }
    /** `sessionCreate` with data you encoded yourself. */
    async sessionCreateBytes(user, data, opts) {
        const r = await this.call('session.create', { user, data, idle_ttl_ms: opts?.idleTtlMs, absolute_ttl_ms: opts?.absoluteTtlMs }, opts);
        return { token: r.token, expiresAtMs: r.expires_at_ms, absoluteExpiresAtMs: r.absolute_expires_at_ms };
    }
    /**
     * Validates `token` and (unless `touch: false`) slides its idle expiry; null
     * when the session is unknown, expired or revoked. Data is decoded from MessagePack.
     */
    async sessionGet(token, opts) {
        const s = await this.sessionGetBytes(token, opts);
        return s === null ? null : { ...s, data: (0, value_1.decodeValue)(s.data) };
    }
    /** `sessionGet` with the data left as bytes. */
    async sessionGetBytes(token, opts) {
        const r = await notFound(this.call('session.get', { token, touch: opts?.touch === false ? false : undefined }, opts));
        if (r === null)
            return null;
        return {
            user: r.user,
            data: toBuffer(r.data),
            createdAtMs: r.created_at_ms,
            lastSeenMs: r.last_seen_ms,
            expiresAtMs: r.expires_at_ms,
            absoluteExpiresAtMs: r.absolute_expires_at_ms,
        };
    }
    /** Replaces the session's data (MessagePack) on every daemon; false when the session is gone. */
    sessionUpdate(token, data, opts) {
        let bytes;
        try {
            bytes = (0, value_1.encodeValue)(data);
        }
        catch (e) {
            return Promise.reject(e);
        }
        return this.sessionUpdateBytes(token, bytes, opts);
    }
    /** `sessionUpdate` with data you encoded yourself. */
    async sessionUpdateBytes(token, data, opts) {
        const r = await this.call('session.update', { token, data }, opts);
        return r.updated;
    }
    /**
     * Issues a new token for the session (same user, data and absolute expiry) and
     * revokes the old one everywhere: call it on privilege changes such as login.
     * Null when the session is gone.
     */
    async sessionRotate(token, opts) {
        const r = await notFound(this.call('session.rotate', { token }, opts));
        return r === null ? null : r.token;
    }
    /** Revokes the session of `token` on every daemon (logout); false when it did not exist. */
    async sessionRevoke(token, opts) {
        const r = await this.call('session.revoke', { token }, opts);
        return r.revoked;
    }
    /** Revokes a session by the id `sessionList` shows. */
    async sessionRevokeId(sessionId, opts) {
        const r = await this.call('session.revoke', { session_id: sessionId }, opts);
        return r.revoked;
    }
    /** Revokes every session of `user` ("sign out everywhere"); resolves with how many there were. */
    async sessionRevokeUser(user, opts) {
        const r = await this.call('session.revoke_user', { user }, opts);
        return r.revoked;
    }
    /** The live sessions of `user`, by session id (never the token). */
    async sessionList(user, opts) {
        const r = await this.call('session.list', { user }, opts);
        return r.map((e) => ({
            sessionId: e.session_id,
            createdAtMs: e.created_at_ms,
            lastSeenMs: e.last_seen_ms,
            expiresAtMs: e.expires_at_ms,
        }));
    }
    // ---- rate limits and quotas ----
    /** `ratelimit.check`: one request (or `cost`) against `policy` for `key`. */
    async check(policy, key, opts) {
        const cost = opts?.cost;
        const d = await this.call('ratelimit.check', { policy, key, cost: cost === 1 ? undefined : cost }, opts);
        return new ratelimit_1.Decision(policy, d);
    }
    /** `ratelimit.peek`: what a check would answer, consuming nothing. */
    async peek(policy, key, opts) {
        const d = await this.call('ratelimit.peek', { policy, key }, opts);
        return new ratelimit_1.Decision(policy, d);
    }
    /** `ratelimit.reset`: forgets the key's state; true when there was some. */
    async resetLimit(policy, key, opts) {
        const r = await this.call('ratelimit.reset', { policy, key }, opts);
        return r.reset;
    }
    /** `ratelimit.reserve`: books the next slot if at most `maxWaitMs` away; sleep `waitMs`, then go. */
    async reserve(policy, key, opts) {
        const cost = opts?.cost;
        const maxWait = Math.max(1, Math.ceil(opts?.maxWaitMs ?? exports.DEFAULT_ACQUIRE_MAX_WAIT_MS));
        const r = await this.call('ratelimit.reserve', { policy, key, cost: cost === 1 ? undefined : cost, max_wait_ms: maxWait }, opts);
        return { granted: r.granted, waitMs: r.wait_ms };
    }
    /**
     * Waits for the next slot of `policy` for `key` (at most `maxWaitMs`): books it,
     * sleeps until it comes, resolves. Spaces outbound calls at the policy's rate
     * instead of failing bursts.
     */
    async acquire(policy, key, opts) {
        const r = await this.reserve(policy, key, opts);
        if (!r.granted)
            return { ready: false, nextInMs: r.waitMs };
        if (r.waitMs > 0)
            await sleep(r.waitMs, opts?.signal);
        return { ready: true, waitedMs: r.waitMs };
    }
    /** `ratelimit.acquire_concurrent`: one in-flight slot of a `concurrency` policy, as a lease. */
    async acquireConcurrent(policy, key, opts) {
        const r = await this.call('ratelimit.acquire_concurrent', { policy, key, lease_ms: opts?.leaseMs }, opts);
        return {
            acquired: r.acquired,
            lease: r.lease ?? null,
            limit: r.limit,
            remaining: r.remaining,
            retryAfterMs: r.retry_after_ms,
            leaseMs: r.lease_ms,
        };
    }
    /** `ratelimit.release`: gives a lease back; false if it had already expired or been released. */
    async release(policy, key, lease, opts) {
        const r = await this.call('ratelimit.release', { policy, key, lease }, opts);
        return r.released;
    }
    /** `ratelimit.set_override`: gives `key` its own numbers fleet-wide; true when it replaced one. */
    async setOverride(policy, key, limit, opts) {
        const r = await this.call('ratelimit.set_override', { policy, key, limit, burst: opts?.burst }, opts);
        return r.replaced;
    }
    /** `ratelimit.clear_override`: true when there was one. */
    async clearOverride(policy, key, opts) {
        const r = await this.call('ratelimit.clear_override', { policy, key }, opts);
        return r.cleared;
    }
    /** `quota.usage`: current usage of a policy's keys (starting with `prefix`), at most `maxKeys`. */
    async quotaUsage(policy, opts) {
        const r = await this.call('quota.usage', { policy, prefix: opts?.prefix, max_keys: opts?.maxKeys }, opts);
        return {
            policy: r.policy,
            algorithm: r.algorithm,
            limit: r.limit,
            windowMs: r.window_ms,
            keys: r.keys.map((k) => ({
                key: k.key,
                used: k.used,
                limit: k.limit,
                remaining: k.remaining,
                resetAfterMs: k.reset_after_ms,
            })),
            truncated: r.truncated,
        };
    }
}
exports.Client = Client;
/** `not_found` is an answer here, not an error. */
async function notFound(p) {
    try {
        return await p;
    }
    catch (e) {
        if (e instanceof errors_1.ServerError && e.code === 'not_found')
            return null;
        throw e;
    }
}
