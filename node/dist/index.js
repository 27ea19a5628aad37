"use strict";
/**
 * shoal-client: the Node client of shoald (coherent L1 cache, sessions, rate
 * limits over a Unix socket), plus Express middleware in `shoal-client/express`.
 *
 * ```js
 * const { Client } = require('shoal-client');
 * const shoal = await Client.connect('/run/shoal/shoal.sock');
 * await shoal.set('user:42', { name: 'alice' }, { ttlMs: 60_000 });
 * const user = await shoal.get('user:42');
 * ```
 */
Object.defineProperty(exports, "__esModule", { value: true });
exports.session = exports.rateLimit = exports.PROTOCOL_VERSION = exports.encodeValue = exports.decodeValue = exports.SessionCookie = exports.DEFAULT_COOKIE_NAME = exports.Decision = exports.TooLargeError = exports.TimeoutError = exports.ShoalError = exports.ServerError = exports.ProtocolError = exports.isRetryableCode = exports.ERROR_CODES = exports.ConnectionError = exports.CodecError = exports.ClosedError = exports.DEFAULT_ACQUIRE_MAX_WAIT_MS = exports.DEFAULT_SOCKET_PATH = exports.Client = void 0;
var client_1 = require("./client");
Object.defineProperty(exports, "Client", { enumerable: true, get: function () { return client_1.Client; } });
Object.defineProperty(exports, "DEFAULT_SOCKET_PATH", { enumerable: true, get: function () { return client_1.DEFAULT_SOCKET_PATH; } });
Object.defineProperty(exports, "DEFAULT_ACQUIRE_MAX_WAIT_MS", { enumerable: true, get: function () { return client_1.DEFAULT_ACQUIRE_MAX_WAIT_MS; } });
var errors_1 = require("./errors");
Object.defineProperty(exports, "ClosedError", { enumerable: true, get: function () { return errors_1.ClosedError; } });
Object.defineProperty(exports, "CodecError", { enumerable: true, get: function () { return errors_1.CodecError; } });
Object.defineProperty(exports, "ConnectionError", { enumerable: true, get: function () { return errors_1.ConnectionError; } });
Object.defineProperty(exports, "ERROR_CODES", { enumerable: true, get: function () { return errors_1.ERROR_CODES; } });
Object.defineProperty(exports, "isRetryableCode", { enumerable: true, get: function () { return errors_1.isRetryableCode; } });
Object.defineProperty(exports, "ProtocolError", { enumerable: true, get: function () { return errors_1.ProtocolError; } });
Object.defineProperty(exports, "ServerError", { enumerable: true, get: function () { return errors_1.ServerError; } });
Object.defineProperty(exports, "ShoalError", { enumerable: true, get: function () { return errors_1.ShoalError; } });
Object.defineProperty(exports, "TimeoutError", { enumerable: true, get: function () { return errors_1.TimeoutError; } });
Object.defineProperty(exports, "TooLargeError", { enumerable: true, get: function () { return errors_1.TooLargeError; } });
var ratelimit_1 = require("./ratelimit");
Object.defineProperty(exports, "Decision", { enumerable: true, get: function () { return ratelimit_1.Decision; } });
var session_1 = require("./session");
Object.defineProperty(exports, "DEFAULT_COOKIE_NAME", { enumerable: true, get: function () { return session_1.DEFAULT_COOKIE_NAME; } });
Object.defineProperty(exports, "SessionCookie", { enumerable: true, get: function () { return session_1.SessionCookie; } });
var value_1 = require("./value");
Object.defineProperty(exports, "decodeValue", { enumerable: true, get: function () { return value_1.decodeValue; } });
Object.defineProperty(exports, "encodeValue", { enumerable: true, get: function () { return value_1.encodeValue; } });
var protocol_1 = require("./protocol");
Object.defineProperty(exports, "PROTOCOL_VERSION", { enumerable: true, get: function () { return protocol_1.PROTOCOL_VERSION; } });
var express_1 = require("./express");
Object.defineProperty(exports, "rateLimit", { enumerable: true, get: function () { return express_1.rateLimit; } });
Object.defineProperty(exports, "session", { enumerable: true, get: function () { return express_1.session; } });
