/**
 * The README's example app (examples/app.js) against a real shoald started with
 * examples/shoal.toml: login, a session-carrying request, logout, the fleet-wide
 * loader and the API rate limit, driven with fetch.
 */

import * as assert from 'node:assert/strict';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import { after, before, test } from 'node:test';

import { Client } from '../src/index';
import { Daemon, Redis, tempDir } from './harness';

// node/build/test -> node/examples
const EXAMPLES = path.join(__dirname, '..', '..', 'examples');

let redis: Redis;
let daemon: Daemon;
let client: Client;
let server: Server;
let base: string;

before(async () => {
  redis = await Redis.start();
  daemon = await Daemon.startWithConfig(redis, tempDir(), 'example', path.join(EXAMPLES, 'shoal.toml'));
  client = await daemon.client();
  const { createApp } = require(path.join(EXAMPLES, 'app.js'));
  server = await new Promise<Server>((resolve) => {
    const s = createApp(client).listen(0, '127.0.0.1', () => resolve(s));
  });
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  await new Promise((r) => server?.close(r));
  client?.close();
  await daemon?.kill();
  await redis?.stop();
});

async function call(method: string, p: string, headers: Record<string, string>): Promise<{ status: number; body: any; res: Response }> {
  const res = await fetch(base + p, { method, headers });
  const text = await res.text();
  return { status: res.status, body: text.startsWith('{') ? JSON.parse(text) : text, res };
}

test('the example app: login, session, logout, loader, rate limit', async () => {
  const h = { 'x-api-key': 'readme' };
  const login = await call('POST', '/login?user=alice', h);
  assert.deepEqual(login.body, { hello: 'alice' });
  const setCookie = login.res.headers.getSetCookie().find((c) => c.startsWith('__Host-session='));
  assert.ok(setCookie, 'the session cookie is set');
  assert.match(login.res.headers.get('ratelimit') ?? '', /^"api"; r=4; t=\d+$/);
  const cookie = setCookie.split(';')[0];

  assert.deepEqual((await call('GET', '/me', { ...h, cookie })).body, { user: 'alice', visits: 1 });
  const product = (await call('GET', '/products/7', h)).body;
  assert.equal(product.name, 'Product 7');
  assert.deepEqual((await call('GET', '/products/7', h)).body, product, 'the second read is the cached value');
  assert.deepEqual((await call('POST', '/logout', { ...h, cookie })).body, { bye: true });

  const denied = await call('GET', '/me', { ...h, cookie });
  assert.equal(denied.status, 429, 'the sixth request in 10 s');
  assert.ok(Number(denied.res.headers.get('retry-after')) >= 1);
  // Another key has its own budget; the logged-out session is gone.
  assert.equal((await call('GET', '/me', { 'x-api-key': 'other', cookie })).status, 401);
});
