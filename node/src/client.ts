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

import { Connection, ServerInfo, Waiter } from './connection';
import { ClosedError, ConnectionError, ProtocolError, ServerError, ShoalError, TimeoutError, TooLargeError } from './errors';
import {
  encodeRequest,
  FRAME_HEADER_LEN,
  WireConcurrent,
  WireDecision,
  WireGet,
  WireQuotaUsage,
  WireReserve,
  WireSessionCreated,
  WireSessionInfo,
  WireSessionListEntry,
} from './protocol';
import { Concurrent, Decision, QuotaUsage, Reservation } from './ratelimit';
import { decodeValue, encodeValue } from './value';

/** The socket shoald listens on unless configured otherwise. */
export const DEFAULT_SOCKET_PATH = '/run/shoal/shoal.sock';

const VERSION = '0.1.0';

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
export type Acquired = { ready: true; waitedMs: number } | { ready: false; nextInMs: number };

/** An error is worth falling back on (daemon away, Redis away, timeout). */
function isRetryable(e: unknown): boolean {
  return e instanceof ShoalError && e.retryable;
}

/** Longest single sleep while another caller fills a key. */
const MAX_WAIT_ROUND_MS = 50;

/** Longest acquire wait by default. */
export const DEFAULT_ACQUIRE_MAX_WAIT_MS = 60_000;

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
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

function toBuffer(u: Uint8Array): Buffer {
  return Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

function getResult(r: WireGet): GetResult {
  return {
    hit: r.hit,
    value: r.hit && r.value != null ? toBuffer(r.value) : r.hit ? Buffer.alloc(0) : null,
    from: r.from ?? null,
    ttlMs: r.ttl_ms ?? null,
    lease: r.lease ?? null,
    waitMs: r.wait_ms ?? null,
  };
}

function hitValue(r: WireGet): Buffer | null {
  if (!r.hit) return null;
  return r.value == null ? Buffer.alloc(0) : toBuffer(r.value);
}

function keysOf(keys: string | readonly string[]): string[] {
  return typeof keys === 'string' ? [keys] : [...keys];
}

/** A call on its way: waiting for a slot or a connection, or sent. */
class Call implements Waiter {
  settled = false;
  holdsSlot = false;
  conn: Connection | null = null;
  timer: NodeJS.Timeout | undefined;
  onAbort: (() => void) | undefined;
  constructor(
    readonly client: Client,
    readonly id: number,
    readonly frame: Buffer,
    readonly signal: AbortSignal | undefined,
    private readonly res: (v: unknown) => void,
    private readonly rej: (e: unknown) => void,
  ) {}

  resolve(v: unknown): void {
    if (this.finish()) this.res(v);
  }

  reject(e: unknown): void {
    if (this.finish()) this.rej(e);
  }

  /** Ends the call's bookkeeping once; false if it had already ended. */
  private finish(): boolean {
    if (this.settled) return false;
    this.settled = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    if (this.onAbort !== undefined) this.signal?.removeEventListener('abort', this.onAbort);
    if (this.conn !== null) this.conn.forget(this.id);
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
export class Client {
  private readonly path: string;
  private readonly timeoutMs: number;
  private readonly connectTimeoutMs: number;
  private readonly backoffMin: number;
  private readonly backoffMax: number;
  private readonly maxInFlight: number;
  private readonly clientName: string;
  readonly leaseWaitMaxMs: number;

  private conn: Connection | null = null;
  private connecting: Promise<Connection> | null = null;
  private failures = 0;
  private retryAt = 0;
  private lastError: ConnectionError | ServerError | null = null;
  private closed = false;
  private nextId = 1;
  private inFlight = 0;
  private opened = 0;
  private readonly waiting: Call[] = [];
  private info: ServerInfo = { version: 0, server: '', node: '', maxFrame: 0 };

  private constructor(path: string, o: ClientOptions) {
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
  static async connect(path: string = DEFAULT_SOCKET_PATH, options: ClientOptions = {}): Promise<Client> {
    const c = new Client(path, options);
    await c.getConn();
    return c;
  }

  /** What the daemon said in the latest handshake: version, server name, node id, `maxFrame`. */
  get serverInfo(): ServerInfo {
    return { ...this.info };
  }

  /** How many connections this client has opened (1 plus reconnects). */
  get connects(): number {
    return this.opened;
  }

  /** Calls sent (or being connected) and not yet answered. */
  get inFlightCount(): number {
    return this.inFlight;
  }

  /** Calls waiting for an in-flight slot. */
  get queuedCount(): number {
    return this.waiting.filter((c) => !c.settled).length;
  }

  /** Whether a live connection is open now. */
  get connected(): boolean {
    return this.conn !== null && this.conn.alive;
  }

  /** Closes the connection. In-flight, queued and later calls fail with `ClosedError`. */
  close(): void {
    this.closed = true;
    const err = new ClosedError();
    for (const w of this.waiting.splice(0)) w.reject(err);
    this.conn?.kill(err);
    this.conn = null;
  }

  // ---- connection management ----

  private onDeath = (conn: Connection): void => {
    if (this.conn === conn) this.conn = null;
  };

  private getConn(): Connection | Promise<Connection> {
    if (this.closed) return Promise.reject(new ClosedError());
    if (this.conn !== null && this.conn.alive) return this.conn;
    if (this.connecting !== null) return this.connecting;
    if (this.lastError !== null && Date.now() < this.retryAt) {
      // A recent attempt failed: share its outcome rather than hammering a
      // daemon that just refused.
      const e = this.lastError;
      return Promise.reject(
        e instanceof ConnectionError ? new ConnectionError(e.message, false, { cause: e.cause }) : new ServerError(e.code, e.serverMessage),
      );
    }
    this.connecting = Connection.open(this.path, this.clientName, this.connectTimeoutMs, this.onDeath).then(
      (conn) => {
        this.connecting = null;
        if (this.closed) {
          conn.kill(new ClosedError());
          throw new ClosedError();
        }
        this.failures = 0;
        this.lastError = null;
        this.opened += 1;
        this.conn = conn;
        this.info = { ...conn.info };
        return conn;
      },
      (err: Error) => {
        this.connecting = null;
        this.failures += 1;
        this.retryAt = Date.now() + this.backoff();
        this.lastError = err instanceof ServerError ? err : err instanceof ConnectionError ? err : new ConnectionError(err.message, false, { cause: err });
        throw this.lastError;
      },
    );
    return this.connecting;
  }

  /** Delay before the next attempt: doubling from the minimum, capped, with jitter. */
  private backoff(): number {
    const exp = Math.min(20, Math.max(0, this.failures - 1));
    const base = Math.min(this.backoffMax, this.backoffMin * 2 ** exp);
    return base / 2 + (base / 2) * Math.random();
  }

  /** Frees an in-flight slot and starts the next waiting call. */
  releaseSlot(): void {
    this.inFlight -= 1;
    while (this.waiting.length > 0 && this.inFlight < this.maxInFlight) {
      const next = this.waiting.shift()!;
      if (!next.settled) this.dispatch(next);
    }
  }

  /**
   * Takes a slot for `call` (held until it settles, so the bound also covers a
   * burst waiting for a reconnect) and sends it, connecting first if needed.
   */
  private dispatch(call: Call): void {
    this.inFlight += 1;
    call.holdsSlot = true;
    this.route(call);
  }

  private route(call: Call): void {
    const c = this.getConn();
    if (c instanceof Connection) {
      this.sendOn(c, call);
      return;
    }
    c.then(
      (conn) => {
        if (!call.settled) this.sendOn(conn, call);
      },
      (err) => call.reject(err),
    );
  }

  private sendOn(conn: Connection, call: Call): void {
    const len = call.frame.length - FRAME_HEADER_LEN;
    if (len > conn.info.maxFrame) {
      // The server would answer frame_too_large and close the connection,
      // failing everyone else's calls too.
      call.reject(new TooLargeError(len, conn.info.maxFrame));
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
  call<T = unknown>(op: string, args?: Record<string, unknown>, opts?: CallOptions): Promise<T> {
    if (this.closed) return Promise.reject(new ClosedError());
    const signal = opts?.signal;
    if (signal?.aborted) return Promise.reject(signal.reason);
    const id = this.nextId;
    this.nextId = id >= 0xffff_fffe ? 1 : id + 1;
    let frame: Buffer;
    try {
      frame = encodeRequest(id, op, args);
    } catch (e) {
      return Promise.reject(e);
    }
    return new Promise<T>((resolve, reject) => {
      const call = new Call(this, id, frame, signal, resolve as (v: unknown) => void, reject);
      const ms = opts?.timeoutMs ?? this.timeoutMs;
      call.timer = setTimeout(() => call.reject(new TimeoutError(ms)), ms);
      if (signal !== undefined) {
        call.onAbort = () => call.reject(signal.reason);
        signal.addEventListener('abort', call.onAbort, { once: true });
      }
      if (this.inFlight < this.maxInFlight && this.waiting.length === 0) {
        this.dispatch(call);
      } else {
        this.waiting.push(call);
      }
    });
  }

  // ---- misc ----

  /** Round trip with no payload: checks the daemon is up and answering. */
  async ping(opts?: CallOptions): Promise<void> {
    await this.call('ping', undefined, opts);
  }

  /** The daemon's counters (a free-form map). */
  stats(opts?: CallOptions): Promise<Record<string, number>> {
    return this.call('stats', undefined, opts);
  }

  // ---- cache, raw bytes ----

  /** The full `cache.get` result. With `lease`, a miss carries a fill lease or `waitMs` (see `getOrLoad`). */
  getFull(key: string, opts?: CallOptions & { lease?: boolean }): Promise<GetResult> {
    // `.then` rather than `async`: an L1 hit is a few microseconds, and each
    // async layer costs a share of that.
    return this.call<WireGet>('cache.get', { key, lease: opts?.lease ? true : undefined }, opts).then(getResult);
  }

  /** The bytes of `key`, or null on a miss. */
  getBytes(key: string, opts?: CallOptions): Promise<Buffer | null> {
    return this.call<WireGet>('cache.get', { key }, opts).then(hitValue);
  }

  /** The full `cache.get` results for `keys`, in order. */
  async mgetFull(keys: readonly string[], opts?: CallOptions): Promise<GetResult[]> {
    if (keys.length === 0) return []; // the protocol requires a non-empty list
    const rs = await this.call<WireGet[]>('cache.mget', { keys: [...keys] }, opts);
    if (!Array.isArray(rs) || rs.length !== keys.length) {
      throw new ProtocolError(`cache.mget of ${keys.length} keys answered ${Array.isArray(rs) ? rs.length : 'no'} results`);
    }
    return rs.map(getResult);
  }

  /** The bytes of `keys`, in order, null for misses. */
  async mgetBytes(keys: readonly string[], opts?: CallOptions): Promise<(Buffer | null)[]> {
    return (await this.mgetFull(keys, opts)).map((r) => r.value);
  }

  /**
   * Stores `value` under `key` for the whole fleet. Resolves with whether it was
   * stored: false only for a fill whose lease was lost (invalidated, expired, replaced).
   */
  async setBytes(key: string, value: Uint8Array, opts?: SetOptions): Promise<boolean> {
    const r = await this.call<{ stored: boolean }>(
      'cache.set',
      {
        key,
        value,
        ttl_ms: opts?.ttlMs,
        lease: opts?.lease,
        tags: opts?.tags !== undefined && opts.tags.length > 0 ? opts.tags : undefined,
      },
      opts,
    );
    return r.stored;
  }

  /** Deletes `keys` fleet-wide. Resolves with the invalidation log position. */
  async invalidate(keys: string | readonly string[], opts?: CallOptions): Promise<string> {
    const r = await this.call<{ seq: string }>('cache.invalidate', { keys: keysOf(keys) }, opts);
    return r.seq;
  }

  /** Deletes every key tagged with any of `tags`. */
  async invalidateTags(tags: string | readonly string[], opts?: CallOptions): Promise<{ seq: string; keys: number }> {
    return this.call<{ seq: string; keys: number }>('cache.invalidate_tags', { tags: keysOf(tags) }, opts);
  }

  // ---- cache, typed (MessagePack, readable by the Rust and Python typed APIs) ----

  /** The value of `key` decoded from MessagePack, or null on a miss. */
  get<T = unknown>(key: string, opts?: CallOptions): Promise<T | null> {
    return this.getBytes(key, opts).then((b) => (b === null ? null : decodeValue<T>(b)));
  }

  /** Stores `value` encoded as MessagePack under `key`. */
  set(key: string, value: unknown, opts?: SetOptions): Promise<boolean> {
    let bytes: Buffer;
    try {
      bytes = encodeValue(value);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.setBytes(key, bytes, opts);
  }

  /** The values of `keys` decoded from MessagePack, in order, null for misses. */
  async mget<T = unknown>(keys: readonly string[], opts?: CallOptions): Promise<(T | null)[]> {
    return (await this.mgetBytes(keys, opts)).map((b) => (b === null ? null : decodeValue<T>(b)));
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
  getOrLoad<T>(key: string, loader: () => T | Promise<T>, opts?: LoadOptions): Promise<T> {
    return this.load(key, loader, encodeValue, (b) => decodeValue<T>(b), opts);
  }

  /** `getOrLoad` with raw bytes. */
  getOrLoadBytes(key: string, loader: () => Uint8Array | Promise<Uint8Array>, opts?: LoadOptions): Promise<Uint8Array> {
    return this.load(key, loader, (v) => v, (b) => b, opts);
  }

  private async load<T>(
    key: string,
    loader: () => T | Promise<T>,
    encode: (v: T) => Uint8Array,
    decode: (b: Buffer) => T,
    opts?: LoadOptions,
  ): Promise<T> {
    const giveUpAt = Date.now() + this.leaseWaitMaxMs;
    for (;;) {
      let r: GetResult;
      try {
        r = await this.getFull(key, { ...opts, lease: true });
      } catch (e) {
        if (isRetryable(e)) return loader();
        throw e;
      }
      if (r.hit) return decode(r.value ?? Buffer.alloc(0));
      if (r.lease !== null) {
        const value = await loader();
        try {
          await this.setBytes(key, encode(value), { ...opts, lease: r.lease });
        } catch (e) {
          // Other callers stop waiting after leaseWaitMaxMs; the value we hold is
          // good, so a failed fill costs only a later miss. Codec and bad-request
          // errors are the caller's to see.
          if (!isRetryable(e)) throw e;
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
  sessionCreate(user: string, data: unknown = {}, opts?: SessionOptions): Promise<SessionCreated> {
    let bytes: Buffer;
    try {
      bytes = encodeValue(data);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.sessionCreateBytes(user, bytes, opts);
  }

  /** `sessionCreate` with data you encoded yourself. */
  async sessionCreateBytes(user: string, data: Uint8Array, opts?: SessionOptions): Promise<SessionCreated> {
    const r = await this.call<WireSessionCreated>(
      'session.create',
      { user, data, idle_ttl_ms: opts?.idleTtlMs, absolute_ttl_ms: opts?.absoluteTtlMs },
      opts,
    );
    return { token: r.token, expiresAtMs: r.expires_at_ms, absoluteExpiresAtMs: r.absolute_expires_at_ms };
  }

  /**
   * Validates `token` and (unless `touch: false`) slides its idle expiry; null
   * when the session is unknown, expired or revoked. Data is decoded from MessagePack.
   */
  async sessionGet<T = unknown>(token: string, opts?: CallOptions & { touch?: boolean }): Promise<Session<T> | null> {
    const s = await this.sessionGetBytes(token, opts);
    return s === null ? null : { ...s, data: decodeValue<T>(s.data) };
  }

  /** `sessionGet` with the data left as bytes. */
  async sessionGetBytes(token: string, opts?: CallOptions & { touch?: boolean }): Promise<Session<Buffer> | null> {
    const r = await notFound(
      this.call<WireSessionInfo>('session.get', { token, touch: opts?.touch === false ? false : undefined }, opts),
    );
    if (r === null) return null;
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
  sessionUpdate(token: string, data: unknown, opts?: CallOptions): Promise<boolean> {
    let bytes: Buffer;
    try {
      bytes = encodeValue(data);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.sessionUpdateBytes(token, bytes, opts);
  }

  /** `sessionUpdate` with data you encoded yourself. */
  async sessionUpdateBytes(token: string, data: Uint8Array, opts?: CallOptions): Promise<boolean> {
    const r = await this.call<{ updated: boolean }>('session.update', { token, data }, opts);
    return r.updated;
  }

  /**
   * Issues a new token for the session (same user, data and absolute expiry) and
   * revokes the old one everywhere: call it on privilege changes such as login.
   * Null when the session is gone.
   */
  async sessionRotate(token: string, opts?: CallOptions): Promise<string | null> {
    const r = await notFound(this.call<{ token: string }>('session.rotate', { token }, opts));
    return r === null ? null : r.token;
  }

  /** Revokes the session of `token` on every daemon (logout); false when it did not exist. */
  async sessionRevoke(token: string, opts?: CallOptions): Promise<boolean> {
    const r = await this.call<{ revoked: boolean }>('session.revoke', { token }, opts);
    return r.revoked;
  }

  /** Revokes a session by the id `sessionList` shows. */
  async sessionRevokeId(sessionId: string, opts?: CallOptions): Promise<boolean> {
    const r = await this.call<{ revoked: boolean }>('session.revoke', { session_id: sessionId }, opts);
    return r.revoked;
  }

  /** Revokes every session of `user` ("sign out everywhere"); resolves with how many there were. */
  async sessionRevokeUser(user: string, opts?: CallOptions): Promise<number> {
    const r = await this.call<{ revoked: number }>('session.revoke_user', { user }, opts);
    return r.revoked;
  }

  /** The live sessions of `user`, by session id (never the token). */
  async sessionList(user: string, opts?: CallOptions): Promise<SessionListEntry[]> {
    const r = await this.call<WireSessionListEntry[]>('session.list', { user }, opts);
    return r.map((e) => ({
      sessionId: e.session_id,
      createdAtMs: e.created_at_ms,
      lastSeenMs: e.last_seen_ms,
      expiresAtMs: e.expires_at_ms,
    }));
  }

  // ---- rate limits and quotas ----

  /** `ratelimit.check`: one request (or `cost`) against `policy` for `key`. */
  async check(policy: string, key: string, opts?: CheckOptions): Promise<Decision> {
    const cost = opts?.cost;
    const d = await this.call<WireDecision>('ratelimit.check', { policy, key, cost: cost === 1 ? undefined : cost }, opts);
    return new Decision(policy, d);
  }

  /** `ratelimit.peek`: what a check would answer, consuming nothing. */
  async peek(policy: string, key: string, opts?: CallOptions): Promise<Decision> {
    const d = await this.call<WireDecision>('ratelimit.peek', { policy, key }, opts);
    return new Decision(policy, d);
  }

  /** `ratelimit.reset`: forgets the key's state; true when there was some. */
  async resetLimit(policy: string, key: string, opts?: CallOptions): Promise<boolean> {
    const r = await this.call<{ reset: boolean }>('ratelimit.reset', { policy, key }, opts);
    return r.reset;
  }

  /** `ratelimit.reserve`: books the next slot if at most `maxWaitMs` away; sleep `waitMs`, then go. */
  async reserve(policy: string, key: string, opts?: ReserveOptions): Promise<Reservation> {
    const cost = opts?.cost;
    const maxWait = Math.max(1, Math.ceil(opts?.maxWaitMs ?? DEFAULT_ACQUIRE_MAX_WAIT_MS));
    const r = await this.call<WireReserve>(
      'ratelimit.reserve',
      { policy, key, cost: cost === 1 ? undefined : cost, max_wait_ms: maxWait },
      opts,
    );
    return { granted: r.granted, waitMs: r.wait_ms };
  }

  /**
   * Waits for the next slot of `policy` for `key` (at most `maxWaitMs`): books it,
   * sleeps until it comes, resolves. Spaces outbound calls at the policy's rate
   * instead of failing bursts.
   */
  async acquire(policy: string, key: string, opts?: ReserveOptions): Promise<Acquired> {
    const r = await this.reserve(policy, key, opts);
    if (!r.granted) return { ready: false, nextInMs: r.waitMs };
    if (r.waitMs > 0) await sleep(r.waitMs, opts?.signal);
    return { ready: true, waitedMs: r.waitMs };
  }

  /** `ratelimit.acquire_concurrent`: one in-flight slot of a `concurrency` policy, as a lease. */
  async acquireConcurrent(policy: string, key: string, opts?: CallOptions & { leaseMs?: number }): Promise<Concurrent> {
    const r = await this.call<WireConcurrent>('ratelimit.acquire_concurrent', { policy, key, lease_ms: opts?.leaseMs }, opts);
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
  async release(policy: string, key: string, lease: string, opts?: CallOptions): Promise<boolean> {
    const r = await this.call<{ released: boolean }>('ratelimit.release', { policy, key, lease }, opts);
    return r.released;
  }

  /** `ratelimit.set_override`: gives `key` its own numbers fleet-wide; true when it replaced one. */
  async setOverride(policy: string, key: string, limit: number, opts?: CallOptions & { burst?: number }): Promise<boolean> {
    const r = await this.call<{ replaced: boolean }>('ratelimit.set_override', { policy, key, limit, burst: opts?.burst }, opts);
    return r.replaced;
  }

  /** `ratelimit.clear_override`: true when there was one. */
  async clearOverride(policy: string, key: string, opts?: CallOptions): Promise<boolean> {
    const r = await this.call<{ cleared: boolean }>('ratelimit.clear_override', { policy, key }, opts);
    return r.cleared;
  }

  /** `quota.usage`: current usage of a policy's keys (starting with `prefix`), at most `maxKeys`. */
  async quotaUsage(policy: string, opts?: CallOptions & { prefix?: string; maxKeys?: number }): Promise<QuotaUsage> {
    const r = await this.call<WireQuotaUsage>('quota.usage', { policy, prefix: opts?.prefix, max_keys: opts?.maxKeys }, opts);
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

/** `not_found` is an answer here, not an error. */
async function notFound<T>(p: Promise<T>): Promise<T | null> {
  try {
    return await p;
  } catch (e) {
    if (e instanceof ServerError && e.code === 'not_found') return null;
    throw e;
  }
}
