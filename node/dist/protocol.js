"use strict";
/**
 * The shoal wire protocol, version 1, as this client speaks it: framing, the
 * request envelope, and the shapes of the results shoald answers with.
 *
 * A frame is a 4-byte big-endian length `N`, then `N` bytes holding one
 * MessagePack map. Requests are `{id, op, ...arguments}`; responses are
 * `{id, ok}` or `{id, err: {code, msg}}`, matched to requests by `id` (they may
 * come back in any order). Field names here are the wire's snake_case; the
 * `Client` methods convert them to camelCase results. The contract is the
 * repository's PROTOCOL.md and PROTOCOL-EXTENSIONS.md.
 */
Object.defineProperty(exports, "__esModule", { value: true });
exports.DEFAULT_MAX_FRAME = exports.FRAME_HEADER_LEN = exports.PROTOCOL_VERSION = void 0;
exports.encodeRequest = encodeRequest;
exports.decodeResponse = decodeResponse;
const msgpack_1 = require("@msgpack/msgpack");
/** The protocol version this client speaks. */
exports.PROTOCOL_VERSION = 1;
/** Bytes in the frame length prefix. */
exports.FRAME_HEADER_LEN = 4;
/** Default largest frame (16 MiB), until the server says otherwise in `hello`. */
exports.DEFAULT_MAX_FRAME = 16 * 1024 * 1024;
// One encoder and decoder for every request and response of the process: they
// keep their buffers and key caches between calls, and JavaScript runs one call
// at a time, so sharing them is safe.
const encoder = new msgpack_1.Encoder({ ignoreUndefined: true });
const decoder = new msgpack_1.Decoder();
/**
 * Encodes `{id, op, ...args}` as a complete frame (length prefix included).
 * Arguments that are `undefined` are left out (the protocol's "absent").
 */
function encodeRequest(id, op, args) {
    const req = { id, op };
    if (args !== undefined) {
        // `id` and `op` belong to the envelope: an argument cannot replace them.
        for (const k in args)
            if (k !== 'id' && k !== 'op')
                req[k] = args[k];
    }
    const body = encoder.encodeSharedRef(req);
    const frame = Buffer.allocUnsafe(exports.FRAME_HEADER_LEN + body.byteLength);
    frame.writeUInt32BE(body.byteLength, 0);
    frame.set(body, exports.FRAME_HEADER_LEN);
    return frame;
}
/** Decodes one frame body into a response; throws a message string when it is not one. */
function decodeResponse(body) {
    const v = decoder.decode(body);
    if (v === null || typeof v !== 'object' || Array.isArray(v) || v instanceof Uint8Array) {
        throw new Error('a response must be a map');
    }
    const id = v.id;
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) {
        throw new Error('a response must have an unsigned integer `id`');
    }
    if ('err' in v && v.err !== undefined && v.err !== null) {
        const e = v.err;
        if (typeof e !== 'object' || typeof e.code !== 'string') {
            throw new Error('`err` must be a map with a string `code`');
        }
        return { id, err: { ...e, code: e.code, msg: typeof e.msg === 'string' ? e.msg : '' } };
    }
    if (!('ok' in v)) {
        throw new Error('response has neither `ok` nor `err`');
    }
    return { id, ok: v.ok };
}
