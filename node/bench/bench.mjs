// Node client benchmark: an L1 hit through `Client` beside raw Unix-socket round
// trips measured in the same run, and pipelined throughput from one process.
//
// Starts its own redis-server and shoald (SHOALD_BIN, default
// <repo>/target/debug/shoald; use a release build for meaningful numbers:
// `cargo build --release -p shoald` and SHOALD_BIN=target/release/shoald).
// Rows, each measured in interleaved rounds so machine noise hits all alike:
//   echo floor   - a raw frame to a trivial Node echo server (its own process)
//                  over a Unix socket, one in flight;
//   raw ping     - a hand-written `ping` frame to shoald on a raw socket;
//   raw L1 hit   - a pre-encoded `cache.get` frame of the hot key on a raw socket
//                  (the daemon's share of an L1 hit, without the client);
//   client ping  - Client.ping();
//   L1 hit       - Client.getBytes() of a 100-byte value held in shoald's L1;
//   typed L1 hit - Client.get() of a small object (MessagePack decode included).
// Then pipelined L1 hits with 1, 16, 64 and 256 calls in flight from one process.
//
// Usage: npm run bench   (or: node bench/bench.mjs [--rounds N] [--iters N] [--secs S])

import { spawn } from 'node:child_process';
import * as net from 'node:net';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const here = path.dirname(fileURLToPath(import.meta.url));
const { Client } = require(path.join(here, '..', 'dist', 'index.js'));
const { encode } = require('@msgpack/msgpack');
const { Daemon, Redis, tempDir } = require(path.join(here, '..', 'build', 'test', 'harness.js'));

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const ROUNDS = arg('rounds', 5);
const ITERS = arg('iters', 3000);
const SECS = arg('secs', 1.5);

/** A frame reader on a raw socket: resolves one pending read per complete frame. */
function rawConn(sockPath) {
  return new Promise((resolve, reject) => {
    const s = net.createConnection({ path: sockPath });
    let buf = Buffer.alloc(0);
    let waiter = null;
    s.on('data', (d) => {
      buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
      while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
        const len = buf.readUInt32BE(0);
        const f = buf.subarray(4, 4 + len);
        buf = buf.subarray(4 + len);
        const w = waiter;
        waiter = null;
        w?.(f);
      }
    });
    s.once('error', reject);
    s.once('connect', () =>
      resolve({
        roundtrip(frame) {
          return new Promise((r) => {
            waiter = r;
            s.write(frame);
          });
        },
        close() {
          s.destroy();
        },
      }),
    );
  });
}

/** A msgpack frame from hand-written bytes (map fields), so the raw rows do no encoding. */
function frame(hex) {
  const body = Buffer.from(hex, 'hex');
  const f = Buffer.alloc(4 + body.length);
  f.writeUInt32BE(body.length, 0);
  body.copy(f, 4);
  return f;
}
// {"id": 0, "op": "hello", "version": 1}
const HELLO = frame('83a26964' + '00' + 'a26f70a568656c6c6f' + 'a776657273696f6e01');
// {"id": 1, "op": "ping"}
const PING = frame('82a26964' + '01' + 'a26f70a470696e67');
// {"id": 2, "op": "cache.get", "key": "bench:hot"}
const GET_HOT = frame(Buffer.from(encode({ id: 2, op: 'cache.get', key: 'bench:hot' })).toString('hex'));

/** Runs `fn` `n` times sequentially; returns sorted per-call microseconds. */
async function timeSeq(n, fn) {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint();
    await fn();
    out[i] = Number(process.hrtime.bigint() - t0) / 1000;
  }
  return out.sort();
}

const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))];
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main() {
  const redis = await Redis.start();
  const dir = tempDir();
  const daemon = await Daemon.start(redis, dir, 'bench');
  const echoSock = path.join(dir, 'echo.sock');
  // The floor: a Node echo server in its own process.
  const echo = spawn(
    process.execPath,
    [
      '-e',
      `require('net').createServer((s) => s.on('data', (d) => s.write(d))).listen(${JSON.stringify(echoSock)}, () => console.log('up'))`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  await new Promise((r) => echo.stdout.once('data', r));

  const client = await Client.connect(daemon.socket);
  const value = Buffer.alloc(100, 7);
  await client.setBytes('bench:hot', value, { ttlMs: 600_000 });
  await client.set('bench:typed', { id: 42, name: 'alice', roles: ['admin'], score: 0.5 }, { ttlMs: 600_000 });
  for (let i = 0; i < 2000; i++) await client.getBytes('bench:hot'); // warm-up, and fills L1
  const check = await client.getFull('bench:hot');
  if (check.from !== 'l1') throw new Error(`expected an L1 hit, got ${check.from}`);

  const raw = await rawConn(daemon.socket);
  await raw.roundtrip(HELLO);
  const echoConn = await rawConn(echoSock);

  const rows = {
    'echo floor': () => echoConn.roundtrip(PING),
    'raw ping': () => raw.roundtrip(PING),
    'raw L1 hit': () => raw.roundtrip(GET_HOT),
    'client ping': () => client.ping(),
    'L1 hit': () => client.getBytes('bench:hot'),
    'typed L1 hit': () => client.get('bench:typed'),
  };
  const results = Object.fromEntries(Object.keys(rows).map((k) => [k, { p50: [], p99: [] }]));
  for (const fn of Object.values(rows)) await timeSeq(500, fn); // warm-up
  for (let r = 0; r < ROUNDS; r++) {
    for (const [name, fn] of Object.entries(rows)) {
      const s = await timeSeq(ITERS, fn);
      results[name].p50.push(pct(s, 50));
      results[name].p99.push(pct(s, 99));
    }
  }

  console.log(`shoald: ${process.env.SHOALD_BIN ?? 'target/debug/shoald'}; node ${process.version}; ${ROUNDS} rounds x ${ITERS} calls per row`);
  console.log('');
  console.log('| row | p50 µs | p99 µs | p50 vs raw ping |');
  console.log('|---|---:|---:|---:|');
  const rawP50 = median(results['raw ping'].p50);
  for (const [name, r] of Object.entries(results)) {
    const p50 = median(r.p50);
    console.log(`| ${name} | ${p50.toFixed(1)} | ${median(r.p99).toFixed(1)} | ${(p50 / rawP50).toFixed(2)}x |`);
  }

  console.log('');
  console.log('| pipelined L1 hits, calls in flight | ops/s |');
  console.log('|---:|---:|');
  for (const depth of [1, 16, 64, 256]) {
    let done = 0;
    const until = Date.now() + SECS * 1000;
    const worker = async () => {
      while (Date.now() < until) {
        await client.getBytes('bench:hot');
        done += 1;
      }
    };
    const t0 = process.hrtime.bigint();
    await Promise.all(Array.from({ length: depth }, worker));
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    console.log(`| ${depth} | ${Math.round(done / secs)} |`);
  }

  raw.close();
  echoConn.close();
  client.close();
  echo.kill();
  await daemon.kill();
  await redis.stop();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
