//! The rate-limit scripts, loaded from `lua/rl_*.lua` at compile time, and the
//! decoding of their replies. Each script's header lists its KEYS and ARGV.

use redis::Script;

use crate::config::Algorithm;
use crate::store::StoreError;

use super::Verdict;

/// Every rate-limit script.
#[derive(Debug)]
pub struct Scripts {
    pub fixed_window: Script,
    pub sliding_log: Script,
    pub sliding_counter: Script,
    pub token_bucket: Script,
    pub gcra: Script,
    pub concurrency: Script,
    pub release: Script,
    pub set_override: Script,
}

const FIXED_WINDOW: &str = include_str!("../../../lua/rl_fixed_window.lua");
const SLIDING_LOG: &str = include_str!("../../../lua/rl_sliding_log.lua");
const SLIDING_COUNTER: &str = include_str!("../../../lua/rl_sliding_counter.lua");
const TOKEN_BUCKET: &str = include_str!("../../../lua/rl_token_bucket.lua");
const GCRA: &str = include_str!("../../../lua/rl_gcra.lua");
const CONCURRENCY: &str = include_str!("../../../lua/rl_concurrency.lua");
const RELEASE: &str = include_str!("../../../lua/rl_release.lua");
const OVERRIDE: &str = include_str!("../../../lua/rl_override.lua");

/// The source of every script (to preload them with `SCRIPT LOAD`).
pub const SOURCES: [&str; 8] = [
    FIXED_WINDOW,
    SLIDING_LOG,
    SLIDING_COUNTER,
    TOKEN_BUCKET,
    GCRA,
    CONCURRENCY,
    RELEASE,
    OVERRIDE,
];

impl Scripts {
    pub fn load() -> Scripts {
        Scripts {
            fixed_window: Script::new(FIXED_WINDOW),
            sliding_log: Script::new(SLIDING_LOG),
            sliding_counter: Script::new(SLIDING_COUNTER),
            token_bucket: Script::new(TOKEN_BUCKET),
            gcra: Script::new(GCRA),
            concurrency: Script::new(CONCURRENCY),
            release: Script::new(RELEASE),
            set_override: Script::new(OVERRIDE),
        }
    }

    /// The decision script of an algorithm (`concurrency`: acquire and peek).
    pub fn decision(&self, a: Algorithm) -> &Script {
        match a {
            Algorithm::FixedWindow => &self.fixed_window,
            Algorithm::SlidingLog => &self.sliding_log,
            Algorithm::SlidingCounter => &self.sliding_counter,
            Algorithm::TokenBucket => &self.token_bucket,
            Algorithm::Gcra => &self.gcra,
            Algorithm::Concurrency => &self.concurrency,
        }
    }
}

/// What a decision script is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Check,
    Peek,
    Reserve,
    /// Consume points without asking, then answer like `Peek`.
    Penalty,
    /// Give points back (never above capacity), then answer like `Peek`.
    Reward,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Check => "check",
            Mode::Peek => "peek",
            Mode::Reserve => "reserve",
            Mode::Penalty => "penalty",
            Mode::Reward => "reward",
        }
    }
}

impl Verdict {
    /// Decodes `{ allowed, limit, remaining, reset_after_ms, retry_after_ms }`.
    pub fn from_reply(v: &[i64]) -> Result<Verdict, StoreError> {
        let [allowed, limit, remaining, reset, retry] = v else {
            return Err(StoreError::Redis(format!(
                "a rate-limit script returned {} values, expected 5",
                v.len()
            )));
        };
        let u = |x: &i64| u64::try_from(*x).unwrap_or(0);
        Ok(Verdict {
            allowed: *allowed == 1,
            limit: u(limit),
            remaining: u(remaining),
            reset_after_ms: u(reset),
            // A denial always asks for some wait, so a client never spins.
            retry_after_ms: if *allowed == 1 {
                u(retry)
            } else {
                u(retry).max(1)
            },
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn replies_decode() {
        let v = Verdict::from_reply(&[0, 5, 0, 900, 250]).unwrap();
        assert!(!v.allowed);
        assert_eq!(
            (v.limit, v.remaining, v.reset_after_ms, v.retry_after_ms),
            (5, 0, 900, 250)
        );
        // A denial always says to wait at least 1 ms; negatives never leak out.
        let v = Verdict::from_reply(&[0, 5, -1, -3, 0]).unwrap();
        assert_eq!((v.remaining, v.reset_after_ms, v.retry_after_ms), (0, 0, 1));
        assert!(Verdict::from_reply(&[1, 2]).is_err());
    }

    #[test]
    fn every_script_names_its_keys_and_args() {
        for src in SOURCES {
            assert!(src.starts_with("-- rl_"), "header comment first");
            assert!(src.contains("-- KEYS[1]") && src.contains("-- ARGV[1]"));
        }
    }
}
