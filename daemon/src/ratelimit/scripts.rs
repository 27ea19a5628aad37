//! The rate-limit scripts, built at compile time from `lua/rl/` (each with the
//! shared preamble, see `daemon/build.rs`; `lua/rl_*.lua` hold the same text),
//! and the decoding of their replies. Each script's header lists its KEYS and ARGV.

use redis::Script;

use crate::config::Algorithm;
use crate::store::StoreError;

use super::types::Verdict;

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

const FIXED_WINDOW: &str = include_str!(concat!(env!("OUT_DIR"), "/rl_fixed_window.lua"));
const SLIDING_LOG: &str = include_str!(concat!(env!("OUT_DIR"), "/rl_sliding_log.lua"));
const SLIDING_COUNTER: &str = include_str!(concat!(env!("OUT_DIR"), "/rl_sliding_counter.lua"));
const TOKEN_BUCKET: &str = include_str!(concat!(env!("OUT_DIR"), "/rl_token_bucket.lua"));
const GCRA: &str = include_str!(concat!(env!("OUT_DIR"), "/rl_gcra.lua"));
const CONCURRENCY: &str = include_str!(concat!(env!("OUT_DIR"), "/rl_concurrency.lua"));
const RELEASE: &str = include_str!(concat!(env!("OUT_DIR"), "/rl_release.lua"));
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

    /// `lua/rl_*.lua` hold exactly what the daemon sends, so a caller outside the
    /// daemon runs the same script. `SHOAL_WRITE_LUA=1` rewrites stale files.
    #[test]
    fn generated_scripts_in_lua_are_current() {
        let generated = [
            ("fixed_window", FIXED_WINDOW),
            ("sliding_log", SLIDING_LOG),
            ("sliding_counter", SLIDING_COUNTER),
            ("token_bucket", TOKEN_BUCKET),
            ("gcra", GCRA),
            ("concurrency", CONCURRENCY),
            ("release", RELEASE),
        ];
        let write = std::env::var("SHOAL_WRITE_LUA").is_ok_and(|v| v == "1");
        let mut stale = Vec::new();
        for (name, text) in generated {
            let path = format!("{}/../lua/rl_{name}.lua", env!("CARGO_MANIFEST_DIR"));
            if std::fs::read_to_string(&path).ok().as_deref() == Some(text) {
                continue;
            }
            if write {
                std::fs::write(&path, text).unwrap();
            } else {
                stale.push(path);
            }
        }
        assert!(
            stale.is_empty(),
            "generated from lua/rl/ but not current (run `SHOAL_WRITE_LUA=1 cargo test -p shoald generated_scripts`): {stale:?}"
        );
    }

    /// The preamble is written once: no generated script's own part repeats it.
    #[test]
    fn the_preamble_is_written_once() {
        let dir = format!("{}/../lua/rl", env!("CARGO_MANIFEST_DIR"));
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().is_some_and(|n| n == "preamble.lua") {
                continue;
            }
            let body = std::fs::read_to_string(&path).unwrap();
            for copied in [
                "redis.replicate_commands",
                "redis.call('TIME')",
                "local function ceil_div",
                "local function floor_div",
            ] {
                assert!(
                    !body.contains(copied),
                    "{} repeats the preamble's `{copied}`",
                    path.display()
                );
            }
        }
    }

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
