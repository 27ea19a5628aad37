"use strict";
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
var __createBinding = (this && this.__createBinding) || (Object.create ? (function(o, m, k, k2) {
    if (k2 === undefined) k2 = k;
    var desc = Object.getOwnPropertyDescriptor(m, k);
    if (!desc || ("get" in desc ? !m.__esModule : desc.writable || desc.configurable)) {
      desc = { enumerable: true, get: function() { return m[k]; } };
    }
    Object.defineProperty(o, k2, desc);
}) : (function(o, m, k, k2) {
    if (k2 === undefined) k2 = k;
    o[k2] = m[k];
}));
var __setModuleDefault = (this && this.__setModuleDefault) || (Object.create ? (function(o, v) {
    Object.defineProperty(o, "default", { enumerable: true, value: v });
}) : function(o, v) {
    o["default"] = v;
});
var __importStar = (this && this.__importStar) || (function () {
    var ownKeys = function(o) {
        ownKeys = Object.getOwnPropertyNames || function (o) {
            var ar = [];
            for (var k in o) if (Object.prototype.hasOwnProperty.call(o, k)) ar[ar.length] = k;
            return ar;
        };
        return ownKeys(o);
    };
    return function (mod) {
        if (mod && mod.__esModule) return mod;
        var result = {};
        if (mod != null) for (var k = ownKeys(mod), i = 0; i < k.length; i++) if (k[i] !== "default") __createBinding(result, mod, k[i]);
        __setModuleDefault(result, mod);
        return result;
    };
})();
Object.defineProperty(exports, "__esModule", { value: true });
exports.Connection = void 0;
exports.isShoalError = isShoalError;
const net = __importStar(require("node:net"));
const errors_1 = require("./errors");
const protocol_1 = require("./protocol");
class Connection {
    socket;
    info = { version: 0, server: '', node: '', maxFrame: protocol_1.DEFAULT_MAX_FRAME };
    alive = true;
    greeted = false;
    pending = new Map();
    onDeath;
    // Bytes received but not yet a whole frame: a list of chunks, joined only when
    // a frame is complete, so a large frame arriving in many chunks is copied once.
    chunks = [];
    buffered = 0;
    // The first write of a tick goes out at once (a lone call pays no batching
    // delay); later writes in the same tick are corked and leave together in one
    // writev when the tick ends.
    inTick = false;
    corked = false;
    endTick = () => {
        this.inTick = false;
        if (this.corked) {
            this.corked = false;
            this.socket.uncork();
        }
    };
    constructor(socket, onDeath) {
        this.socket = socket;
        this.onDeath = onDeath;
        socket.on('data', (chunk) => this.onData(chunk));
        socket.on('error', (err) => this.kill(new errors_1.ConnectionError(`shoald connection error: ${err.message}`, true, { cause: err })));
        socket.on('close', () => this.kill(new errors_1.ConnectionError('connection to shoald lost', true)));
    }
    /** Connects to `path` and performs the `hello` handshake within `timeoutMs`. */
    static open(path, clientName, timeoutMs, onDeath) {
        return new Promise((resolve, reject) => {
            const socket = net.createConnection({ path });
            const conn = new Connection(socket, onDeath);
            let done = false;
            const finish = (err) => {
                if (done)
                    return;
                done = true;
                clearTimeout(timer);
                if (err) {
                    conn.kill(err);
                    reject(err instanceof errors_1.ConnectionError || err instanceof errors_1.ServerError
                        ? err
                        : new errors_1.ConnectionError(`cannot connect to shoald at ${path}: ${err.message}`, false, { cause: err }));
                }
                else {
                    resolve(conn);
                }
            };
            const timer = setTimeout(() => finish(new errors_1.ConnectionError(`no handshake with shoald at ${path} within ${timeoutMs} ms`, false)), timeoutMs);
            socket.once('error', (err) => finish(new errors_1.ConnectionError(`cannot connect to shoald at ${path}: ${err.message}`, false, { cause: err })));
            conn.pending.set(0, {
                resolve: (ok) => {
                    const h = ok;
                    if (h === null || typeof h !== 'object' || typeof h.max_frame !== 'number') {
                        finish(new errors_1.ProtocolError('malformed hello result'));
                        return;
                    }
                    conn.info = { version: h.version, server: h.server, node: h.node, maxFrame: h.max_frame };
                    conn.greeted = true;
                    finish(null);
                },
                reject: (err) => finish(err),
            });
            socket.once('connect', () => {
                socket.write((0, protocol_1.encodeRequest)(0, 'hello', { version: protocol_1.PROTOCOL_VERSION, client: clientName }));
            });
        });
    }
    get pendingCount() {
        return this.pending.size;
    }
    /** Registers `waiter` for `id` and writes `frame`. The connection must be alive. */
    send(id, frame, waiter) {
        this.pending.set(id, waiter);
        if (!this.inTick) {
            this.inTick = true;
            process.nextTick(this.endTick);
        }
        else if (!this.corked) {
            this.corked = true;
            this.socket.cork();
        }
        this.socket.write(frame);
    }
    /** Forgets `id` (timed out or aborted): a late response is discarded. */
    forget(id) {
        this.pending.delete(id);
    }
    /** Ends the connection, failing every pending call with `err`. */
    kill(err) {
        if (!this.alive)
            return;
        this.alive = false;
        this.socket.destroy();
        const waiters = [...this.pending.values()];
        this.pending.clear();
        for (const w of waiters)
            w.reject(err);
        this.onDeath(this);
    }
    onData(chunk) {
        let buf;
        if (this.buffered === 0) {
            buf = chunk;
        }
        else {
            this.chunks.push(chunk);
            this.buffered += chunk.length;
            // Join only once the frame at the front is complete.
            const head = this.chunks[0].length >= protocol_1.FRAME_HEADER_LEN ? this.chunks[0] : Buffer.concat(this.chunks);
            if (head.length >= protocol_1.FRAME_HEADER_LEN && this.buffered < protocol_1.FRAME_HEADER_LEN + head.readUInt32BE(0)) {
                return;
            }
            buf = Buffer.concat(this.chunks, this.buffered);
            this.chunks = [];
            this.buffered = 0;
        }
        let off = 0;
        while (this.alive && buf.length - off >= protocol_1.FRAME_HEADER_LEN) {
            const len = buf.readUInt32BE(off);
            if (len === 0 || len > Math.max(this.info.maxFrame, protocol_1.DEFAULT_MAX_FRAME)) {
                this.kill(new errors_1.ProtocolError(`frame of ${len} bytes from shoald`));
                return;
            }
            if (buf.length - off < protocol_1.FRAME_HEADER_LEN + len)
                break;
            const body = buf.subarray(off + protocol_1.FRAME_HEADER_LEN, off + protocol_1.FRAME_HEADER_LEN + len);
            off += protocol_1.FRAME_HEADER_LEN + len;
            this.onFrame(body);
        }
        if (this.alive && off < buf.length) {
            const rest = buf.subarray(off);
            this.chunks = [rest];
            this.buffered = rest.length;
        }
    }
    onFrame(body) {
        let resp;
        try {
            resp = (0, protocol_1.decodeResponse)(body);
        }
        catch (e) {
            this.kill(new errors_1.ProtocolError(e instanceof Error ? e.message : String(e)));
            return;
        }
        if (resp.id === 0 && this.greeted) {
            // A connection-level error (frame_too_large, a bad frame, too many
            // connections): the server closes the connection after it.
            const code = resp.err?.code ?? 'internal';
            const msg = resp.err?.msg ?? 'unexpected response with id 0';
            this.kill(new errors_1.ConnectionError(`shoald closed the connection: ${code}: ${msg}`, true));
            return;
        }
        const w = this.pending.get(resp.id);
        if (w === undefined)
            return; // timed out or aborted: nobody waits any more
        this.pending.delete(resp.id);
        if (resp.err !== undefined) {
            w.reject(new errors_1.ServerError(resp.err.code, resp.err.msg));
        }
        else {
            w.resolve(resp.ok);
        }
    }
}
exports.Connection = Connection;
/** Whether `e` is one of ours (vs. an abort reason or a user error). */
function isShoalError(e) {
    return e instanceof errors_1.ShoalError;
}
