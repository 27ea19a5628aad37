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
import { ShoalError } from './errors';
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
export declare class Connection {
    readonly socket: net.Socket;
    info: ServerInfo;
    alive: boolean;
    private greeted;
    private readonly pending;
    private readonly onDeath;
    private chunks;
    private buffered;
    private inTick;
    private corked;
    private readonly endTick;
    private constructor();
    /** Connects to `path` and performs the `hello` handshake within `timeoutMs`. */
    static open(path: string, clientName: string, timeoutMs: number, onDeath: (conn: Connection) => void): Promise<Connection>;
    get pendingCount(): number;
    /** Registers `waiter` for `id` and writes `frame`. The connection must be alive. */
    send(id: number, frame: Buffer, waiter: Waiter): void;
    /** Forgets `id` (timed out or aborted): a late response is discarded. */
    forget(id: number): void;
    /** Ends the connection, failing every pending call with `err`. */
    kill(err: Error): void;
    private onData;
    private onFrame;
}
/** Whether `e` is one of ours (vs. an abort reason or a user error). */
export declare function isShoalError(e: unknown): e is ShoalError;
