"use strict";
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
Object.defineProperty(exports, "__esModule", { value: true });
exports.SessionCookie = exports.DEFAULT_COOKIE_NAME = void 0;
exports.isTokenText = isTokenText;
/** The default cookie name. */
exports.DEFAULT_COOKIE_NAME = '__Host-session';
const SEPARATORS = '()<>@,;:\\"/[]?={}';
function isCookieName(name) {
    if (name.length === 0)
        return false;
    for (let i = 0; i < name.length; i++) {
        const c = name.charCodeAt(i);
        // Visible ASCII (0x21..0x7e) without separators.
        if (c < 0x21 || c > 0x7e || SEPARATORS.includes(name[i]))
            return false;
    }
    return true;
}
/** URL-safe base64 text: what a shoald token is made of. */
function isTokenText(s) {
    return /^[A-Za-z0-9_-]+$/.test(s);
}
/** Builds and reads the cookie that carries a session token. */
class SessionCookie {
    name;
    /** A cookie named `name` (default `__Host-session`); throws on a name that is not an RFC 6265 token. */
    constructor(name = exports.DEFAULT_COOKIE_NAME) {
        if (!isCookieName(name)) {
            throw new TypeError(`${JSON.stringify(name)} is not a valid cookie name`);
        }
        this.name = name;
    }
    /**
     * The `Set-Cookie` value for `token`, living until `absoluteExpiresAtMs`. A token
     * that is not URL-safe base64 (never one shoald issued) gives an expired cookie
     * rather than a header that could be split or injected.
     */
    setCookie(token, absoluteExpiresAtMs, nowMs = Date.now()) {
        if (!isTokenText(token))
            return this.clearCookie();
        // Round up: the cookie must not vanish before the last usable moment.
        const maxAge = Math.ceil(Math.max(0, absoluteExpiresAtMs - nowMs) / 1000);
        return `${this.name}=${token}; Max-Age=${maxAge}; Path=/; Secure; HttpOnly; SameSite=Lax`;
    }
    /** A `Set-Cookie` value that deletes the cookie (after logout). */
    clearCookie() {
        return `${this.name}=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Lax`;
    }
    /** The session token in a `Cookie` request header, if one of this name could be a token. */
    tokenFromHeader(cookieHeader) {
        if (!cookieHeader)
            return null;
        for (const pair of cookieHeader.split(';')) {
            const eq = pair.indexOf('=');
            if (eq < 0)
                continue;
            if (pair.slice(0, eq).trim() !== this.name)
                continue;
            let v = pair.slice(eq + 1).trim();
            if (v.length >= 2 && v.startsWith('"') && v.endsWith('"'))
                v = v.slice(1, -1);
            if (isTokenText(v))
                return v;
        }
        return null;
    }
}
exports.SessionCookie = SessionCookie;
