//! Operating the daemon: the admin HTTP server, metrics, counters, tracing,
//! the Redis health watch, `shoalctl doctor`'s checks and `--dev` mode.

pub mod admin;
pub mod dev;
pub mod doctor;
pub mod metrics;
pub mod redis_watch;
pub mod stats;
pub mod telemetry;
