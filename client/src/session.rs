//! Sessions through shoald: a typed API over the `session.*` ops, and a cookie
//! helper for carrying the token in a browser.
//!
//! The daemon keeps sessions in Redis under a keyed hash of their token and
//! validates hot sessions from its local cache; a revocation on any replica takes
//! effect on every replica within milliseconds. Session data is any serde type,
//! stored as MessagePack with named fields (like typed cache values), so the
//! Python and Node clients can read it.
//!
//! ```no_run
//! # async fn demo(client: shoal_client::Client) -> shoal_client::Result<()> {
//! use shoal_client::session::{SessionCookie, SessionOptions};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Login {
//!     roles: Vec<String>,
//! }
//!
//! // Login: create, then send the cookie.
//! let created = client
//!     .session_create("user-42", &Login { roles: vec!["admin".into()] }, SessionOptions::default())
//!     .await?;
//! let cookie = SessionCookie::default();
//! let set_cookie = cookie.set_cookie(&created.token, created.absolute_expires_at_ms);
//! # let _ = set_cookie;
//!
//! // Each request: read the token from the Cookie header, validate it.
//! let header = "theme=dark; __Host-session=...";
//! if let Some(token) = cookie.token_from_header(header) {
//!     match client.session_get::<Login>(token).await? {
//!         Some(s) => println!("{} is signed in", s.user),
//!         None => println!("unknown, expired or revoked: sign in again"),
//!     }
//! }
//!
//! // "Sign out everywhere":
//! client.session_revoke_user("user-42").await?;
//! # Ok(()) }
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::proto::{
    self, ErrorCode, Op, RevokeTarget, RevokeUserResult, RevokedResult, RotateResult,
    SessionCreated, SessionInfo, SessionListEntry, UpdatedResult,
};
use crate::{Client, Error, Result};

/// Per-session lifetimes; `None` means the daemon's configured default
/// (`session.idle_ttl`, `session.absolute_ttl`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionOptions {
    /// Sliding timeout: the session ends after this long without a `get`.
    pub idle_ttl: Option<Duration>,
    /// Hard limit from creation, however active the session is.
    pub absolute_ttl: Option<Duration>,
}

/// A validated session with its data decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session<T> {
    pub user: String,
    pub data: T,
    pub created_at_ms: u64,
    /// When the idle window last restarted (refreshes are coalesced, so this may
    /// lag the latest request by up to `session.touch_fraction` of the window).
    pub last_seen_ms: u64,
    /// When the session ends unless used again (never later than Redis drops it).
    pub expires_at_ms: u64,
    pub absolute_expires_at_ms: u64,
}

fn millis(d: Duration) -> u64 {
    // The protocol refuses 0 for durations; round sub-millisecond values up.
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// `not_found` is an answer here, not an error.
fn found<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Client {
    /// Creates a session for `user` holding `data`; the result carries the token
    /// (give it to the browser, e.g. with [`SessionCookie`]) and the expiries.
    pub async fn session_create<T: Serialize + ?Sized>(
        &self,
        user: &str,
        data: &T,
        options: SessionOptions,
    ) -> Result<SessionCreated> {
        let bytes = proto::to_value(data).map_err(Error::Codec)?;
        self.session_create_raw(user, bytes, options).await
    }

    /// [`session_create`](Self::session_create) with data you encoded yourself.
    pub async fn session_create_raw(
        &self,
        user: &str,
        data: impl Into<Bytes>,
        options: SessionOptions,
    ) -> Result<SessionCreated> {
        self.call(Op::SessionCreate {
            user: user.to_owned(),
            data: data.into(),
            idle_ttl_ms: options.idle_ttl.map(millis),
            absolute_ttl_ms: options.absolute_ttl.map(millis),
        })
        .await
    }

    /// Validates `token` and slides its idle expiry; `None` when the session is
    /// unknown, expired or revoked. Data that does not decode as `T` is
    /// [`Error::Codec`].
    pub async fn session_get<T: DeserializeOwned>(
        &self,
        token: &str,
    ) -> Result<Option<Session<T>>> {
        let Some(s) = self.session_get_raw(token, true).await? else {
            return Ok(None);
        };
        let data = proto::from_value(&s.data).map_err(Error::Codec)?;
        Ok(Some(Session {
            user: s.user,
            data,
            created_at_ms: s.created_at_ms,
            last_seen_ms: s.last_seen_ms,
            expires_at_ms: s.expires_at_ms,
            absolute_expires_at_ms: s.absolute_expires_at_ms,
        }))
    }

    /// The raw `session.get` result. `touch: false` validates without counting
    /// as activity (the idle expiry does not slide).
    pub async fn session_get_raw(&self, token: &str, touch: bool) -> Result<Option<SessionInfo>> {
        found(
            self.call(Op::SessionGet {
                token: token.to_owned(),
                touch,
            })
            .await,
        )
    }

    /// Replaces the session's data, on every daemon. `false` when the session
    /// is unknown, expired or revoked.
    pub async fn session_update<T: Serialize + ?Sized>(
        &self,
        token: &str,
        data: &T,
    ) -> Result<bool> {
        let bytes = proto::to_value(data).map_err(Error::Codec)?;
        self.session_update_raw(token, bytes).await
    }

    /// [`session_update`](Self::session_update) with data you encoded yourself.
    pub async fn session_update_raw(&self, token: &str, data: impl Into<Bytes>) -> Result<bool> {
        let r: UpdatedResult = self
            .call(Op::SessionUpdate {
                token: token.to_owned(),
                data: data.into(),
            })
            .await?;
        Ok(r.updated)
    }

    /// Issues a new token for the session (same user, data and absolute expiry)
    /// and revokes the old one everywhere: call it on privilege changes such as
    /// login, to defeat session fixation. `None` when the session is gone.
    pub async fn session_rotate(&self, token: &str) -> Result<Option<String>> {
        let r: Option<RotateResult> = found(
            self.call(Op::SessionRotate {
                token: token.to_owned(),
            })
            .await,
        )?;
        Ok(r.map(|r| r.token))
    }

    /// Revokes the session of `token` on every daemon (logout). `false` when it
    /// did not exist.
    pub async fn session_revoke(&self, token: &str) -> Result<bool> {
        self.revoke(RevokeTarget::Token(token.to_owned())).await
    }

    /// Revokes a session by the id [`session_list`](Self::session_list) shows
    /// (an admin or "other devices" page that never sees tokens).
    pub async fn session_revoke_id(&self, session_id: &str) -> Result<bool> {
        self.revoke(RevokeTarget::SessionId(session_id.to_owned()))
            .await
    }

    async fn revoke(&self, target: RevokeTarget) -> Result<bool> {
        let r: RevokedResult = self.call(Op::SessionRevoke { target }).await?;
        Ok(r.revoked)
    }

    /// Revokes every session of `user`, created on any replica ("sign out
    /// everywhere"). Returns how many sessions Redis held.
    pub async fn session_revoke_user(&self, user: &str) -> Result<u64> {
        let r: RevokeUserResult = self
            .call(Op::SessionRevokeUser {
                user: user.to_owned(),
            })
            .await?;
        Ok(r.revoked)
    }

    /// The live sessions of `user`, by session id (never the token).
    pub async fn session_list(&self, user: &str) -> Result<Vec<SessionListEntry>> {
        self.call(Op::SessionList {
            user: user.to_owned(),
        })
        .await
    }
}

/// The default cookie name. The `__Host-` prefix makes browsers insist on
/// `Secure`, `Path=/` and no `Domain`, which is what [`SessionCookie`] sends.
pub const DEFAULT_COOKIE_NAME: &str = "__Host-session";

/// Why a cookie could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    /// Cookie names are RFC 6265 tokens: visible ASCII without separators.
    #[error("{0:?} is not a valid cookie name")]
    BadName(String),
    /// Tokens are URL-safe base64; anything else cannot be one (it is not shown).
    #[error("the session token contains characters a cookie value cannot carry")]
    BadToken,
}

/// Builds the `Set-Cookie` value that carries a session token, and finds the
/// token in a request's `Cookie` header.
///
/// The cookie is `HttpOnly` (scripts cannot read it), `Secure` (HTTPS only),
/// `SameSite=Lax` (not sent on cross-site subrequests), `Path=/`, and lives until
/// the session's absolute expiry (`Max-Age`); idle expiry is enforced by shoald.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionCookie {
    name: String,
}

impl Default for SessionCookie {
    fn default() -> Self {
        SessionCookie {
            name: DEFAULT_COOKIE_NAME.to_owned(),
        }
    }
}

fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

fn is_token_text(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl SessionCookie {
    /// A cookie of another name.
    pub fn named(name: impl Into<String>) -> std::result::Result<Self, CookieError> {
        let name = name.into();
        if !is_cookie_name(&name) {
            return Err(CookieError::BadName(name));
        }
        Ok(SessionCookie { name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `Set-Cookie` header value for `token`, living until
    /// `absolute_expires_at_ms` (from `session_create` or `session_get`).
    ///
    /// A token that is not URL-safe base64 (never one shoald issued) gives an
    /// expired cookie rather than a header that could be split or injected.
    pub fn set_cookie(&self, token: &str, absolute_expires_at_ms: u64) -> String {
        self.try_set_cookie_at(token, absolute_expires_at_ms, now_ms())
            .unwrap_or_else(|_| self.clear_cookie())
    }

    /// [`set_cookie`](Self::set_cookie) at a given time, failing on a bad token.
    pub fn try_set_cookie_at(
        &self,
        token: &str,
        absolute_expires_at_ms: u64,
        now_ms: u64,
    ) -> std::result::Result<String, CookieError> {
        if !is_token_text(token) {
            return Err(CookieError::BadToken);
        }
        // Round up: the cookie must not vanish before the last usable moment;
        // the daemon refuses the token after it anyway.
        let max_age = absolute_expires_at_ms.saturating_sub(now_ms).div_ceil(1000);
        Ok(format!(
            "{}={token}; Max-Age={max_age}; Path=/; Secure; HttpOnly; SameSite=Lax",
            self.name
        ))
    }

    /// A `Set-Cookie` value that deletes the cookie (after logout).
    pub fn clear_cookie(&self) -> String {
        format!(
            "{}=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Lax",
            self.name
        )
    }

    /// The session token in a `Cookie` request header, if there is one of this
    /// cookie's name whose value could be a token.
    pub fn token_from_header<'h>(&self, cookie_header: &'h str) -> Option<&'h str> {
        cookie_header
            .split(';')
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(name, _)| name.trim() == self.name)
            .map(|(_, value)| {
                let v = value.trim();
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v)
            })
            .find(|v| is_token_text(v))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const TOKEN: &str = "q3QzJ8Y2rX0nVb1mK9wT5eH7uA4cL6dF2gP8sZ1oR3i";

    #[test]
    fn set_cookie_has_every_attribute_and_max_age_from_absolute_expiry() {
        let c = SessionCookie::default();
        let v = c
            .try_set_cookie_at(TOKEN, 1_000_000 + 3_600_000, 1_000_000)
            .unwrap();
        assert_eq!(
            v,
            format!("__Host-session={TOKEN}; Max-Age=3600; Path=/; Secure; HttpOnly; SameSite=Lax")
        );
        // Partial seconds round up; a past expiry is 0.
        let v = c.try_set_cookie_at(TOKEN, 1_001, 0).unwrap();
        assert!(v.contains("Max-Age=2;"), "{v}");
        let v = c.try_set_cookie_at(TOKEN, 5, 10).unwrap();
        assert!(v.contains("Max-Age=0;"), "{v}");
    }

    #[test]
    fn bad_tokens_and_names_are_refused() {
        let c = SessionCookie::default();
        assert_eq!(
            c.try_set_cookie_at("a; Domain=evil", 10, 0),
            Err(CookieError::BadToken)
        );
        assert_eq!(c.try_set_cookie_at("", 10, 0), Err(CookieError::BadToken));
        assert_eq!(
            c.set_cookie("x\r\nSet-Cookie: y", u64::MAX),
            c.clear_cookie()
        );
        assert!(SessionCookie::named("sid").is_ok());
        assert!(SessionCookie::named("bad name").is_err());
        assert!(SessionCookie::named("a=b").is_err());
        assert!(SessionCookie::named("").is_err());
        let err = CookieError::BadToken.to_string();
        assert!(!err.contains(TOKEN));
    }

    #[test]
    fn clear_cookie_expires_it() {
        let v = SessionCookie::named("sid").unwrap().clear_cookie();
        assert_eq!(v, "sid=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Lax");
    }

    #[test]
    fn token_is_found_in_a_cookie_header() {
        let c = SessionCookie::default();
        let h = format!("theme=dark; __Host-session={TOKEN}; lang=en");
        assert_eq!(c.token_from_header(&h), Some(TOKEN));
        let h = format!("__Host-session=\"{TOKEN}\"");
        assert_eq!(c.token_from_header(&h), Some(TOKEN));
        let h = format!("  __Host-session = {TOKEN} ");
        assert_eq!(c.token_from_header(&h), Some(TOKEN));
        // Another cookie whose name ends the same, an empty or bad value: skipped.
        let h = format!(
            "x__Host-session=nope; __Host-session=; __Host-session=a b; __Host-session={TOKEN}"
        );
        assert_eq!(c.token_from_header(&h), Some(TOKEN));
        assert_eq!(c.token_from_header("theme=dark"), None);
        assert_eq!(c.token_from_header(""), None);
        assert_eq!(c.token_from_header(";;=;"), None);
    }

    #[test]
    fn set_cookie_roundtrips_through_the_parser() {
        let c = SessionCookie::named("sid").unwrap();
        let set = c.set_cookie(TOKEN, now_ms() + 60_000);
        // A browser sends back only name=value.
        let pair = set.split(';').next().unwrap();
        assert_eq!(c.token_from_header(pair), Some(TOKEN));
        assert!(
            set.contains("Max-Age=60;") || set.contains("Max-Age=59;"),
            "{set}"
        );
    }
}
