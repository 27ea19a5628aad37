/**
 * The Express middleware in a real Express app on an ephemeral port, driven with
 * fetch, against a real shoald and redis-server: rate-limit headers in every
 * express-rate-limit spelling, 429s, and sessions with login, rotation, logout
 * and revocation from outside the app.
 */

import * as assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { after, before, describe, test } from 'node:test';

import express from 'express';

import { Client } from '../src/index';
import { rateLimit, session, type ShoalSession } from '../src/express';
import { Daemon, Redis, tempDir } from './harness';

let redis: Redis;
let daemon: Daemon;
let client: Client;
let closedClient: Client;
let server: Server;
let base: string;

type SessionReq = express.Request & { session?: ShoalSession & Record<string, any>; sessionID?: string; rateLimit?: any };

before(async () => {
  redis = await Redis.start();
  daemon = await Daemon.start(redis, tempDir(), 'web1');
  client = await daemon.client();
  closedClient = await daemon.client();
  closedClient.close();

  const app = express();
  const key = (req: express.Request) => req.get('x-key');
  app.get('/d6', rateLimit({ client, policy: 'web', key, standardHeaders: 'draft-6', legacyHeaders: false }), (_req, res) => {
    res.send('ok');
  });
  app.get('/d7', rateLimit({ client, policy: 'web', key, standardHeaders: 'draft-7' }), (req: SessionReq, res) => {
    res.json({ remaining: req.rateLimit.remaining, used: req.rateLimit.used, limit: req.rateLimit.limit });
  });
  app.get('/d8', rateLimit({ client, policy: 'web', keyGenerator: key, standardHeaders: 'draft-8', legacyHeaders: false }), (_req, res) => {
    res.send('ok');
  });
  app.get('/down-open', rateLimit({ client: closedClient, policy: 'web', key }), (_req, res) => {
    res.send('let through');
  });
  app.get('/down-closed', rateLimit({ client: closedClient, policy: 'web', key, passOnStoreError: false }), (_req, res) => {
    res.send('never');
  });

  app.use(session({ client, name: 'sid' }));
  app.post('/login', (req: SessionReq, res, next) => {
    req.session!.regenerate((err) => {
      if (err) return next(err);
      req.session!.user = String(req.query.user);
      req.session!.views = 0;
      res.send('welcome');
    });
  });
  app.get('/me', (req: SessionReq, res) => {
    const s = req.session!;
    if (typeof s.user !== 'string') {
      res.status(401).send('who are you?');
      return;
    }
    s.views += 1;
    res.json({ user: s.user, views: s.views, role: s.role ?? null, id: req.sessionID });
  });
  app.post('/rotate', async (req: SessionReq, res, next) => {
    try {
      await req.session!.rotate();
      res.send('rotated');
    } catch (e) {
      next(e);
    }
  });
  app.post('/save', async (req: SessionReq, res, next) => {
    try {
      req.session!.note = 'saved explicitly';
      await req.session!.save();
      res.json({ id: req.session!.id });
    } catch (e) {
      next(e);
    }
  });
  app.post('/logout', (req: SessionReq, res, next) => {
    req.session!.destroy((err) => {
      if (err) return next(err);
      res.send('bye');
    });
  });
  app.get('/reload', async (req: SessionReq, res) => {
    req.session!.views = 1000;
    await req.session!.reload();
    res.json({ views: req.session!.views });
  });
  app.use((err: Error, _req: express.Request, res: express.Response, _next: express.NextFunction) => {
    res.status(500).send(`error: ${err.name}`);
  });

  server = await new Promise<Server>((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s));
  });
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  await new Promise((r) => server?.close(r));
  client?.close();
  await daemon?.kill();
  await redis?.stop();
});

function get(p: string, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(base + p, { headers });
}

function post(p: string, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(base + p, { method: 'POST', headers });
}

describe('rateLimit middleware', () => {
  test('draft-6 headers, then 429 with Retry-After', async () => {
    const k = { 'x-key': `d6-${Date.now()}` };
    const r1 = await get('/d6', k);
    assert.equal(r1.status, 200);
    assert.equal(r1.headers.get('ratelimit-policy'), '2;w=30');
    assert.equal(r1.headers.get('ratelimit-limit'), '2');
    assert.equal(r1.headers.get('ratelimit-remaining'), '1');
    assert.match(r1.headers.get('ratelimit-reset') ?? '', /^\d+$/);
    assert.equal(r1.headers.get('x-ratelimit-limit'), null, 'legacyHeaders: false');
    assert.equal((await get('/d6', k)).status, 200);
    const denied = await get('/d6', k);
    assert.equal(denied.status, 429);
    assert.equal(await denied.text(), 'Too many requests, please try again later.');
    assert.equal(denied.headers.get('ratelimit-remaining'), '0');
    const retry = Number(denied.headers.get('retry-after'));
    assert.ok(retry >= 1 && retry <= 30, `retry-after ${retry}`);
  });

  test('draft-7 combined header and legacy X-RateLimit-*; req.rateLimit', async () => {
    const k = { 'x-key': `d7-${Date.now()}` };
    const before = Math.floor(Date.now() / 1000);
    const r = await get('/d7', k);
    assert.equal(r.status, 200);
    assert.deepEqual(await r.json(), { remaining: 1, used: 1, limit: 2 });
    assert.equal(r.headers.get('ratelimit-policy'), '2;w=30');
    assert.match(r.headers.get('ratelimit') ?? '', /^limit=2, remaining=1, reset=(29|30)$/);
    assert.equal(r.headers.get('x-ratelimit-limit'), '2');
    assert.equal(r.headers.get('x-ratelimit-remaining'), '1');
    const reset = Number(r.headers.get('x-ratelimit-reset'));
    assert.ok(reset >= before + 29 && reset <= before + 32, `x-ratelimit-reset ${reset} is Unix seconds`);
    assert.ok(r.headers.get('date'));
    assert.equal(r.headers.get('retry-after'), null);
  });

  test('draft-8 named headers with the partition key', async () => {
    const k = { 'x-key': `d8-${Date.now()}` };
    const r = await get('/d8', k);
    assert.equal(r.status, 200);
    assert.match(r.headers.get('ratelimit-policy') ?? '', /^"web"; q=2; w=30; pk=:[A-Za-z0-9+/=]{16}:$/);
    assert.match(r.headers.get('ratelimit') ?? '', /^"web"; r=1; t=(29|30)$/);
    assert.equal(r.headers.get('x-ratelimit-remaining'), null);
  });

  test('no key: not limited, no headers', async () => {
    for (let i = 0; i < 4; i++) {
      const r = await get('/d6');
      assert.equal(r.status, 200);
      assert.equal(r.headers.get('ratelimit-limit'), null);
    }
  });

  test('shoald unreachable: let through by default, an error with passOnStoreError false', async () => {
    const k = { 'x-key': 'down' };
    assert.equal(await (await get('/down-open', k)).text(), 'let through');
    const closed = await get('/down-closed', k);
    assert.equal(closed.status, 500);
    assert.equal(await closed.text(), 'error: ClosedError');
  });
});

function setCookies(r: Response): string[] {
  return r.headers.getSetCookie();
}

function cookieOf(r: Response): string {
  const sc = setCookies(r).find((c) => c.startsWith('sid='));
  assert.ok(sc, `a sid cookie in ${JSON.stringify(setCookies(r))}`);
  return sc.split(';')[0];
}

describe('session middleware', () => {
  test('no session until there is data; login sets the cookie; changes are saved', async () => {
    const anon = await get('/me');
    assert.equal(anon.status, 401);
    assert.deepEqual(setCookies(anon), [], 'an empty session is not saved');

    const login = await post('/login?user=alice');
    assert.equal(login.status, 200);
    const sc = setCookies(login).find((c) => c.startsWith('sid='))!;
    assert.match(sc, /^sid=[A-Za-z0-9_-]{43,}; Max-Age=\d+; Path=\/; Secure; HttpOnly; SameSite=Lax$/);
    const cookie = cookieOf(login);
    const token = cookie.slice('sid='.length);

    const me1 = await get('/me', { cookie });
    assert.deepEqual(await me1.json(), { user: 'alice', views: 1, role: null, id: token });
    assert.deepEqual(setCookies(me1), [], 'an existing session keeps its cookie');
    const me2 = await get('/me', { cookie: `other=1; ${cookie}` });
    assert.equal((await json(me2)).views, 2);

    const s = await client.sessionGet<Record<string, unknown>>(token);
    assert.ok(s !== null);
    assert.equal(s.user, 'alice', 'shoal indexes the session by data.user');
    assert.deepEqual(s.data, { user: 'alice', views: 2 });
    assert.equal((await client.sessionList('alice')).length >= 1, true);

    // Logging in again regenerates: the old token is revoked.
    const again = await post('/login?user=alice', { cookie });
    const cookie2 = cookieOf(again);
    assert.notEqual(cookie2, cookie);
    assert.equal(await client.sessionGet(token), null);
    assert.equal((await get('/me', { cookie })).status, 401);
    assert.equal((await json(await get('/me', { cookie: cookie2 }))).views, 1);
  });

  test('rotate, explicit save, reload, logout', async () => {
    const cookie = cookieOf(await post('/login?user=bob'));
    const rotated = await post('/rotate', { cookie });
    const cookie2 = cookieOf(rotated);
    assert.notEqual(cookie2, cookie);
    assert.equal((await get('/me', { cookie })).status, 401, 'the old token is revoked');
    assert.equal((await json(await get('/me', { cookie: cookie2 }))).user, 'bob');

    const saved = await post('/save', { cookie: cookie2 });
    assert.deepEqual(await saved.json(), { id: cookie2.slice(4) });
    assert.equal((await client.sessionGet<Record<string, unknown>>(cookie2.slice(4)))?.data.note, 'saved explicitly');

    const reloaded = await get('/reload', { cookie: cookie2 });
    assert.deepEqual(await reloaded.json(), { views: 1 }, 'reload drops unsaved changes');

    const out = await post('/logout', { cookie: cookie2 });
    assert.equal(await out.text(), 'bye');
    assert.ok(setCookies(out).includes('sid=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Lax'));
    assert.equal(await client.sessionGet(cookie2.slice(4)), null);
    assert.equal((await get('/me', { cookie: cookie2 })).status, 401);
  });

  test('a session made elsewhere is read, and revoking the user signs out everywhere', async () => {
    const created = await client.sessionCreate('carol', { user: 'carol', role: 'admin', views: 0 });
    const cookie = `sid=${created.token}`;
    assert.deepEqual(await (await get('/me', { cookie })).json(), { user: 'carol', views: 1, role: 'admin', id: created.token });
    assert.ok((await client.sessionRevokeUser('carol')) >= 1);
    assert.equal((await get('/me', { cookie })).status, 401);
  });
});

async function json(r: Response): Promise<any> {
  return r.json();
}
