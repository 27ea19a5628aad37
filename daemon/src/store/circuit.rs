//! The circuit breaker in front of Redis: a hung Redis (stopped process, a
//! network path that drops packets) answers nothing and refuses nothing, so
//! without a breaker every request waits the full `redis.timeout` before its
//! fail mode. After `redis.circuit_timeouts` deadlines in a row, each missed
//! while Redis had answered nothing for a whole `redis.timeout`, and spread
//! over at least one `redis.timeout` (a busy Redis with a long queue keeps
//! answering, and a daemon starved of CPU sees its deadlines expire in one
//! burst: neither opens it), the circuit opens: calls fail at once as `unavailable` (rate limits take their
//! `on_unavailable`, sessions their `on_unavailable`). Every
//! `redis.circuit_probe` one call goes through as a half-open probe; the first
//! answer from Redis (even an error reply) closes the circuit.
//!
//! Lock-free: two atomics, read on every Redis call.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a call may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// The circuit is closed: call Redis.
    Pass,
    /// The circuit is open and this call is the half-open probe.
    Probe,
    /// The circuit is open: fail at once.
    Reject,
}

/// Consecutive-timeout circuit breaker.
#[derive(Debug)]
pub struct Circuit {
    /// Timeouts in a row that open the circuit; 0 disables the breaker.
    threshold: u32,
    probe_every_us: u64,
    /// A timeout counts only when nothing was answered for this long.
    quiet_us: u64,
    base: Instant,
    consecutive: AtomicU32,
    /// Monotonic µs of the last answer.
    last_answer_us: AtomicU64,
    /// Monotonic µs of the first timeout of the current run.
    run_start_us: AtomicU64,
    /// 0 while closed; while open, the monotonic µs (+1) at which the next
    /// probe may go.
    next_probe_us: AtomicU64,
    opens: AtomicU64,
}

impl Circuit {
    /// `quiet`: how long Redis must have answered nothing for a missed
    /// deadline to count (the call deadline).
    pub fn new(threshold: u32, probe_every: Duration, quiet: Duration) -> Circuit {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Circuit {
            threshold,
            probe_every_us: us(probe_every).max(1),
            quiet_us: us(quiet),
            base: Instant::now(),
            consecutive: AtomicU32::new(0),
            last_answer_us: AtomicU64::new(0),
            run_start_us: AtomicU64::new(0),
            next_probe_us: AtomicU64::new(0),
            opens: AtomicU64::new(0),
        }
    }

    fn now_us(&self) -> u64 {
        // +1 keeps 0 free for "closed".
        u64::try_from(self.base.elapsed().as_micros())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    /// Whether a call may go to Redis now.
    pub fn admit(&self) -> Gate {
        let next = self.next_probe_us.load(Ordering::Acquire);
        if next == 0 {
            return Gate::Pass;
        }
        let now = self.now_us();
        if now < next {
            return Gate::Reject;
        }
        // One caller wins the probe; the others keep failing fast.
        match self.next_probe_us.compare_exchange(
            next,
            now.saturating_add(self.probe_every_us),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => Gate::Probe,
            Err(_) => Gate::Reject,
        }
    }

    /// Redis answered (a value or an error reply): close.
    pub fn on_answer(&self) {
        self.last_answer_us.store(self.now_us(), Ordering::Relaxed);
        self.consecutive.store(0, Ordering::Relaxed);
        if self.next_probe_us.load(Ordering::Relaxed) != 0 {
            self.next_probe_us.store(0, Ordering::Release);
        }
    }

    /// A call hit its deadline. Returns true when this opened the circuit.
    pub fn on_timeout(&self) -> bool {
        if self.threshold == 0 {
            return false;
        }
        let now = self.now_us();
        let last = self.last_answer_us.load(Ordering::Relaxed);
        if now.saturating_sub(last) < self.quiet_us {
            // Redis answered other calls meanwhile: busy, not hung.
            return false;
        }
        let n = self
            .consecutive
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if n == 1 {
            self.run_start_us.store(now, Ordering::Relaxed);
        }
        let spread = now.saturating_sub(self.run_start_us.load(Ordering::Relaxed));
        if n < self.threshold || spread < self.quiet_us {
            return false;
        }
        let next = now.saturating_add(self.probe_every_us);
        // Only the closed → open transition counts as an open; a failed probe
        // leaves the next probe time the probe itself set.
        let opened = self
            .next_probe_us
            .compare_exchange(0, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if opened {
            self.opens.fetch_add(1, Ordering::Relaxed);
        }
        opened
    }

    pub fn is_open(&self) -> bool {
        self.next_probe_us.load(Ordering::Relaxed) != 0
    }

    /// Times the circuit opened.
    pub fn opens(&self) -> u64 {
        self.opens.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_timeouts_and_one_probe_closes_it() {
        let c = Circuit::new(3, Duration::from_millis(20), Duration::from_millis(5));
        assert_eq!(c.admit(), Gate::Pass);
        assert!(!c.on_timeout());
        c.on_answer(); // an answer in between resets the run
        assert!(!c.on_timeout(), "Redis answered within the quiet period");
        assert!(!c.on_timeout());
        std::thread::sleep(Duration::from_millis(6));
        assert!(!c.on_timeout());
        assert!(!c.on_timeout());
        assert!(
            !c.on_timeout(),
            "a burst within the deadline does not open it"
        );
        std::thread::sleep(Duration::from_millis(6));
        assert!(c.on_timeout(), "a run over more than the deadline opens it");
        assert_eq!(c.admit(), Gate::Reject);
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(c.admit(), Gate::Probe);
        assert_eq!(c.admit(), Gate::Reject, "one probe at a time");
        // The probe timed out: still open, the next probe later.
        assert!(!c.on_timeout());
        assert!(c.is_open());
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(c.admit(), Gate::Probe);
        c.on_answer();
        assert_eq!(c.admit(), Gate::Pass);
        assert_eq!(c.opens(), 1);
    }

    #[test]
    fn zero_threshold_never_opens() {
        let c = Circuit::new(0, Duration::from_millis(1), Duration::ZERO);
        for _ in 0..10 {
            assert!(!c.on_timeout());
        }
        assert_eq!(c.admit(), Gate::Pass);
    }
}
