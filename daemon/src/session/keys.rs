//! Where sessions live in Redis, and the keyed hash that names them there.
//!
//! A session is stored under `HMAC-SHA256(fleet key, token)`, never under the
//! token: a copy of Redis (a dump, a replica, `MONITOR`) does not hand out
//! credentials, and without the fleet key it cannot even be checked against a
//! token. The same hash, base64url, is the `session_id` that `session.list`
//! returns: it names a session without granting it.

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Length of a session hash (and so of a session id): 32 bytes in base64url.
pub const SESSION_HASH_LEN: usize = 43;
/// Shortest token we issue or accept: 32 random bytes in base64url.
pub const MIN_TOKEN_LEN: usize = 43;

/// Names of the session keys under `redis.prefix`.
#[derive(Debug, Clone)]
pub struct SessionKeys {
    prefix: String,
}

impl SessionKeys {
    pub fn new(prefix: &str) -> Self {
        SessionKeys {
            prefix: prefix.to_string(),
        }
    }
    /// The session itself (a hash), named by the keyed hash of its token.
    pub fn session(&self, hash: &str) -> String {
        format!("{}s:{hash}", self.prefix)
    }
    /// A user's sessions (a sorted set of hashes, scored by absolute expiry).
    pub fn index(&self, user: &str) -> String {
        format!("{}su:{user}", self.prefix)
    }
    /// A user's revocation epoch (raised by `session.revoke_user`).
    pub fn epoch(&self, user: &str) -> String {
        format!("{}se:{user}", self.prefix)
    }
    /// The revocation stream every daemon tails.
    pub fn stream(&self) -> String {
        format!("{}srev", self.prefix)
    }
    /// The fleet's hash key, when none is configured.
    pub fn hash_key(&self) -> String {
        format!("{}skey", self.prefix)
    }
}

/// The keyed hash of session tokens. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct TokenHasher {
    mac: HmacSha256,
}

impl fmt::Debug for TokenHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHasher(..)")
    }
}

impl TokenHasher {
    /// `None` only if the HMAC implementation refuses the key (it accepts any length).
    pub fn new(key: &[u8]) -> Option<TokenHasher> {
        HmacSha256::new_from_slice(key)
            .ok()
            .map(|mac| TokenHasher { mac })
    }

    /// The session hash (and session id) of `token`.
    pub fn session_hash(&self, token: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(token.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }
}

fn is_base64url(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `token` could be one we issued. Anything else is unknown without
/// asking Redis (and without hashing attacker-chosen garbage).
pub fn plausible_token(token: &str) -> bool {
    token.len() >= MIN_TOKEN_LEN && is_base64url(token)
}

/// Whether `id` has the shape of a session id.
pub fn plausible_session_id(id: &str) -> bool {
    id.len() == SESSION_HASH_LEN && is_base64url(id)
}

/// The token hash key in use and its hasher. `Debug` shows neither.
#[derive(Clone)]
pub struct FleetKey {
    pub(super) raw: Arc<str>,
    pub(super) hasher: Arc<TokenHasher>,
}

impl std::fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetKey(..)")
    }
}

impl FleetKey {
    pub fn new(raw: &str) -> Option<FleetKey> {
        Some(FleetKey {
            raw: Arc::from(raw),
            hasher: Arc::new(TokenHasher::new(raw.as_bytes())?),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hash_is_keyed_stable_and_not_the_token() {
        let token = crate::random::random_token(32);
        let a = TokenHasher::new(b"0123456789abcdef0123456789abcdef").unwrap();
        let b = TokenHasher::new(b"another key, another fleet.......").unwrap();
        let h = a.session_hash(&token);
        assert_eq!(h, a.session_hash(&token));
        assert_ne!(h, b.session_hash(&token));
        assert_ne!(h, token);
        assert!(plausible_session_id(&h));
        assert!(!format!("{a:?}").contains("0123"));
    }

    #[test]
    fn token_shapes() {
        let t = crate::random::random_token(32);
        assert_eq!(t.len(), 43);
        assert!(plausible_token(&t));
        assert!(!plausible_token("short"));
        assert!(!plausible_token(&format!("{}=", &t)));
        assert!(!plausible_token(&"é".repeat(30)));
        assert!(!plausible_session_id("x"));
    }

    #[test]
    fn key_names_use_the_prefix() {
        let k = SessionKeys::new("p:");
        assert_eq!(k.session("h"), "p:s:h");
        assert_eq!(k.index("u"), "p:su:u");
        assert_eq!(k.epoch("u"), "p:se:u");
        assert_eq!(k.stream(), "p:srev");
        assert_eq!(k.hash_key(), "p:skey");
    }
}
