//! The rate-limit service's shared types: the numbers in force for a key, one
//! decision (`Verdict`), and why an op failed. Every other file here uses them;
//! they use nothing of the service.

use shoal_client::proto::ErrorCode;

use crate::config::{Algorithm, RATELIMIT_MAX_UNITS};
use crate::error::OpError;
use crate::store::StoreError;

use super::deny::CachedDenial;

/// The numbers in force for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Numbers {
    /// Requests per window (leases at once for `concurrency`).
    pub limit: u64,
    /// How many may pass at once (token bucket, GCRA); equals `limit` elsewhere.
    pub burst: u64,
}

impl Numbers {
    /// The largest cost a single request can ever be allowed.
    pub fn capacity(&self, algorithm: Algorithm) -> u64 {
        match algorithm {
            Algorithm::TokenBucket | Algorithm::Gcra => self.burst,
            _ => self.limit,
        }
    }

    /// Parses the stored form of a runtime override: `"limit"` or `"limit:burst"`.
    pub fn parse_stored(s: &str) -> Option<Numbers> {
        let (limit, burst) = match s.split_once(':') {
            Some((l, b)) => (l.parse().ok()?, Some(b.parse().ok()?)),
            None => (s.parse().ok()?, None),
        };
        Numbers::new(limit, burst)
    }

    /// The stored form of these numbers.
    pub fn to_stored(self) -> String {
        format!("{}:{}", self.limit, self.burst)
    }

    /// Numbers from a limit and an optional burst (default: the limit).
    pub fn new(limit: u64, burst: Option<u64>) -> Option<Numbers> {
        let burst = burst.unwrap_or(limit);
        (limit > 0 && burst > 0).then_some(Numbers { limit, burst })
    }

    /// Whether the scripts' integer arithmetic stays exact with these numbers.
    pub fn fits(&self, window_ms: u64) -> bool {
        self.limit
            .max(self.burst)
            .checked_mul(window_ms)
            .is_some_and(|u| u <= RATELIMIT_MAX_UNITS)
    }
}

/// Why a rate-limit op failed.
#[derive(Debug, thiserror::Error)]
pub enum RatelimitError {
    #[error("unknown rate-limit policy `{0}`")]
    UnknownPolicy(String),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<RatelimitError> for OpError {
    fn from(e: RatelimitError) -> Self {
        match e {
            RatelimitError::UnknownPolicy(_) => {
                OpError::new(ErrorCode::UnknownPolicy, e.to_string())
            }
            RatelimitError::BadRequest(msg) => OpError::new(ErrorCode::BadRequest, msg),
            RatelimitError::Store(s) => s.into(),
        }
    }
}

/// One decision, from a script or a fail mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    pub reset_after_ms: u64,
    /// 0 when allowed (for a reservation: the wait before the booked slot).
    pub retry_after_ms: u64,
}

impl Verdict {
    pub fn allowed(limit: u64, remaining: u64, reset_after_ms: u64) -> Verdict {
        Verdict {
            allowed: true,
            limit,
            remaining,
            reset_after_ms,
            retry_after_ms: 0,
        }
    }

    pub fn denied(limit: u64, remaining: u64, reset_after_ms: u64, retry_after_ms: u64) -> Verdict {
        Verdict {
            allowed: false,
            limit,
            remaining,
            reset_after_ms,
            retry_after_ms: retry_after_ms.max(1),
        }
    }
}

impl From<CachedDenial> for Verdict {
    fn from(d: CachedDenial) -> Verdict {
        Verdict::denied(d.limit, d.remaining, d.reset_after_ms, d.retry_after_ms)
    }
}

impl From<Verdict> for CachedDenial {
    fn from(v: Verdict) -> CachedDenial {
        CachedDenial {
            limit: v.limit,
            remaining: v.remaining,
            reset_after_ms: v.reset_after_ms,
            retry_after_ms: v.retry_after_ms,
        }
    }
}
