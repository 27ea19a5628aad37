/**
 * The protocol's conformance vectors (`tests/vectors/` at the repository root,
 * format in its README.md), replayed by the Node client against a real shoald:
 *
 * 1. every file as recorded, on a raw Unix socket: exact request bytes, one
 *    response frame each, compared under the file's `vary` rules, with the
 *    `closes` steps checked for end-of-file;
 * 2. the files that keep their connection (`0x-*`) again through `Client.call`:
 *    the client's own encoder, id allocation and response routing must produce
 *    the recorded results;
 * 3. `values.json`: the typed-value table, through `encodeValue` / `decodeValue`.
 *
 * The directory is `SHOAL_VECTORS_DIR` if set, else `<repo>/tests/vectors`. A
 * missing directory fails the test.
 */

import { decode, encode } from '@msgpack/msgpack';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { Client, decodeValue, encodeValue, ServerError } from '../src/index';
import { Daemon, Redis, REPO, tempDir } from './harness';

const VECTORS = process.env.SHOAL_VECTORS_DIR ?? path.join(REPO, 'tests', 'vectors');

type Rule = 'any' | 'type' | { one_of: unknown[] } | { min?: number; max?: number };

interface Step {
  request: string;
  response: string;
  uses?: string[];
  vary?: Record<string, Rule>;
  capture?: Record<string, string>;
  closes?: boolean;
}

interface VectorFile {
  description: string;
  steps: Step[];
}

function vectorFiles(): string[] {
  // Throws (failing the test) when the directory is missing.
  const files = fs.readdirSync(VECTORS).filter((f) => /^\d\d-.*\.json$/.test(f));
  files.sort();
  return files;
}

function load(file: string): VectorFile {
  return JSON.parse(fs.readFileSync(path.join(VECTORS, file), 'utf8')) as VectorFile;
}

function typeOf(v: unknown): string {
  if (v === null || v === undefined) return 'nil';
  if (typeof v === 'boolean') return 'bool';
  if (typeof v === 'number' || typeof v === 'bigint') return Number.isInteger(Number(v)) ? 'int' : 'float';
  if (typeof v === 'string') return 'str';
  if (v instanceof Uint8Array) return 'bin';
  if (Array.isArray(v)) return 'array';
  return 'map';
}

function pathMatches(pattern: string, at: string[]): boolean {
  const parts = pattern.split('.');
  if (parts.length !== at.length) return false;
  return parts.every((p, i) => p === at[i] || (p === '*' && /^\d+$/.test(at[i])));
}

/** Compares `got` to `want` per the vector rules; throws an AssertionError naming the path. */
function compare(want: unknown, got: unknown, vary: Record<string, Rule>, at: string[] = []): void {
  const where = at.length === 0 ? '(top)' : at.join('.');
  for (const [pattern, rule] of Object.entries(vary)) {
    if (!pathMatches(pattern, at)) continue;
    if (rule === 'any') {
      assert.notEqual(got, undefined, `${where}: present`);
    } else if (rule === 'type') {
      assert.equal(typeOf(got), typeOf(want), `${where}: type`);
    } else if ('one_of' in rule) {
      assert.ok(
        rule.one_of.some((o) => typeOf(o) === typeOf(got) && (o === got || (o === null && got === null))),
        `${where}: ${JSON.stringify(got)} is not one of ${JSON.stringify(rule.one_of)}`,
      );
    } else {
      assert.equal(typeOf(got), 'int', `${where}: an integer`);
      const n = Number(got);
      assert.ok(n >= 0, `${where}: unsigned`);
      if (rule.min !== undefined) assert.ok(n >= rule.min, `${where}: ${n} >= ${rule.min}`);
      if (rule.max !== undefined) assert.ok(n <= rule.max, `${where}: ${n} <= ${rule.max}`);
    }
    return;
  }
  assert.equal(typeOf(got), typeOf(want), `${where}: type of ${JSON.stringify(got)}`);
  if (want instanceof Uint8Array) {
    assert.equal(Buffer.from(got as Uint8Array).toString('hex'), Buffer.from(want).toString('hex'), where);
  } else if (Array.isArray(want)) {
    const g = got as unknown[];
    assert.equal(g.length, want.length, `${where}: length`);
    want.forEach((w, i) => compare(w, g[i], vary, [...at, String(i)]));
  } else if (want !== null && typeof want === 'object') {
    const w = want as Record<string, unknown>;
    const g = got as Record<string, unknown>;
    assert.deepEqual(Object.keys(g).sort(), Object.keys(w).sort(), `${where}: keys`);
    for (const k of Object.keys(w)) compare(w[k], g[k], vary, [...at, k]);
  } else {
    assert.equal(Number.isNaN(got) ? 'NaN' : got, Number.isNaN(want) ? 'NaN' : want, where);
  }
}

function at(v: unknown, p: string): unknown {
  let cur: any = v;
  for (const part of p.split('.')) cur = cur?.[part];
  return cur;
}

function subst(v: unknown, vars: Map<string, string>): unknown {
  if (typeof v === 'string' && v.startsWith('${') && v.endsWith('}')) {
    const name = v.slice(2, -1);
    const got = vars.get(name);
    assert.ok(got !== undefined, `variable ${name} was captured`);
    return got;
  }
  if (Array.isArray(v)) return v.map((x) => subst(x, vars));
  if (v !== null && typeof v === 'object' && !(v instanceof Uint8Array)) {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) out[k] = subst(x, vars);
    return out;
  }
  return v;
}

function frame(value: unknown): Buffer {
  const body = encode(value);
  const out = Buffer.alloc(4 + body.length);
  out.writeUInt32BE(body.length, 0);
  out.set(body, 4);
  return out;
}

/** The bytes to send for `step`, with captured variables substituted. */
function requestBytes(step: Step, vars: Map<string, string>): Buffer {
  const raw = Buffer.from(step.request, 'hex');
  if (step.uses === undefined || step.uses.length === 0) return raw;
  return frame(subst(decode(raw.subarray(4)), vars));
}

/** A raw socket reading whole frames. */
class RawConn {
  private buf = Buffer.alloc(0);
  private ended = false;
  private wake: (() => void) | null = null;
  private constructor(readonly sock: net.Socket) {
    sock.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake?.();
    });
    sock.on('end', () => {
      this.ended = true;
      this.wake?.();
    });
    sock.on('close', () => {
      this.ended = true;
      this.wake?.();
    });
    sock.on('error', () => undefined);
  }

  static open(p: string): Promise<RawConn> {
    return new Promise((resolve, reject) => {
      const s = net.createConnection({ path: p });
      s.once('connect', () => resolve(new RawConn(s)));
      s.once('error', reject);
    });
  }

  private async waitFor(ready: () => boolean, what: string): Promise<void> {
    const deadline = Date.now() + 5000;
    while (!ready()) {
      const left = deadline - Date.now();
      assert.ok(left > 0, `timed out waiting for ${what}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.wake = () => {
          clearTimeout(t);
          r();
        };
      });
      this.wake = null;
    }
  }

  async readFrame(): Promise<Buffer> {
    await this.waitFor(() => this.ended || (this.buf.length >= 4 && this.buf.length >= 4 + this.buf.readUInt32BE(0)), 'a frame');
    assert.ok(this.buf.length >= 4 && this.buf.length >= 4 + this.buf.readUInt32BE(0), 'the server closed before answering');
    const len = this.buf.readUInt32BE(0);
    const f = this.buf.subarray(0, 4 + len);
    this.buf = this.buf.subarray(4 + len);
    return f;
  }

  async expectEof(): Promise<void> {
    await this.waitFor(() => this.ended || this.buf.length > 0, 'end-of-file');
    assert.equal(this.buf.length, 0, 'no bytes after the closing response');
    assert.ok(this.ended, 'the connection is closed');
  }

  close(): void {
    this.sock.destroy();
  }
}

let redis: Redis;
let daemon: Daemon;

before(async () => {
  const config = path.join(VECTORS, 'shoal.toml');
  assert.ok(fs.existsSync(config), `protocol vectors missing: ${config}`);
  redis = await Redis.start();
  daemon = await Daemon.startWithConfig(redis, tempDir(), 'vectors', config);
});

after(async () => {
  await daemon?.kill();
  await redis?.stop();
});

describe('protocol vectors', () => {
  test('the vector files are there', () => {
    const files = vectorFiles();
    assert.ok(files.length >= 10, `only ${files.length} vector files in ${VECTORS}`);
  });

  test('every file replays on a raw socket', async (t) => {
    for (const file of vectorFiles()) {
      await t.test(file, async () => {
        const conn = await RawConn.open(daemon.socket);
        const vars = new Map<string, string>();
        try {
          for (const [i, step] of load(file).steps.entries()) {
            conn.sock.write(requestBytes(step, vars));
            const got = decode((await conn.readFrame()).subarray(4));
            const want = decode(Buffer.from(step.response, 'hex').subarray(4));
            try {
              compare(want, got, step.vary ?? {});
            } catch (e) {
              throw new Error(`${file} step ${i}: ${(e as Error).message}`);
            }
            for (const [name, p] of Object.entries(step.capture ?? {})) {
              const v = at(got, p);
              assert.equal(typeof v, 'string', `${file} step ${i}: capture ${name} at ${p}`);
              vars.set(name, v as string);
            }
            if (step.closes) await conn.expectEof();
          }
        } finally {
          conn.close();
        }
      });
    }
  });

  test('the connection-keeping files replay through Client.call', async (t) => {
    for (const file of vectorFiles().filter((f) => f.startsWith('0'))) {
      await t.test(file, async () => {
        const client = await Client.connect(daemon.socket);
        const vars = new Map<string, string>();
        let sent = 0;
        try {
          for (const [i, step] of load(file).steps.entries()) {
            const req = subst(decode(Buffer.from(step.request, 'hex').subarray(4)), vars) as Record<string, unknown>;
            const want = decode(Buffer.from(step.response, 'hex').subarray(4)) as Record<string, unknown>;
            if (req.op === 'hello' && req.id === 0) {
              // The client's own handshake: compare what it learned.
              const info = client.serverInfo;
              compare(
                (want as { ok: unknown }).ok,
                { version: info.version, server: info.server, node: info.node, max_frame: info.maxFrame },
                Object.fromEntries(Object.entries(step.vary ?? {}).map(([k, v]) => [k.replace(/^ok\./, ''), v])),
              );
              continue;
            }
            if (typeof req.op !== 'string') continue; // a request the client cannot make (no op)
            const { id, op, ...args } = req;
            let got: Record<string, unknown>;
            try {
              got = { id, ok: await client.call(op, args) };
            } catch (e) {
              if (!(e instanceof ServerError)) throw e;
              got = { id, err: { code: e.code, msg: e.serverMessage } };
            }
            sent += 1;
            try {
              compare(want, got, step.vary ?? {});
            } catch (e) {
              throw new Error(`${file} step ${i}: ${(e as Error).message}`);
            }
            for (const [name, p] of Object.entries(step.capture ?? {})) vars.set(name, at(got, p) as string);
          }
          assert.ok(sent > 0);
          assert.equal(client.connects, 1, 'no step cost the connection');
        } finally {
          client.close();
        }
      });
    }
  });

  test('values.json: the typed-value table', () => {
    const table = JSON.parse(fs.readFileSync(path.join(VECTORS, 'values.json'), 'utf8')) as {
      values: { name: string; direction: 'both' | 'read'; hex: string; json?: string }[];
    };
    assert.ok(table.values.length > 0);
    for (const v of table.values) {
      const bytes = Buffer.from(v.hex, 'hex');
      if (v.json === undefined) {
        // bin: the bytes of a bin value decode to those bytes.
        const decoded = decodeValue<Uint8Array>(bytes);
        assert.ok(decoded instanceof Uint8Array, v.name);
        assert.equal(Buffer.from(encodeValue(decoded)).toString('hex'), v.hex, v.name);
        continue;
      }
      const value = JSON.parse(v.json);
      assert.deepEqual(decodeValue(bytes), value, `${v.name}: decodes`);
      if (v.direction === 'both') {
        const mine = encodeValue(value).toString('hex');
        if (mine !== v.hex) {
          // JavaScript has no integral floats: 2.0 is written as the integer 2,
          // which the Rust client reads as a float (see the `read` entries).
          assert.ok(/^cb/.test(v.hex) || /cb[0-9a-f]{16}/.test(v.hex), `${v.name}: encodes as ${mine}, want ${v.hex}`);
          assert.deepEqual(decodeValue(Buffer.from(mine, 'hex')), value, v.name);
        }
      }
    }
  });
});
