/**
 * One multiplexed connection to shoald: handshake, writes, and response routing.
 *
 * Callers write complete frames. The first write of a tick of the event loop goes
 * out at once; the writes that follow it in the same tick are corked into one
 * `writev`, so a burst of pipelined calls costs two syscalls, not one each. Responses come back in
 * any order and are routed to their caller by `id` through the pending map.
 *
 * A connection dies once (EOF, socket error, a connection-level error from the
 * server, a malformed frame). Death fails every pending call with a retryable
 * `ConnectionError` (`lost`), and the `Client` opens a new connection on its
 * next call.
 */

import * as net from 'node:net';

import { ConnectionError, ProtocolError, ServerError, ShoalError } from './errors';
import {
  decodeResponse,
  DEFAULT_MAX_FRAME,
  encodeRequest,
  FRAME_HEADER_LEN,
  PROTOCOL_VERSION,
  WireHello,
} from './protocol';

/** What the server said in the handshake. */
export interface ServerInfo {
  version: number;
  server: string;
  node: string;
  /** Largest frame the server accepts; larger requests are refused before sending. */
  maxFrame: number;
}

/** A caller waiting for its response. */
export interface Waiter {
  resolve(value: unknown): void;
  reject(err: Error): void;
}

export class Connection {
  readonly socket: net.Socket;
  info: ServerInfo = { version: 0, server: '', node: '', maxFrame: DEFAULT_MAX_FRAME };
  alive = true;
  private greeted = false;
  private readonly pending = new Map<number, Waiter>();
  private readonly onDeath: (conn: Connection) => void;
  // Bytes received but not yet a whole frame: a list of chunks, joined only when
  // a frame is complete, so a large frame arriving in many chunks is copied once.
  private chunks: Buffer[] = [];
  private buffered = 0;
  // The first write of a tick goes out at once (a lone call pays no batching
  // delay); later writes in the same tick are corked and leave together in one
  // writev when the tick ends.
  private inTick = false;
  private corked = false;
  private readonly endTick = () => {
    this.inTick = false;
    if (this.corked) {
      this.corked = false;
      this.socket.uncork();
    }
  };

  private constructor(socket: net.Socket, onDeath: (conn: Connection) => void) {
    this.socket = socket;
    this.onDeath = onDeath;
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err) => this.kill(new ConnectionError(`shoald connection error: ${err.message}`, true, { cause: err })));
    socket.on('close', () => this.kill(new ConnectionError('connection to shoald lost', true)));
  }

  /** Connects to `path` and performs the `hello` handshake within `timeoutMs`. */
  static open(
    path: string,
    clientName: string,
    timeoutMs: number,
    onDeath: (conn: Connection) => void,
  ): Promise<Connection> {
    return new Promise<Connection>((resolve, reject) => {
      const socket = net.createConnection({ path });
      const conn = new Connection(socket, onDeath);
      let done = false;
      const finish = (err: Error | null) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (err) {
          conn.kill(err);
          reject(
            err instanceof ConnectionError || err instanceof ServerError
              ? err
              : new ConnectionError(`cannot connect to shoald at ${path}: ${err.message}`, false, { cause: err }),
          );
        } else {
          resolve(conn);
        }
      };
      const timer = setTimeout(
        () => finish(new ConnectionError(`no handshake with shoald at ${path} within ${timeoutMs} ms`, false)),
        timeoutMs,
      );
      socket.once('error', (err) =>
        finish(new ConnectionError(`cannot connect to shoald at ${path}: ${err.message}`, false, { cause: err })),
      );
      conn.pending.set(0, {
        resolve: (ok) => {
          const h = ok as WireHello;
          if (h === null || typeof h !== 'object' || typeof h.max_frame !== 'number') {
            finish(new ProtocolError('malformed hello result'));
            return;
          }
          conn.info = { version: h.version, server: h.server, node: h.node, maxFrame: h.max_frame };
          conn.greeted = true;
          finish(null);
        },
        reject: (err) => finish(err),
      });
      socket.once('connect', () => {
        socket.write(encodeRequest(0, 'hello', { version: PROTOCOL_VERSION, client: clientName }));
      });
    });
  }

  get pendingCount(): number {
    return this.pending.size;
  }

  /** Registers `waiter` for `id` and writes `frame`. The connection must be alive. */
  send(id: number, frame: Buffer, waiter: Waiter): void {
    this.pending.set(id, waiter);
    if (!this.inTick) {
      this.inTick = true;
      process.nextTick(this.endTick);
    } else if (!this.corked) {
      this.corked = true;
      this.socket.cork();
    }
    this.socket.write(frame);
  }

  /** Forgets `id` (timed out or aborted): a late response is discarded. */
  forget(id: number): void {
    this.pending.delete(id);
  }

  /** Ends the connection, failing every pending call with `err`. */
  kill(err: Error): void {
    if (!this.alive) return;
    this.alive = false;
    this.socket.destroy();
    const waiters = [...this.pending.values()];
    this.pending.clear();
    for (const w of waiters) w.reject(err);
    this.onDeath(this);
  }

  private onData(chunk: Buffer): void {
    let buf: Buffer;
    if (this.buffered === 0) {
      buf = chunk;
    } else {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
      // Join only once the frame at the front is complete.
      const head = this.chunks[0].length >= FRAME_HEADER_LEN ? this.chunks[0] : Buffer.concat(this.chunks);
      if (head.length >= FRAME_HEADER_LEN && this.buffered < FRAME_HEADER_LEN + head.readUInt32BE(0)) {
        return;
      }
      buf = Buffer.concat(this.chunks, this.buffered);
      this.chunks = [];
      this.buffered = 0;
    }
    let off = 0;
    while (this.alive && buf.length - off >= FRAME_HEADER_LEN) {
      const len = buf.readUInt32BE(off);
      if (len === 0 || len > Math.max(this.info.maxFrame, DEFAULT_MAX_FRAME)) {
        this.kill(new ProtocolError(`frame of ${len} bytes from shoald`));
        return;
      }
      if (buf.length - off < FRAME_HEADER_LEN + len) break;
      const body = buf.subarray(off + FRAME_HEADER_LEN, off + FRAME_HEADER_LEN + len);
      off += FRAME_HEADER_LEN + len;
      this.onFrame(body);
    }
    if (this.alive && off < buf.length) {
      const rest = buf.subarray(off);
      this.chunks = [rest];
      this.buffered = rest.length;
    }
  }

  private onFrame(body: Buffer): void {
    let resp;
    try {
      resp = decodeResponse(body);
    } catch (e) {
      this.kill(new ProtocolError(e instanceof Error ? e.message : String(e)));
      return;
    }
    if (resp.id === 0 && this.greeted) {
      // A connection-level error (frame_too_large, a bad frame, too many
      // connections): the server closes the connection after it.
      const code = resp.err?.code ?? 'internal';
      const msg = resp.err?.msg ?? 'unexpected response with id 0';
      this.kill(new ConnectionError(`shoald closed the connection: ${code}: ${msg}`, true));
      return;
    }
    const w = this.pending.get(resp.id);
    if (w === undefined) return; // timed out or aborted: nobody waits any more
    this.pending.delete(resp.id);
    if (resp.err !== undefined) {
      w.reject(new ServerError(resp.err.code, resp.err.msg));
    } else {
      w.resolve(resp.ok);
    }
  }
}

/** Whether `e` is one of ours (vs. an abort reason or a user error). */
export function isShoalError(e: unknown): e is ShoalError {
  return e instanceof ShoalError;
}
