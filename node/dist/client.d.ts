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
import { ServerInfo } from './connection';
import { Concurrent, Decision, QuotaUsage, Reservation } from './ratelimit';
/** The socket shoald listens on unless configured otherwise. */
export declare const DEFAULT_SOCKET_PATH = "/run/shoal/shoal.sock";
/** Settings of a `Client`; every field is optional. */
export interface ClientOptions {
    /** Upper bound on one call, waiting for a slot and reconnecting included. Default 5000 ms. */
    timeoutMs?: number;
    /** Upper bound on connecting plus the `hello` handshake. Default 1000 ms. */
    connectTimeoutMs?: number;
    /** Wait after the first failed connect attempt; doubles per failure. Default 10 ms. */
    reconnectBackoffMinMs?: number;
    /** Longest wait between connect attempts. Default 1000 ms. */
    reconnectBackoffMaxMs?: number;
    /** Most calls in flight on the connection; more wait in line. Default 256 (shoald's `socket.max_inflight`). */
    maxInFlight?: number;
    /** Sent in `hello`; shows up in the daemon's logs. Default `shoal-client-node/<version>`. */
    clientName?: string;
    /** How long `getOrLoad` waits for another caller's fill before loading itself. Default 1000 ms. */
    leaseWaitMaxMs?: number;
}
/** Per-call options accepted by every method. */
export interface CallOptions {
    /** Cancels the call: it rejects with `signal.reason`; the connection is unaffected. */
    signal?: AbortSignal;
    /** This call's timeout instead of the client's. */
    timeoutMs?: number;
}
/** Which level of the cache answered. */
export type Source = 'l1' | 'l2';
/** The full `cache.get` result. */
export interface GetResult {
    hit: boolean;
    /** The value on a hit, else null. */
    value: Buffer | null;
    from: Source | null;
    ttlMs: number | null;
    /** With `lease: true`, a miss may carry a fill lease: load, then `set` with it. */
    lease: string | null;
    /** With `lease: true`, a miss may say how long to wait for another caller's fill. */
    waitMs: number | null;
}
/** Options of `set` / `setBytes`. */
export interface SetOptions extends CallOptions {
    /** Time to live; absent means the daemon's `cache.default_ttl`. */
    ttlMs?: number;
    /** A fill lease from `getFull(key, {lease: true})`: stored only if still held. */
    lease?: string;
    /** Tags for `invalidateTags`. */
    tags?: string[];
}
/** Options of `getOrLoad`. */
export interface LoadOptions extends CallOptions {
    ttlMs?: number;
    tags?: string[];
}
/** Per-session lifetimes; absent means the daemon's configured default. */
export interface SessionOptions extends CallOptions {
    /** Sliding timeout: the session ends after this long without a `get`. */
    idleTtlMs?: number;
    /** Hard limit from creation, however active the session is. */
    absoluteTtlMs?: number;
}
/** `session.create`'s result: give `token` to the browser (see `SessionCookie`). */
export interface SessionCreated {
    token: string;
    expiresAtMs: number;
    absoluteExpiresAtMs: number;
}
/** A validated session. */
export interface Session<T = unknown> {
    user: string;
    data: T;
    createdAtMs: number;
    lastSeenMs: number;
    expiresAtMs: number;
    absoluteExpiresAtMs: number;
}
/** One of a user's sessions, by id (never the token). */
export interface SessionListEntry {
    sessionId: string;
    createdAtMs: number;
    lastSeenMs: number;
    expiresAtMs: number;
}
/** Options of `check`. */
export interface CheckOptions extends CallOptions {
    /** Weight of the request (default 1). */
    cost?: number;
}
/** Options of `reserve` and `acquire`. */
export interface ReserveOptions extends CallOptions {
    cost?: number;
    /** Longest acceptable wait for the slot. Default 60 000 ms. */
    maxWaitMs?: number;
}
/** What `acquire` did. */
export type Acquired = {
    ready: true;
    waitedMs: number;
} | {
    ready: false;
    nextInMs: number;
};
/** Longest acquire wait by default. */
export declare const DEFAULT_ACQUIRE_MAX_WAIT_MS = 60000;
/**
 * A handle to shoald. Create one with `Client.connect(path)` and share it; call
 * `close()` when done (an open connection keeps the process alive).
 */
export declare class Client {
    private readonly path;
    private readonly timeoutMs;
    private readonly connectTimeoutMs;
    private readonly backoffMin;
    private readonly backoffMax;
    private readonly maxInFlight;
    private readonly clientName;
    readonly leaseWaitMaxMs: number;
    private conn;
    private connecting;
    private failures;
    private retryAt;
    private lastError;
    private closed;
    private nextId;
    private inFlight;
    private opened;
    private readonly waiting;
    private info;
    private constructor();
    /**
     * Connects to the daemon at `path` and performs the handshake. Fails if the
     * daemon cannot be reached now; once connected, later connection losses are
     * repaired by the next call.
     */
    static connect(path?: string, options?: ClientOptions): Promise<Client>;
    /** What the daemon said in the latest handshake: version, server name, node id, `maxFrame`. */
    get serverInfo(): ServerInfo;
    /** How many connections this client has opened (1 plus reconnects). */
    get connects(): number;
    /** Calls sent (or being connected) and not yet answered. */
    get inFlightCount(): number;
    /** Calls waiting for an in-flight slot. */
    get queuedCount(): number;
    /** Whether a live connection is open now. */
    get connected(): boolean;
    /** Closes the connection. In-flight, queued and later calls fail with `ClosedError`. */
    close(): void;
    private onDeath;
    private getConn;
    /** Delay before the next attempt: doubling from the minimum, capped, with jitter. */
    private backoff;
    /** Frees an in-flight slot and starts the next waiting call. */
    releaseSlot(): void;
    /**
     * Takes a slot for `call` (held until it settles, so the bound also covers a
     * burst waiting for a reconnect) and sends it, connecting first if needed.
     */
    private dispatch;
    private route;
    private sendOn;
    /**
     * Sends op `op` with `args` (wire names, snake_case) and resolves with its `ok`
     * result as shoald sent it. Every method goes through here; use it directly for
     * ops without a dedicated method. Rejects with a `ShoalError`, or with
     * `signal.reason` when aborted.
     */
    call<T = unknown>(op: string, args?: Record<string, unknown>, opts?: CallOptions): Promise<T>;
    /** Round trip with no payload: checks the daemon is up and answering. */
    ping(opts?: CallOptions): Promise<void>;
    /** The daemon's counters (a free-form map). */
    stats(opts?: CallOptions): Promise<Record<string, number>>;
    /** The full `cache.get` result. With `lease`, a miss carries a fill lease or `waitMs` (see `getOrLoad`). */
    getFull(key: string, opts?: CallOptions & {
        lease?: boolean;
    }): Promise<GetResult>;
    /** The bytes of `key`, or null on a miss. */
    getBytes(key: string, opts?: CallOptions): Promise<Buffer | null>;
    /** The full `cache.get` results for `keys`, in order. */
    mgetFull(keys: readonly string[], opts?: CallOptions): Promise<GetResult[]>;
    /** The bytes of `keys`, in order, null for misses. */
    mgetBytes(keys: readonly string[], opts?: CallOptions): Promise<(Buffer | null)[]>;
    /**
     * Stores `value` under `key` for the whole fleet. Resolves with whether it was
     * stored: false only for a fill whose lease was lost (invalidated, expired, replaced).
     */
    setBytes(key: string, value: Uint8Array, opts?: SetOptions): Promise<boolean>;
    /** Deletes `keys` fleet-wide. Resolves with the invalidation log position. */
    invalidate(keys: string | readonly string[], opts?: CallOptions): Promise<string>;
    /** Deletes every key tagged with any of `tags`. */
    invalidateTags(tags: string | readonly string[], opts?: CallOptions): Promise<{
        seq: string;
        keys: number;
    }>;
    /** The value of `key` decoded from MessagePack, or null on a miss. */
    get<T = unknown>(key: string, opts?: CallOptions): Promise<T | null>;
    /** Stores `value` encoded as MessagePack under `key`. */
    set(key: string, value: unknown, opts?: SetOptions): Promise<boolean>;
    /** The values of `keys` decoded from MessagePack, in order, null for misses. */
    mget<T = unknown>(keys: readonly string[], opts?: CallOptions): Promise<(T | null)[]>;
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
    getOrLoad<T>(key: string, loader: () => T | Promise<T>, opts?: LoadOptions): Promise<T>;
    /** `getOrLoad` with raw bytes. */
    getOrLoadBytes(key: string, loader: () => Uint8Array | Promise<Uint8Array>, opts?: LoadOptions): Promise<Uint8Array>;
    private load;
    /** Creates a session for `user` holding `data` (MessagePack); the result carries the token. */
    sessionCreate(user: string, data?: unknown, opts?: SessionOptions): Promise<SessionCreated>;
    /** `sessionCreate` with data you encoded yourself. */
    sessionCreateBytes(user: string, data: Uint8Array, opts?: SessionOptions): Promise<SessionCreated>;
    /**
     * Validates `token` and (unless `touch: false`) slides its idle expiry; null
     * when the session is unknown, expired or revoked. Data is decoded from MessagePack.
     */
    sessionGet<T = unknown>(token: string, opts?: CallOptions & {
        touch?: boolean;
    }): Promise<Session<T> | null>;
    /** `sessionGet` with the data left as bytes. */
    sessionGetBytes(token: string, opts?: CallOptions & {
        touch?: boolean;
    }): Promise<Session<Buffer> | null>;
    /** Replaces the session's data (MessagePack) on every daemon; false when the session is gone. */
    sessionUpdate(token: string, data: unknown, opts?: CallOptions): Promise<boolean>;
    /** `sessionUpdate` with data you encoded yourself. */
    sessionUpdateBytes(token: string, data: Uint8Array, opts?: CallOptions): Promise<boolean>;
    /**
     * Issues a new token for the session (same user, data and absolute expiry) and
     * revokes the old one everywhere: call it on privilege changes such as login.
     * Null when the session is gone.
     */
    sessionRotate(token: string, opts?: CallOptions): Promise<string | null>;
    /** Revokes the session of `token` on every daemon (logout); false when it did not exist. */
    sessionRevoke(token: string, opts?: CallOptions): Promise<boolean>;
    /** Revokes a session by the id `sessionList` shows. */
    sessionRevokeId(sessionId: string, opts?: CallOptions): Promise<boolean>;
    /** Revokes every session of `user` ("sign out everywhere"); resolves with how many there were. */
    sessionRevokeUser(user: string, opts?: CallOptions): Promise<number>;
    /** The live sessions of `user`, by session id (never the token). */
    sessionList(user: string, opts?: CallOptions): Promise<SessionListEntry[]>;
    /** `ratelimit.check`: one request (or `cost`) against `policy` for `key`. */
    check(policy: string, key: string, opts?: CheckOptions): Promise<Decision>;
    /** `ratelimit.peek`: what a check would answer, consuming nothing. */
    peek(policy: string, key: string, opts?: CallOptions): Promise<Decision>;
    /** `ratelimit.reset`: forgets the key's state; true when there was some. */
    resetLimit(policy: string, key: string, opts?: CallOptions): Promise<boolean>;
    /** `ratelimit.reserve`: books the next slot if at most `maxWaitMs` away; sleep `waitMs`, then go. */
    reserve(policy: string, key: string, opts?: ReserveOptions): Promise<Reservation>;
    /**
     * Waits for the next slot of `policy` for `key` (at most `maxWaitMs`): books it,
     * sleeps until it comes, resolves. Spaces outbound calls at the policy's rate
     * instead of failing bursts.
     */
    acquire(policy: string, key: string, opts?: ReserveOptions): Promise<Acquired>;
    /** `ratelimit.acquire_concurrent`: one in-flight slot of a `concurrency` policy, as a lease. */
    acquireConcurrent(policy: string, key: string, opts?: CallOptions & {
        leaseMs?: number;
    }): Promise<Concurrent>;
    /** `ratelimit.release`: gives a lease back; false if it had already expired or been released. */
    release(policy: string, key: string, lease: string, opts?: CallOptions): Promise<boolean>;
    /** `ratelimit.set_override`: gives `key` its own numbers fleet-wide; true when it replaced one. */
    setOverride(policy: string, key: string, limit: number, opts?: CallOptions & {
        burst?: number;
    }): Promise<boolean>;
    /** `ratelimit.clear_override`: true when there was one. */
    clearOverride(policy: string, key: string, opts?: CallOptions): Promise<boolean>;
    /** `quota.usage`: current usage of a policy's keys (starting with `prefix`), at most `maxKeys`. */
    quotaUsage(policy: string, opts?: CallOptions & {
        prefix?: string;
        maxKeys?: number;
    }): Promise<QuotaUsage>;
}
