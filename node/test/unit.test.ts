/**
 * Tests without a daemon: the typed-value fixture shared with the Rust client
 * (exact rmp-serde bytes), the session cookie (the Rust `SessionCookie`'s
 * strings), and `Decision.headers()` (the Rust `Decision::headers`' strings).
 */

import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, test } from 'node:test';

import { Client, CodecError, Decision, decodeValue, encodeValue, rateLimit, session, SessionCookie } from '../src/index';

/** The value `client/tests/typed_value_fixture.rs` encodes, as JavaScript sees it. */
const PROFILE = {
  id: 42,
  name: 'alice',
  email: 'alice@example.com',
  nickname: null,
  roles: ['admin', 'ops'],
  score: 0.5,
  active: true,
  limits: { api: 100, burst: 70000 },
  avatar: new Uint8Array([0, 1, 2, 255]),
  plan: 'Team',
  created_at_ms: 1_700_000_000_123,
  offset: -7,
  pair: ['alice', 31],
};

describe('typed values interoperate with rmp-serde', () => {
  // node/build/test -> node/test/fixtures
  const fixture = path.join(__dirname, '..', '..', 'test', 'fixtures', 'rmp-serde-profile.hex');
  const hex = fs.readFileSync(fixture, 'utf8').trim();

  test('encoding a value gives the bytes rmp-serde produced', () => {
    assert.equal(encodeValue(PROFILE).toString('hex'), hex);
  });

  test('decoding rmp-serde bytes gives the value', () => {
    const v = decodeValue<typeof PROFILE>(Buffer.from(hex, 'hex'));
    // bin decodes to a view of the input: a Buffer here (a Buffer is a Uint8Array).
    assert.ok(v.avatar instanceof Uint8Array);
    assert.deepEqual({ ...v, avatar: new Uint8Array(v.avatar) }, PROFILE);
    assert.deepEqual(decodeValue(new Uint8Array(Buffer.from(hex, 'hex'))), PROFILE);
  });

  test('bytes that are not MessagePack are a CodecError', () => {
    const e = (() => {
      try {
        decodeValue(Buffer.from([0xc1]));
      } catch (err) {
        return err;
      }
      return null;
    })();
    assert.ok(e instanceof CodecError);
    assert.equal(e.code, 'codec');
    assert.equal(e.retryable, false);
  });
});

const TOKEN = 'q3QzJ8Y2rX0nVb1mK9wT5eH7uA4cL6dF2gP8sZ1oR3i';

describe('SessionCookie mirrors the Rust cookie', () => {
  test('every attribute, Max-Age from the absolute expiry rounded up', () => {
    const c = new SessionCookie();
    assert.equal(
      c.setCookie(TOKEN, 1_000_000 + 3_600_000, 1_000_000),
      `__Host-session=${TOKEN}; Max-Age=3600; Path=/; Secure; HttpOnly; SameSite=Lax`,
    );
    assert.match(c.setCookie(TOKEN, 1_001, 0), /Max-Age=2;/);
    assert.match(c.setCookie(TOKEN, 5, 10), /Max-Age=0;/);
  });

  test('bad tokens give a clearing cookie; bad names are refused', () => {
    const c = new SessionCookie();
    assert.equal(c.setCookie('a; Domain=evil', 10, 0), c.clearCookie());
    assert.equal(c.setCookie('x\r\nSet-Cookie: y', Number.MAX_SAFE_INTEGER), c.clearCookie());
    assert.doesNotThrow(() => new SessionCookie('sid'));
    assert.throws(() => new SessionCookie('bad name'), TypeError);
    assert.throws(() => new SessionCookie('a=b'), TypeError);
    assert.throws(() => new SessionCookie(''), TypeError);
    assert.equal(new SessionCookie('sid').clearCookie(), 'sid=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Lax');
  });

  test('the token is found in a Cookie header', () => {
    const c = new SessionCookie();
    assert.equal(c.tokenFromHeader(`theme=dark; __Host-session=${TOKEN}; lang=en`), TOKEN);
    assert.equal(c.tokenFromHeader(`__Host-session="${TOKEN}"`), TOKEN);
    assert.equal(c.tokenFromHeader(`  __Host-session = ${TOKEN} `), TOKEN);
    assert.equal(
      c.tokenFromHeader(`x__Host-session=nope; __Host-session=; __Host-session=a b; __Host-session=${TOKEN}`),
      TOKEN,
    );
    assert.equal(c.tokenFromHeader('theme=dark'), null);
    assert.equal(c.tokenFromHeader(''), null);
    assert.equal(c.tokenFromHeader(undefined), null);
    assert.equal(c.tokenFromHeader(';;=;'), null);
  });
});

function decision(allowed: boolean, windowMs: number | null = 1500): Decision {
  return new Decision('api', {
    allowed,
    limit: 10,
    remaining: allowed ? 3 : 0,
    reset_after_ms: 2001,
    retry_after_ms: allowed ? 0 : 1001,
    window_ms: windowMs,
  });
}

describe('Decision.headers mirrors the Rust decision', () => {
  test('denied headers round up', () => {
    const h = decision(false).headers();
    assert.deepEqual(h, {
      'ratelimit-policy': '"api";q=10;w=2',
      ratelimit: '"api";r=0;t=3',
      'x-ratelimit-limit': '10',
      'x-ratelimit-remaining': '0',
      'x-ratelimit-reset': '3',
      'retry-after': '2',
    });
  });

  test('allowed headers have no Retry-After; no window, no policy header', () => {
    const d = decision(true);
    assert.equal(d.headers()['retry-after'], undefined);
    assert.equal(d.headers()['ratelimit'], '"api";r=3;t=3');
    assert.equal(d.retryAfterSecs(), 0);
    assert.equal(decision(true, null).headers()['ratelimit-policy'], undefined);
    const zero = new Decision('api', { allowed: false, limit: 1, remaining: 0, reset_after_ms: 0, retry_after_ms: 0 });
    assert.equal(zero.retryAfterSecs(), 1, 'a denial never says 0');
  });

  test('policy names are valid structured strings', () => {
    const d = new Decision('we"ird\\näme', { allowed: true, limit: 10, remaining: 3, reset_after_ms: 2001, retry_after_ms: 0 });
    assert.equal(d.headers()['ratelimit'], '"we\\"ird\\\\n_me";r=3;t=3');
  });
});

describe('middleware options are checked when the middleware is made', () => {
  // Never called: the checks run before any request.
  const client = {} as unknown as Client;

  test('rateLimit needs a client and policy, and a known header draft', () => {
    assert.throws(() => rateLimit({ client, policy: '' }), TypeError);
    assert.throws(() => rateLimit({ client, policy: 'api', standardHeaders: 'draft-9' as 'draft-8' }), TypeError);
    for (const standardHeaders of [false, true, 'draft-6', 'draft-7', 'draft-8'] as const) {
      assert.equal(typeof rateLimit({ client, policy: 'api', standardHeaders }), 'function');
    }
  });

  test('session needs a client and a valid cookie name', () => {
    assert.throws(() => session({} as never), TypeError);
    assert.throws(() => session({ client, name: 'bad name' }), TypeError);
    assert.equal(typeof session({ client }), 'function');
  });
});
