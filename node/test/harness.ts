/**
 * Test harness: real redis-server and shoald processes on free ports in a temp
 * directory, as the Rust harness (tests/src/lib.rs) starts them.
 *
 * shoald comes from `SHOALD_BIN`, default `<repo>/target/debug/shoald` (build it
 * with `cargo build --workspace --bins`). A missing binary or redis-server fails
 * the test; nothing is skipped.
 */

import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

import { Client, ClientOptions } from '../src/index';

/** The repository root (this file runs from node/build/test/). */
export const REPO = path.resolve(__dirname, '..', '..', '..');

export function shoaldBin(): string {
  const bin = process.env.SHOALD_BIN ?? path.join(REPO, 'target', 'debug', 'shoald');
  if (!fs.existsSync(bin)) {
    throw new Error(`shoald not found at ${bin}: run \`cargo build --workspace --bins\` or set SHOALD_BIN`);
  }
  return bin;
}

const children = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});

export function tempDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-node-'));
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

/** Polls `f` until it returns a value (not undefined) or `withinMs` passes. */
export async function until<T>(what: string, withinMs: number, f: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + withinMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await f();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${withinMs} ms (last error: ${String(last)})`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function waitExit(child: ChildProcess, withinMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('process did not exit')), withinMs);
    child.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
  });
}

function redisPing(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createConnection({ port, host: '127.0.0.1' });
    s.once('error', () => resolve(false));
    s.once('connect', () => s.write('PING\r\n'));
    s.once('data', (d) => {
      s.destroy();
      resolve(d.toString().startsWith('+PONG'));
    });
  });
}

export class Redis {
  private constructor(
    readonly port: number,
    readonly dir: string,
    readonly child: ChildProcess,
  ) {}

  static async start(): Promise<Redis> {
    const port = await freePort();
    const dir = tempDir();
    const child = spawn(
      'redis-server',
      ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--protected-mode', 'no', '--dir', dir],
      { stdio: 'ignore' },
    );
    children.add(child);
    const spawnError = new Promise<never>((_, reject) => child.once('error', (e) => reject(new Error(`cannot start redis-server: ${e.message}`))));
    await Promise.race([until('redis-server up', 10_000, async () => ((await redisPing(port)) ? true : undefined)), spawnError]);
    return new Redis(port, dir, child);
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  async stop(): Promise<void> {
    this.child.kill('SIGKILL');
    await waitExit(this.child, 5000);
    children.delete(this.child);
  }
}

/** Rate-limit policies every test daemon knows. */
export const POLICIES = `
[ratelimit.policies.api]
algorithm = "fixed_window"
limit = 3
window = "60s"

[ratelimit.policies.bucket]
algorithm = "token_bucket"
limit = 5
window = "1s"
burst = 5

[ratelimit.policies.vendor]
algorithm = "gcra"
limit = 10
window = "1s"
burst = 1

[ratelimit.policies.slow]
algorithm = "gcra"
limit = 1
window = "10s"
burst = 1

[ratelimit.policies.slots]
algorithm = "concurrency"
limit = 2
window = "5s"

[ratelimit.policies.web]
algorithm = "sliding_log"
limit = 2
window = "30s"
`;

export interface DaemonOptions {
  /** Extra TOML appended to [socket] (e.g. `max_frame = "64KiB"`). */
  socket?: string;
}

export class Daemon {
  child: ChildProcess;
  readonly socket: string;
  readonly configFile: string;
  stderr = '';

  private constructor(
    readonly node: string,
    readonly dir: string,
    configFile: string,
    private readonly extraArgs: string[] = [],
  ) {
    this.socket = path.join(dir, `${node}.sock`);
    this.configFile = configFile;
    this.child = this.spawnChild();
  }

  /**
   * Starts shoald with a given config file (e.g. tests/vectors/shoal.toml), the
   * socket, Redis and node id given as flags, and waits until it is ready.
   */
  static async startWithConfig(redis: Redis, dir: string, node: string, configFile: string): Promise<Daemon> {
    const sock = path.join(dir, `${node}.sock`);
    const d = new Daemon(node, dir, configFile, ['--socket', sock, '--redis-url', redis.url, '--node-id', node]);
    await d.waitReady();
    return d;
  }

  /** Starts shoald (node id `node`) against `redis` and waits until it reports ready. */
  static async start(redis: Redis, dir: string, node: string, opts: DaemonOptions = {}): Promise<Daemon> {
    const configFile = path.join(dir, `${node}.toml`);
    const sock = path.join(dir, `${node}.sock`);
    const toml = [
      `[node]\nid = "${node}"`,
      `[socket]\npath = "${sock}"\n${opts.socket ?? ''}`,
      `[redis]\nurl = "${redis.url}"\ntimeout = "300ms"`,
      `[admin]\nlisten = ""`,
      `[shutdown]\ngrace = "5s"`,
      POLICIES,
    ].join('\n');
    fs.writeFileSync(configFile, toml);
    const d = new Daemon(node, dir, configFile);
    await d.waitReady();
    return d;
  }

  private spawnChild(): ChildProcess {
    const child = spawn(shoaldBin(), ['--config', this.configFile, ...this.extraArgs], {
      env: { ...process.env, SHOAL_LOG: 'warn' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    child.stderr?.on('data', (d: Buffer) => {
      this.stderr = (this.stderr + d.toString()).slice(-4000);
    });
    children.add(child);
    return child;
  }

  /** Waits until the daemon answers and says it is ready (subscriber caught up). */
  async waitReady(withinMs = 10_000): Promise<void> {
    await until(`shoald ${this.node} ready`, withinMs, async () => {
      if (this.child.exitCode !== null) throw new Error(`shoald exited: ${this.stderr}`);
      const c = await Client.connect(this.socket, { connectTimeoutMs: 500 });
      try {
        const s = await c.stats();
        return s.ready === 1 ? true : undefined;
      } finally {
        c.close();
      }
    });
  }

  async client(opts: ClientOptions = {}): Promise<Client> {
    return Client.connect(this.socket, opts);
  }

  /** SIGTERM, wait for the exit (the daemon drains and removes its socket). */
  async stop(): Promise<void> {
    this.child.kill('SIGTERM');
    await waitExit(this.child, 10_000);
    children.delete(this.child);
  }

  /** Starts the same daemon again (same socket and config) and waits until ready. */
  async restart(): Promise<void> {
    this.child = this.spawnChild();
    await this.waitReady();
  }

  /** SIGSTOP, and wait until every thread of the daemon is stopped. */
  async pause(): Promise<void> {
    this.child.kill('SIGSTOP');
    const pid = this.child.pid;
    await until('shoald stopped', 5000, async () => {
      const tasks = fs.readdirSync(`/proc/${pid}/task`);
      const stopped = tasks.every((t) => {
        const stat = fs.readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8');
        // The state follows the parenthesised command name.
        return stat.slice(stat.lastIndexOf(')') + 2).startsWith('T');
      });
      return stopped ? true : undefined;
    });
  }

  resume(): void {
    this.child.kill('SIGCONT');
  }

  async kill(): Promise<void> {
    this.child.kill('SIGKILL');
    await waitExit(this.child, 5000);
    children.delete(this.child);
  }
}
