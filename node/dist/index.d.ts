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
export { Client, DEFAULT_SOCKET_PATH, DEFAULT_ACQUIRE_MAX_WAIT_MS, type Acquired, type CallOptions, type CheckOptions, type ClientOptions, type GetResult, type LoadOptions, type ReserveOptions, type Session, type SessionCreated, type SessionListEntry, type SessionOptions, type SetOptions, type Source, } from './client';
export type { ServerInfo } from './connection';
export { ClosedError, CodecError, ConnectionError, ERROR_CODES, isRetryableCode, ProtocolError, ServerError, ShoalError, TimeoutError, TooLargeError, type ClientErrorCode, type ErrorCode, } from './errors';
export { Decision, type Concurrent, type QuotaKeyUsage, type QuotaUsage, type Reservation } from './ratelimit';
export { DEFAULT_COOKIE_NAME, SessionCookie } from './session';
export { decodeValue, encodeValue } from './value';
export { PROTOCOL_VERSION } from './protocol';
export { rateLimit, session, type RateLimitOptions, type SessionMiddlewareOptions, type ShoalSession } from './express';
