/**
 * The session cookie: builds the `Set-Cookie` value that carries a session token
 * and finds the token in a request's `Cookie` header.
 *
 * Attributes mirror the Rust client's `SessionCookie`, byte for byte: the default
 * name `__Host-session` (browsers then insist on `Secure`, `Path=/` and no
 * `Domain`), `HttpOnly` (scripts cannot read it), `Secure`, `SameSite=Lax`, and
 * `Max-Age` up to the session's absolute expiry, rounded up to whole seconds;
 * idle expiry is enforced by shoald.
 */
/** The default cookie name. */
export declare const DEFAULT_COOKIE_NAME = "__Host-session";
/** URL-safe base64 text: what a shoald token is made of. */
export declare function isTokenText(s: string): boolean;
/** Builds and reads the cookie that carries a session token. */
export declare class SessionCookie {
    readonly name: string;
    /** A cookie named `name` (default `__Host-session`); throws on a name that is not an RFC 6265 token. */
    constructor(name?: string);
    /**
     * The `Set-Cookie` value for `token`, living until `absoluteExpiresAtMs`. A token
     * that is not URL-safe base64 (never one shoald issued) gives an expired cookie
     * rather than a header that could be split or injected.
     */
    setCookie(token: string, absoluteExpiresAtMs: number, nowMs?: number): string;
    /** A `Set-Cookie` value that deletes the cookie (after logout). */
    clearCookie(): string;
    /** The session token in a `Cookie` request header, if one of this name could be a token. */
    tokenFromHeader(cookieHeader: string | undefined | null): string | null;
}
