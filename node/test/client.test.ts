/**
 * End-to-end tests of the Node client against a real shoald and redis-server:
 * every op, bad input, timeouts, cancellation, the in-flight bound, reconnects,
 * and fill leases across two daemons.
 */

import * as assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import {
  Client,
  ClosedError,
  ConnectionError,
  Decision,
  ServerError,
  ShoalError,
  TimeoutError,
  TooLargeError,
} from '../src/index';
import { Daemon, Redis, tempDir, until } from './harness';

let redis: Redis;
let d1: Daemon;
let d2: Daemon;
let c: Client;
let dir: string;

before(async () => {
  redis = await Redis.start();
  dir = tempDir();
  d1 = await Daemon.start(redis, dir, 'n1', { socket: 'max_frame = "64KiB"' });
  d2 = await Daemon.start(redis, dir, 'n2');
  c = await d1.client();
});

after(async () => {
  c?.close();
  await d1?.kill();
  await d2?.kill();
  await redis?.stop();
});

/** Rejects with the error `p` rejects with, or fails. */
async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  assert.fail('expected a rejection');
}

describe('handshake and misc', () => {
  test('hello reports the server, ping and stats answer', async () => {
    const info = c.serverInfo;
    assert.equal(info.version, 1);
    assert.equal(info.node, 'n1');
    assert.equal(info.maxFrame, 64 * 1024);
    assert.match(info.server, /shoald/);
    await c.ping();
    const s = await c.stats();
    assert.equal(s.ready, 1);
    assert.equal(typeof s.requests, 'number');
  });

  test('a missing socket is a retryable ConnectionError with code unavailable', async () => {
    const e = await rejection(Client.connect(`${dir}/nobody.sock`));
    assert.ok(e instanceof ConnectionError, String(e));
    assert.equal(e.code, 'unavailable');
    assert.equal(e.retryable, true);
  });

  test('raw call reaches any op and unknown ops are unknown_op', async () => {
    assert.equal(await c.call('ping'), 'pong');
    // Arguments cannot replace the envelope's id (the answer would be lost).
    assert.equal(await c.call('ping', { id: 987654, op: 'nope' }, { timeoutMs: 2000 }), 'pong');
    const e = await rejection(c.call('no.such.op'));
    assert.ok(e instanceof ServerError);
    assert.equal(e.code, 'unknown_op');
    assert.equal(e.retryable, false);
  });
});

describe('cache', () => {
  test('typed set/get round-trips MessagePack values', async () => {
    const v = { name: 'alice', age: 31, tags: ['a', 'b'], nested: { ok: true }, none: null };
    assert.equal(await c.set('t:user', v, { ttlMs: 60_000 }), true);
    assert.deepEqual(await c.get('t:user'), v);
    assert.equal(await c.get('t:missing'), null);
  });

  test('bytes are opaque and come back from L1 on the second read', async () => {
    const bytes = Buffer.from([0, 1, 2, 250, 255]);
    await c.setBytes('b:k', bytes);
    const first = await c.getFull('b:k');
    assert.equal(first.hit, true);
    assert.deepEqual(first.value, bytes);
    const second = await c.getFull('b:k');
    assert.equal(second.from, 'l1');
    assert.ok(second.ttlMs !== null && second.ttlMs > 0);
    assert.deepEqual(await c.getBytes('b:k'), bytes);
    // An empty value is a hit, not a miss.
    await c.setBytes('b:empty', new Uint8Array(0));
    assert.deepEqual(await c.getBytes('b:empty'), Buffer.alloc(0));
  });

  test('mget answers in order with nulls for misses', async () => {
    await c.set('m:1', 1);
    await c.set('m:3', 'three');
    assert.deepEqual(await c.mget(['m:1', 'm:2', 'm:3']), [1, null, 'three']);
    const full = await c.mgetFull(['m:2']);
    assert.equal(full[0].hit, false);
    assert.deepEqual(await c.mget([]), []);
  });

  test('invalidate is seen by the other daemon; tags invalidate their keys', async () => {
    const other = await d2.client();
    try {
      await c.set('i:k', 'v1');
      assert.equal(await other.get('i:k'), 'v1');
      assert.equal(await other.get('i:k'), 'v1'); // now in n2's L1
      const seq = await c.invalidate('i:k');
      assert.match(seq, /^\d+-\d+$/);
      await until('n2 drops the invalidated key', 5000, async () => ((await other.get('i:k')) === null ? true : undefined));

      await c.set('tg:a', 1, { tags: ['team:1'] });
      await c.set('tg:b', 2, { tags: ['team:1', 'x'] });
      await c.set('tg:c', 3, { tags: ['team:2'] });
      const r = await other.invalidateTags(['team:1']);
      assert.equal(r.keys, 2);
      // The daemon that answered serves the new state at once; the other one as
      // soon as it has applied the change.
      assert.deepEqual(await other.mget(['tg:a', 'tg:b', 'tg:c']), [null, null, 3]);
      await until('n1 applies the tag invalidation', 5000, async () => {
        const v = await c.mget(['tg:a', 'tg:b', 'tg:c']);
        return v[0] === null && v[1] === null && v[2] === 3 ? true : undefined;
      });
      await c.invalidate(['tg:c', 'i:k']);
      assert.equal(await c.get('tg:c'), null);
    } finally {
      other.close();
    }
  });

  test('a fill lease is granted once, and a fill after an invalidation is refused', async () => {
    const first = await c.getFull('l:k', { lease: true });
    assert.equal(first.hit, false);
    assert.ok(first.lease !== null);
    const second = await c.getFull('l:k', { lease: true });
    assert.equal(second.lease, null);
    assert.ok(second.waitMs !== null && second.waitMs > 0);
    await c.invalidate('l:k');
    assert.equal(await c.set('l:k', 'stale', { lease: first.lease }), false);
    const again = await c.getFull('l:k', { lease: true });
    assert.ok(again.lease !== null);
    assert.equal(await c.set('l:k', 'fresh', { lease: again.lease }), true);
    assert.equal(await c.get('l:k'), 'fresh');
  });

  test('getOrLoad loads once, then serves the cached value; loader errors propagate', async () => {
    let calls = 0;
    const load = async () => {
      calls += 1;
      return { row: 7 };
    };
    assert.deepEqual(await c.getOrLoad('gol:k', load, { ttlMs: 60_000 }), { row: 7 });
    assert.deepEqual(await c.getOrLoad('gol:k', load), { row: 7 });
    assert.equal(calls, 1);
    const boom = new Error('db down');
    const e = await rejection(
      c.getOrLoad('gol:err', () => {
        throw boom;
      }),
    );
    assert.equal(e, boom);
    const bytes = await c.getOrLoadBytes('gol:bytes', () => Buffer.from('raw'));
    assert.deepEqual(Buffer.from(bytes), Buffer.from('raw'));
    assert.deepEqual(await c.getBytes('gol:bytes'), Buffer.from('raw'));
  });

  test('getOrLoad runs one loader across two daemons', async () => {
    // A generous wait, so a slow machine cannot make a waiter give up and load.
    const mine = await d1.client({ leaseWaitMaxMs: 10_000 });
    const other = await d2.client({ leaseWaitMaxMs: 10_000 });
    try {
      let loads = 0;
      const loader = async () => {
        loads += 1;
        await new Promise((r) => setTimeout(r, 150));
        return { loadedBy: loads };
      };
      const results = await Promise.all([
        mine.getOrLoad('fleet:k', loader),
        other.getOrLoad('fleet:k', loader),
        mine.getOrLoad('fleet:k', loader),
        other.getOrLoad('fleet:k', loader),
      ]);
      assert.equal(loads, 1, 'one loader for the whole fleet');
      for (const r of results) assert.deepEqual(r, { loadedBy: 1 });
    } finally {
      mine.close();
      other.close();
    }
  });

  test('getOrLoad falls back to the loader when the daemon is unreachable', async () => {
    const lonely = await d2.client({ reconnectBackoffMinMs: 10, reconnectBackoffMaxMs: 20 });
    await d2.stop();
    try {
      assert.equal(await lonely.getOrLoad('down:k', () => 'from-db'), 'from-db');
    } finally {
      lonely.close();
      await d2.restart();
    }
  });
});

describe('sessions', () => {
  test('create, get, update, rotate, list, revoke by token, id and user', async () => {
    const other = await d2.client();
    try {
      const s = await c.sessionCreate('user-1', { role: 'admin' }, { idleTtlMs: 60_000, absoluteTtlMs: 3_600_000 });
      assert.ok(s.token.length >= 43);
      assert.ok(s.absoluteExpiresAtMs > Date.now());
      const got = await other.sessionGet<{ role: string }>(s.token);
      assert.ok(got !== null);
      assert.equal(got.user, 'user-1');
      assert.deepEqual(got.data, { role: 'admin' });
      assert.ok(got.expiresAtMs <= got.absoluteExpiresAtMs);
      assert.ok((await c.sessionGet(s.token, { touch: false })) !== null);

      assert.equal(await c.sessionUpdate(s.token, { role: 'viewer' }), true);
      await until('update seen by n2', 5000, async () => {
        const g = await other.sessionGet<{ role: string }>(s.token);
        return g?.data.role === 'viewer' ? true : undefined;
      });

      const rotated = await c.sessionRotate(s.token);
      assert.ok(rotated !== null && rotated !== s.token);
      assert.equal(await c.sessionGet(s.token), null, 'the old token is revoked');
      assert.deepEqual((await c.sessionGet(rotated))?.data, { role: 'viewer' });
      assert.equal(await c.sessionRotate(s.token), null);

      const second = await c.sessionCreateBytes('user-1', Buffer.from([1, 2, 3]));
      assert.deepEqual((await c.sessionGetBytes(second.token))?.data, Buffer.from([1, 2, 3]));
      const list = await c.sessionList('user-1');
      assert.equal(list.length, 2);
      for (const e of list) {
        assert.equal(typeof e.sessionId, 'string');
        assert.ok(e.createdAtMs > 0 && e.expiresAtMs > e.createdAtMs);
      }

      assert.equal(await c.sessionRevoke(rotated), true);
      assert.equal(await c.sessionRevoke(rotated), false);
      await until('revocation seen by n2', 5000, async () => ((await other.sessionGet(rotated)) === null ? true : undefined));
      assert.equal(await c.sessionUpdate(rotated, {}), false);

      const left = await c.sessionList('user-1');
      assert.equal(left.length, 1);
      assert.equal(await c.sessionRevokeId(left[0].sessionId), true);
      assert.equal(await c.sessionGet(second.token), null);

      await c.sessionCreate('user-2', {});
      await c.sessionCreate('user-2', {});
      assert.equal(await other.sessionRevokeUser('user-2'), 2);
      assert.deepEqual(await c.sessionList('user-2'), []);
    } finally {
      other.close();
    }
  });

  test('a malformed token is simply not found', async () => {
    assert.equal(await c.sessionGet('not-a-token'), null);
  });
});

describe('rate limits', () => {
  test('check counts down, denies with headers, peek and reset', async () => {
    const key = `k-${Date.now()}`;
    const d1_ = await c.check('api', key);
    assert.ok(d1_ instanceof Decision);
    assert.equal(d1_.allowed, true);
    assert.equal(d1_.limit, 3);
    assert.equal(d1_.remaining, 2);
    assert.equal(d1_.windowMs, 60_000);
    await c.check('api', key, { cost: 2 });
    const denied = await c.check('api', key);
    assert.equal(denied.allowed, false);
    assert.ok(denied.retryAfterMs > 0);
    const h = denied.headers();
    assert.equal(h['ratelimit-policy'], '"api";q=3;w=60');
    assert.match(h['ratelimit'], /^"api";r=0;t=\d+$/);
    assert.equal(h['x-ratelimit-limit'], '3');
    assert.equal(h['x-ratelimit-remaining'], '0');
    assert.ok(Number(h['retry-after']) >= 1);
    const p = await c.peek('api', key);
    assert.equal(p.remaining, 0);
    assert.equal(await c.resetLimit('api', key), true);
    assert.equal((await c.peek('api', key)).remaining, 3);
    assert.equal(await c.resetLimit('api', key), false);
  });

  test('a cost the policy can never allow is bad_request; an unknown policy is unknown_policy', async () => {
    const e = await rejection(c.check('api', 'x', { cost: 4 }));
    assert.ok(e instanceof ServerError);
    assert.equal(e.code, 'bad_request');
    const u = await rejection(c.check('nope', 'x'));
    assert.ok(u instanceof ServerError);
    assert.equal(u.code, 'unknown_policy');
    assert.equal(u.retryable, false);
  });

  test('reserve books slots and acquire waits for them', async () => {
    const key = `v-${Date.now()}`;
    // Policy "slow": one slot per 10 s, so the second booking waits whatever the machine's speed.
    assert.deepEqual(await c.reserve('slow', key, { maxWaitMs: 20_000 }), { granted: true, waitMs: 0 });
    const second = await c.reserve('slow', key, { maxWaitMs: 20_000 });
    assert.equal(second.granted, true);
    assert.ok(second.waitMs > 0 && second.waitMs <= 10_000, `waitMs ${second.waitMs}`);
    const tooFar = await c.reserve('slow', key, { maxWaitMs: 1 });
    assert.equal(tooFar.granted, false);
    assert.ok(tooFar.waitMs > 10_000, 'the next free slot is after the booked one');
    const far = await c.acquire('slow', key, { maxWaitMs: 1 });
    assert.equal(far.ready, false);
    if (!far.ready) assert.ok(far.nextInMs > 10_000, `next in ${far.nextInMs}`);

    // Policy "vendor": 10 per second; acquire sleeps until its slot.
    const vkey = `${key}-vendor`;
    assert.equal((await c.acquire('vendor', vkey, { maxWaitMs: 1000 })).ready, true);
    const started = Date.now();
    const acq = await c.acquire('vendor', vkey, { maxWaitMs: 1000 });
    assert.equal(acq.ready, true);
    if (acq.ready) {
      assert.ok(acq.waitedMs <= 100, `waited ${acq.waitedMs}`);
      assert.ok(Date.now() - started >= acq.waitedMs - 5, 'acquire slept until the slot');
    }
  });

  test('concurrency leases are bounded and released', async () => {
    const key = `c-${Date.now()}`;
    const a = await c.acquireConcurrent('slots', key);
    const b = await c.acquireConcurrent('slots', key, { leaseMs: 2000 });
    assert.equal(a.acquired && b.acquired, true);
    assert.equal(b.leaseMs, 2000);
    const third = await c.acquireConcurrent('slots', key);
    assert.equal(third.acquired, false);
    assert.equal(third.lease, null);
    assert.ok(third.retryAfterMs > 0);
    assert.equal(await c.release('slots', key, a.lease!), true);
    assert.equal(await c.release('slots', key, a.lease!), false);
    assert.equal((await c.acquireConcurrent('slots', key)).acquired, true);
  });

  test('overrides change a key fleet-wide; quota usage lists keys', async () => {
    const key = `tenant-${Date.now()}`;
    assert.equal(await c.setOverride('api', key, 10), false);
    assert.equal(await c.setOverride('api', key, 5, { burst: 5 }), true);
    assert.equal((await c.check('api', key)).limit, 5);
    assert.equal(await c.clearOverride('api', key), true);
    assert.equal(await c.clearOverride('api', key), false);
    await until('override cleared', 5000, async () => ((await c.peek('api', key)).limit === 3 ? true : undefined));

    const u = await c.quotaUsage('api', { prefix: key, maxKeys: 10 });
    assert.equal(u.policy, 'api');
    assert.equal(u.algorithm, 'fixed_window');
    assert.equal(u.limit, 3);
    assert.equal(u.windowMs, 60_000);
    assert.equal(u.truncated, false);
    assert.equal(u.keys.length, 1);
    assert.equal(u.keys[0].key, key);
    assert.equal(u.keys[0].used, 1);
  });
});

describe('bad input keeps the connection', () => {
  test('a key too long is bad_request', async () => {
    const before = c.connects;
    const e = await rejection(c.get('k'.repeat(5000)));
    assert.ok(e instanceof ServerError);
    assert.equal(e.code, 'bad_request');
    assert.equal(e.retryable, false);
    await c.ping();
    assert.equal(c.connects, before, 'no reconnect');
  });

  test('a value above max_frame is refused before sending with frame_too_large', async () => {
    const before = c.connects;
    const e = await rejection(c.setBytes('big', Buffer.alloc(100 * 1024)));
    assert.ok(e instanceof TooLargeError);
    assert.ok(e instanceof ShoalError);
    assert.equal(e.code, 'frame_too_large');
    assert.equal(e.retryable, false);
    await c.ping();
    assert.equal(c.connects, before);
  });

  test('a result above max_frame is frame_too_large from the server', async () => {
    const before = c.connects;
    await c.setBytes('half:1', Buffer.alloc(40 * 1024, 1));
    await c.setBytes('half:2', Buffer.alloc(40 * 1024, 2));
    const e = await rejection(c.mgetBytes(['half:1', 'half:2']));
    assert.ok(e instanceof ServerError, String(e));
    assert.equal(e.code, 'frame_too_large');
    assert.equal((await c.getBytes('half:1'))?.length, 40 * 1024);
    assert.equal(c.connects, before);
  });

  test('a zero duration is bad_request', async () => {
    const e = await rejection(c.set('z', 1, { ttlMs: 0 }));
    assert.ok(e instanceof ServerError);
    assert.equal(e.code, 'bad_request');
  });
});

describe('timeouts, cancellation, bounds, reconnects', () => {
  test('a call times out while the daemon is stalled; the connection carries on', async () => {
    const before = c.connects;
    await d1.pause();
    try {
      const started = Date.now();
      const e = await rejection(c.ping({ timeoutMs: 100 }));
      assert.ok(e instanceof TimeoutError);
      assert.equal(e.code, 'timeout');
      assert.equal(e.retryable, true);
      assert.ok(Date.now() - started >= 95);
    } finally {
      d1.resume();
    }
    await c.ping();
    assert.equal(c.connects, before);
  });

  test('aborting one call does not disturb the others', async () => {
    const before = c.connects;
    await c.set('ab:k', 'v');
    await d1.pause();
    const ac = new AbortController();
    let pending: Promise<unknown>;
    let other: Promise<unknown>;
    try {
      pending = c.get('ab:k', { signal: ac.signal });
      other = c.get('ab:k');
      ac.abort();
      const e = await rejection(pending);
      assert.ok(e instanceof Error);
      assert.equal(e.name, 'AbortError');
    } finally {
      d1.resume();
    }
    assert.equal(await other, 'v');
    assert.equal(c.connects, before);
    // Already aborted: rejected before anything is sent.
    const e2 = await rejection(c.ping({ signal: AbortSignal.abort() }));
    assert.equal((e2 as Error).name, 'AbortError');
  });

  test('calls beyond maxInFlight wait in line', async () => {
    const small = await d1.client({ maxInFlight: 2 });
    await d1.pause();
    let all: Promise<void[]>;
    try {
      all = Promise.all([1, 2, 3, 4, 5].map(() => small.ping()));
      assert.equal(small.inFlightCount, 2);
      assert.equal(small.queuedCount, 3);
    } finally {
      d1.resume();
    }
    await all;
    assert.equal(small.inFlightCount, 0);
    small.close();
  });

  test('the client reconnects after a daemon restart', async () => {
    const rc = await d1.client({ reconnectBackoffMinMs: 10, reconnectBackoffMaxMs: 50 });
    await rc.set('rs:k', 'kept in redis');
    await d1.stop();
    const e = await rejection(rc.ping());
    assert.ok(e instanceof ConnectionError, String(e));
    assert.equal(e.retryable, true);
    await d1.restart();
    await until('reconnected', 5000, async () => {
      await rc.ping();
      return true;
    });
    assert.equal(await rc.get('rs:k'), 'kept in redis');
    assert.equal(rc.connects, 2);
    rc.close();
    // The shared client also finds its way back.
    await until('shared client reconnected', 5000, async () => {
      await c.ping();
      return true;
    });
  });

  test('after a failed connect, calls fail fast until the backoff has passed', async () => {
    const slow = await d2.client({ reconnectBackoffMinMs: 60_000, reconnectBackoffMaxMs: 60_000 });
    await d2.stop();
    const first = await rejection(slow.ping());
    assert.ok(first instanceof ConnectionError);
    await d2.restart();
    // The daemon is back, but the next attempt is 30-60 s away: no connect now.
    const started = Date.now();
    const second = await rejection(slow.ping());
    assert.ok(second instanceof ConnectionError, String(second));
    assert.equal(second.retryable, true);
    assert.ok(Date.now() - started < 500, 'failed at once');
    assert.equal(slow.connects, 1);
    slow.close();
  });

  test('close fails later calls with ClosedError', async () => {
    const x = await d1.client();
    x.close();
    const e = await rejection(x.ping());
    assert.ok(e instanceof ClosedError);
    assert.equal(e.retryable, false);
  });
});
