//! Rate limits and quotas from the application's side: typed calls for the
//! `ratelimit.*` and `quota.usage` ops, a [`Decision`] that knows the HTTP
//! headers a limited response should carry, [`Client::acquire`] for outbound
//! calls that should wait for their slot rather than fail, and (feature `tower`)
//! a tower [`Layer`](tower_layer::Layer) that puts a policy in front of an
//! axum or hyper service.
//!
//! Limiting an inbound API (answer 429 when over the limit):
//!
//! ```no_run
//! # async fn demo(client: shoal_client::Client) -> shoal_client::Result<()> {
//! let d = client.check("api", "tenant:42").await?;
//! if !d.allowed {
//!     // Respond 429 with these headers (Retry-After, RateLimit, ...).
//!     for (name, value) in d.headers() {
//!         println!("{name}: {value}");
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Budgeting an outbound vendor API shared by every replica (wait for the slot):
//!
//! ```no_run
//! # async fn demo(client: shoal_client::Client) -> shoal_client::Result<()> {
//! use shoal_client::ratelimit::Acquired;
//! match client.acquire("vendor", "tenant:42").await? {
//!     Acquired::Ready { .. } => { /* call the vendor now */ }
//!     Acquired::TooFar { next_in } => { /* give up or try again in next_in */ }
//! }
//! # Ok(()) }
//! ```

use std::time::Duration;

use crate::proto::{
    ClearOverrideResult, ConcurrentResult, Op, OverrideResult, QuotaUsageResult,
    RatelimitDecisionExt, ReleaseResult, ReserveResult, ResetResult,
};
use crate::{Client, Result};

/// How long [`Client::acquire`] is willing to wait for a slot.
pub const DEFAULT_ACQUIRE_MAX_WAIT: Duration = Duration::from_secs(60);

/// One rate-limit decision, ready to be turned into HTTP headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The policy that decided (named in the `RateLimit` headers).
    pub policy: String,
    pub allowed: bool,
    /// Most that can pass at once (the burst, for token bucket and GCRA).
    pub limit: u64,
    /// What is left after this request.
    pub remaining: u64,
    /// Until the key is back to full capacity.
    pub reset_after: Duration,
    /// Until a request of the same cost would be allowed; zero when allowed.
    pub retry_after: Duration,
    /// The policy's window, when the daemon said.
    pub window: Option<Duration>,
    /// Set when Redis was unreachable and the policy's fail mode decided:
    /// `"open"`, `"closed"` or `"local"`.
    pub fallback: Option<String>,
    /// The policy's header style (`"draft-7"`, `"draft-8"`, `"legacy"`, as in
    /// express-rate-limit), when its config sets one: [`Decision::headers`]
    /// writes that style only.
    pub header_style: Option<String>,
}

/// Seconds, rounded up: a client that waits that long is never early.
fn secs_ceil(d: Duration) -> u64 {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    ms.div_ceil(1000)
}

/// A structured-field string (RFC 8941): quoted, `\` and `"` escaped, anything
/// outside printable ASCII replaced (policy names are ASCII in practice).
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('_'),
        }
    }
    out.push('"');
    out
}

impl Decision {
    /// A decision from its wire form.
    pub fn from_wire(policy: impl Into<String>, d: RatelimitDecisionExt) -> Decision {
        Decision {
            policy: policy.into(),
            allowed: d.allowed,
            limit: d.limit,
            remaining: d.remaining,
            reset_after: Duration::from_millis(d.reset_after_ms),
            retry_after: Duration::from_millis(d.retry_after_ms),
            window: d.window_ms.map(Duration::from_millis),
            fallback: d.fallback,
            header_style: d.headers,
        }
    }

    /// `Retry-After` in whole seconds, rounded up (at least 1 when denied).
    pub fn retry_after_secs(&self) -> u64 {
        if self.allowed {
            0
        } else {
            secs_ceil(self.retry_after).max(1)
        }
    }

    /// The response headers for this decision, names in lower case:
    /// - `ratelimit-policy: "<policy>";q=<limit>;w=<window s>` and
    ///   `ratelimit: "<policy>";r=<remaining>;t=<reset s>` (IETF draft
    ///   httpapi-ratelimit-headers; `ratelimit-policy` only when the window is known);
    /// - `x-ratelimit-limit`, `x-ratelimit-remaining`, `x-ratelimit-reset`
    ///   (legacy; reset in seconds from now);
    /// - `retry-after` (seconds) when denied.
    ///
    /// Every second count is rounded up, so a client that honours it is not early.
    ///
    /// A policy with `headers = "draft-7" | "draft-8" | "legacy"` gets exactly
    /// express-rate-limit's spelling of that style instead (plus `retry-after`
    /// when denied), so clients of a Node fleet moving to shoal keep working:
    /// - `draft-7`: `ratelimit-policy: <limit>;w=<window s>`,
    ///   `ratelimit: limit=<limit>, remaining=<remaining>, reset=<reset s>`;
    /// - `draft-8`: `ratelimit-policy: "<policy>";q=<limit>;w=<window s>`,
    ///   `ratelimit: "<policy>";r=<remaining>;t=<reset s>`;
    /// - `legacy`: `x-ratelimit-limit`, `x-ratelimit-remaining`,
    ///   `x-ratelimit-reset` (Unix time in seconds).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let name = sf_string(&self.policy);
        let reset = secs_ceil(self.reset_after);
        let window = self.window.map(|w| secs_ceil(w).max(1));
        let mut h = Vec::with_capacity(6);
        match self.header_style.as_deref() {
            Some("draft-7") => {
                if let Some(w) = window {
                    h.push(("ratelimit-policy", format!("{};w={w}", self.limit)));
                }
                h.push((
                    "ratelimit",
                    format!(
                        "limit={}, remaining={}, reset={reset}",
                        self.limit, self.remaining
                    ),
                ));
            }
            Some("draft-8") => {
                if let Some(w) = window {
                    h.push(("ratelimit-policy", format!("{name};q={};w={w}", self.limit)));
                }
                h.push((
                    "ratelimit",
                    format!("{name};r={};t={reset}", self.remaining),
                ));
            }
            Some("legacy") => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                h.push(("x-ratelimit-limit", self.limit.to_string()));
                h.push(("x-ratelimit-remaining", self.remaining.to_string()));
                h.push(("x-ratelimit-reset", now.saturating_add(reset).to_string()));
            }
            _ => return self.default_headers(),
        }
        if !self.allowed {
            h.push(("retry-after", self.retry_after_secs().to_string()));
        }
        h
    }

    /// shoal's own set (no `headers` style on the policy).
    fn default_headers(&self) -> Vec<(&'static str, String)> {
        let name = sf_string(&self.policy);
        let reset = secs_ceil(self.reset_after);
        let mut h = Vec::with_capacity(6);
        if let Some(w) = self.window {
            h.push((
                "ratelimit-policy",
                format!("{name};q={};w={}", self.limit, secs_ceil(w).max(1)),
            ));
        }
        h.push((
            "ratelimit",
            format!("{name};r={};t={reset}", self.remaining),
        ));
        h.push(("x-ratelimit-limit", self.limit.to_string()));
        h.push(("x-ratelimit-remaining", self.remaining.to_string()));
        h.push(("x-ratelimit-reset", reset.to_string()));
        if !self.allowed {
            h.push(("retry-after", self.retry_after_secs().to_string()));
        }
        h
    }
}

/// The answer of [`Client::reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// The slot is booked: go after `wait`.
    pub granted: bool,
    /// Granted: how long to wait before the call. Not granted: how far away the
    /// next slot was (nothing was booked).
    pub wait: Duration,
}

/// What [`Client::acquire`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Acquired {
    /// The slot was booked and its time has come, after waiting `waited`.
    Ready { waited: Duration },
    /// The next slot was further away than the allowed wait; nothing was booked.
    TooFar { next_in: Duration },
}

/// The answer of [`Client::acquire_concurrent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Concurrent {
    pub acquired: bool,
    /// Give it back with [`Client::release`] when done.
    pub lease: Option<String>,
    pub limit: u64,
    pub remaining: u64,
    /// Not acquired: at most this long until a slot frees.
    pub retry_after: Duration,
    /// How long the lease lives if never released.
    pub lease_ttl: Duration,
}

impl Client {
    /// `ratelimit.check` of one request.
    pub async fn check(&self, policy: &str, key: &str) -> Result<Decision> {
        self.check_cost(policy, key, 1).await
    }

    /// `ratelimit.check` of a request weighing `cost`.
    pub async fn check_cost(&self, policy: &str, key: &str, cost: u64) -> Result<Decision> {
        let d: RatelimitDecisionExt = self
            .call(Op::RatelimitCheck {
                policy: policy.into(),
                key: key.into(),
                cost,
            })
            .await?;
        Ok(Decision::from_wire(policy, d))
    }

    /// `ratelimit.peek`: what a check would answer, consuming nothing.
    pub async fn peek(&self, policy: &str, key: &str) -> Result<Decision> {
        let d: RatelimitDecisionExt = self
            .call(Op::RatelimitPeek {
                policy: policy.into(),
                key: key.into(),
            })
            .await?;
        Ok(Decision::from_wire(policy, d))
    }

    /// `ratelimit.reset`: forgets the key's state; true when there was some.
    pub async fn reset_limit(&self, policy: &str, key: &str) -> Result<bool> {
        let r: ResetResult = self
            .call(Op::RatelimitReset {
                policy: policy.into(),
                key: key.into(),
            })
            .await?;
        Ok(r.reset)
    }

    /// `ratelimit.penalty`: consumes `points` (at least 1, at most the policy's
    /// capacity) without asking; the key may go over its limit, and later
    /// checks are denied until the window or refill catches up. Returns what
    /// [`peek`](Self::peek) would answer after the change.
    pub async fn penalty(&self, policy: &str, key: &str, points: u64) -> Result<Decision> {
        let d: RatelimitDecisionExt = self
            .call(Op::RatelimitPenalty {
                policy: policy.into(),
                key: key.into(),
                points,
            })
            .await?;
        Ok(Decision::from_wire(policy, d))
    }

    /// `ratelimit.reward`: gives back `points` (at least 1, at most the policy's
    /// capacity), never above full capacity; lifts denials cached by every
    /// daemon. Returns what [`peek`](Self::peek) would answer after the change.
    pub async fn reward(&self, policy: &str, key: &str, points: u64) -> Result<Decision> {
        let d: RatelimitDecisionExt = self
            .call(Op::RatelimitReward {
                policy: policy.into(),
                key: key.into(),
                points,
            })
            .await?;
        Ok(Decision::from_wire(policy, d))
    }

    /// `ratelimit.reserve`: books the next slot for `cost` if it is at most
    /// `max_wait` away. The caller sleeps [`Reservation::wait`], then goes.
    pub async fn reserve(
        &self,
        policy: &str,
        key: &str,
        cost: u64,
        max_wait: Duration,
    ) -> Result<Reservation> {
        let max_wait_ms = u64::try_from(max_wait.as_millis())
            .unwrap_or(u64::MAX)
            .clamp(1, crate::proto::MAX_DURATION_MS);
        let r: ReserveResult = self
            .call(Op::RatelimitReserve {
                policy: policy.into(),
                key: key.into(),
                cost,
                max_wait_ms,
            })
            .await?;
        Ok(Reservation {
            granted: r.granted,
            wait: Duration::from_millis(r.wait_ms),
        })
    }

    /// Waits for the next slot of `policy` for `key` (at most
    /// [`DEFAULT_ACQUIRE_MAX_WAIT`]): books it, sleeps until it comes, returns.
    /// For outbound calls with a budget shared by the fleet, this spaces them at
    /// the policy's rate instead of failing bursts.
    pub async fn acquire(&self, policy: &str, key: &str) -> Result<Acquired> {
        self.acquire_with(policy, key, 1, DEFAULT_ACQUIRE_MAX_WAIT)
            .await
    }

    /// [`Client::acquire`] with a cost and a longest wait.
    pub async fn acquire_with(
        &self,
        policy: &str,
        key: &str,
        cost: u64,
        max_wait: Duration,
    ) -> Result<Acquired> {
        let r = self.reserve(policy, key, cost, max_wait).await?;
        if !r.granted {
            return Ok(Acquired::TooFar { next_in: r.wait });
        }
        if !r.wait.is_zero() {
            tokio::time::sleep(r.wait).await;
        }
        Ok(Acquired::Ready { waited: r.wait })
    }

    /// `ratelimit.acquire_concurrent`: one in-flight slot of a `concurrency`
    /// policy, as a lease living `lease` (default: the policy's window) unless
    /// released first.
    pub async fn acquire_concurrent(
        &self,
        policy: &str,
        key: &str,
        lease: Option<Duration>,
    ) -> Result<Concurrent> {
        let lease_ms = lease.map(|d| {
            u64::try_from(d.as_millis())
                .unwrap_or(u64::MAX)
                .clamp(1, crate::proto::MAX_DURATION_MS)
        });
        let r: ConcurrentResult = self
            .call(Op::RatelimitAcquireConcurrent {
                policy: policy.into(),
                key: key.into(),
                lease_ms,
            })
            .await?;
        Ok(Concurrent {
            acquired: r.acquired,
            lease: r.lease,
            limit: r.limit,
            remaining: r.remaining,
            retry_after: Duration::from_millis(r.retry_after_ms),
            lease_ttl: Duration::from_millis(r.lease_ms),
        })
    }

    /// `ratelimit.release`: gives a lease back; false if it had already expired.
    pub async fn release(&self, policy: &str, key: &str, lease: &str) -> Result<bool> {
        let r: ReleaseResult = self
            .call(Op::RatelimitRelease {
                policy: policy.into(),
                key: key.into(),
                lease: lease.into(),
            })
            .await?;
        Ok(r.released)
    }

    /// `ratelimit.set_override`: gives `key` its own numbers, fleet-wide, until
    /// cleared. True when it replaced an earlier runtime override.
    pub async fn set_override(
        &self,
        policy: &str,
        key: &str,
        limit: u64,
        burst: Option<u64>,
    ) -> Result<bool> {
        let r: OverrideResult = self
            .call(Op::RatelimitSetOverride {
                policy: policy.into(),
                key: key.into(),
                limit,
                burst,
            })
            .await?;
        Ok(r.replaced)
    }

    /// `ratelimit.clear_override`: true when there was one.
    pub async fn clear_override(&self, policy: &str, key: &str) -> Result<bool> {
        let r: ClearOverrideResult = self
            .call(Op::RatelimitClearOverride {
                policy: policy.into(),
                key: key.into(),
            })
            .await?;
        Ok(r.cleared)
    }

    /// `quota.usage`: current usage of a policy's keys (those starting with
    /// `prefix`, if given), at most `max_keys` (daemon default 1000).
    pub async fn quota_usage(
        &self,
        policy: &str,
        prefix: Option<&str>,
        max_keys: Option<u64>,
    ) -> Result<QuotaUsageResult> {
        self.call(Op::QuotaUsage {
            policy: policy.into(),
            prefix: prefix.map(str::to_string),
            max_keys,
        })
        .await
    }
}

#[cfg(feature = "tower")]
pub use layer::{Limiter, OnError, RateLimit, RateLimitLayer};

/// The tower layer (feature `tower`).
#[cfg(feature = "tower")]
mod layer {
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use futures::future::BoxFuture;
    use http::{HeaderName, HeaderValue, Request, Response, StatusCode};

    use super::Decision;
    use crate::{Client, Result};

    /// Something that decides rate limits: [`Client`], or a stand-in in tests.
    pub trait Limiter: Clone + Send + Sync + 'static {
        fn check(&self, policy: &str, key: &str) -> BoxFuture<'static, Result<Decision>>;
    }

    impl Limiter for Client {
        fn check(&self, policy: &str, key: &str) -> BoxFuture<'static, Result<Decision>> {
            let (client, policy, key) = (self.clone(), policy.to_string(), key.to_string());
            Box::pin(async move { client.check(&policy, &key).await })
        }
    }

    /// What the layer does when shoald cannot be asked (daemon down, timeout).
    /// Redis outages are not this: the daemon's `on_unavailable` handles them.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum OnError {
        /// Let the request through (logged). The default: a broken limiter
        /// should not take the API down.
        #[default]
        Allow,
        /// Answer 503.
        Deny,
    }

    /// Rate-limits requests by `policy`, keyed by `key_fn` (a request for which it
    /// returns `None` is not limited). Denied requests get 429 with
    /// `Retry-After` and the RateLimit headers; allowed ones get the RateLimit
    /// headers added to the inner service's response.
    ///
    /// ```no_run
    /// # fn demo(client: shoal_client::Client) {
    /// use shoal_client::ratelimit::RateLimitLayer;
    /// let layer = RateLimitLayer::new(client, "api", |req: &http::Request<()>| {
    ///     req.headers()
    ///         .get("x-api-key")
    ///         .and_then(|v| v.to_str().ok())
    ///         .map(|k| format!("key:{k}"))
    /// });
    /// # let _ = layer;
    /// # }
    /// ```
    #[derive(Debug, Clone)]
    pub struct RateLimitLayer<L, K> {
        limiter: L,
        policy: Arc<str>,
        key_fn: K,
        on_error: OnError,
    }

    impl<L, K> RateLimitLayer<L, K> {
        pub fn new(limiter: L, policy: impl Into<String>, key_fn: K) -> Self {
            RateLimitLayer {
                limiter,
                policy: Arc::from(policy.into()),
                key_fn,
                on_error: OnError::default(),
            }
        }

        pub fn on_error(mut self, on_error: OnError) -> Self {
            self.on_error = on_error;
            self
        }
    }

    impl<S, L: Clone, K: Clone> tower_layer::Layer<S> for RateLimitLayer<L, K> {
        type Service = RateLimit<S, L, K>;

        fn layer(&self, inner: S) -> Self::Service {
            RateLimit {
                inner,
                limiter: self.limiter.clone(),
                policy: self.policy.clone(),
                key_fn: self.key_fn.clone(),
                on_error: self.on_error,
            }
        }
    }

    /// The service [`RateLimitLayer`] wraps around another.
    #[derive(Debug, Clone)]
    pub struct RateLimit<S, L, K> {
        inner: S,
        limiter: L,
        policy: Arc<str>,
        key_fn: K,
        on_error: OnError,
    }

    fn put_headers(headers: &mut http::HeaderMap, d: &Decision) {
        for (name, value) in d.headers() {
            let (Ok(value), name) = (HeaderValue::from_str(&value), HeaderName::from_static(name))
            else {
                continue;
            };
            // Several limiters may each add their policy to the list fields.
            if name == "ratelimit" || name == "ratelimit-policy" {
                headers.append(name, value);
            } else {
                headers.insert(name, value);
            }
        }
    }

    fn with_status<B: Default>(status: StatusCode) -> Response<B> {
        let mut r = Response::new(B::default());
        *r.status_mut() = status;
        r
    }

    impl<S, L, K, ReqB, ResB> tower_service::Service<Request<ReqB>> for RateLimit<S, L, K>
    where
        S: tower_service::Service<Request<ReqB>, Response = Response<ResB>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        L: Limiter,
        K: Fn(&Request<ReqB>) -> Option<String>,
        ReqB: Send + 'static,
        ResB: Default + Send + 'static,
    {
        type Response = Response<ResB>;
        type Error = S::Error;
        type Future = BoxFuture<'static, std::result::Result<Response<ResB>, S::Error>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), S::Error>> {
            self.inner.poll_ready(cx)
        }

        fn call(&mut self, req: Request<ReqB>) -> Self::Future {
            // Keep the service that was polled ready for this call, leave a fresh
            // clone behind (tower's pattern for services called from a future).
            let clone = self.inner.clone();
            let mut inner = std::mem::replace(&mut self.inner, clone);
            let key = (self.key_fn)(&req);
            let (limiter, policy, on_error) =
                (self.limiter.clone(), self.policy.clone(), self.on_error);
            Box::pin(async move {
                let Some(key) = key else {
                    return inner.call(req).await;
                };
                match limiter.check(&policy, &key).await {
                    Ok(d) if d.allowed => {
                        let mut resp = inner.call(req).await?;
                        put_headers(resp.headers_mut(), &d);
                        Ok(resp)
                    }
                    Ok(d) => {
                        let mut resp = with_status(StatusCode::TOO_MANY_REQUESTS);
                        put_headers(resp.headers_mut(), &d);
                        Ok(resp)
                    }
                    Err(e) => match on_error {
                        OnError::Allow => {
                            tracing::warn!(error = %e, policy = %policy, "rate limiter unavailable; request let through");
                            inner.call(req).await
                        }
                        OnError::Deny => Ok(with_status(StatusCode::SERVICE_UNAVAILABLE)),
                    },
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn decision(allowed: bool) -> Decision {
        Decision {
            policy: "api".into(),
            allowed,
            limit: 10,
            remaining: if allowed { 3 } else { 0 },
            reset_after: Duration::from_millis(2_001),
            retry_after: Duration::from_millis(if allowed { 0 } else { 1_001 }),
            window: Some(Duration::from_millis(1_500)),
            fallback: None,
            header_style: None,
        }
    }

    fn header<'a>(h: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn denied_headers_round_up() {
        let h = decision(false).headers();
        assert_eq!(
            header(&h, "retry-after"),
            Some("2"),
            "1001 ms is 2 s, not 1"
        );
        assert_eq!(header(&h, "ratelimit"), Some("\"api\";r=0;t=3"));
        assert_eq!(header(&h, "ratelimit-policy"), Some("\"api\";q=10;w=2"));
        assert_eq!(header(&h, "x-ratelimit-limit"), Some("10"));
        assert_eq!(header(&h, "x-ratelimit-remaining"), Some("0"));
        assert_eq!(header(&h, "x-ratelimit-reset"), Some("3"));
    }

    #[test]
    fn allowed_headers_have_no_retry_after() {
        let mut d = decision(true);
        let h = d.headers();
        assert_eq!(header(&h, "retry-after"), None);
        assert_eq!(header(&h, "ratelimit"), Some("\"api\";r=3;t=3"));
        assert_eq!(d.retry_after_secs(), 0);
        // Whole seconds stay whole; a denial never says 0.
        d.allowed = false;
        d.retry_after = Duration::from_millis(3000);
        assert_eq!(d.retry_after_secs(), 3);
        d.retry_after = Duration::ZERO;
        assert_eq!(d.retry_after_secs(), 1);
        // No window: no policy header.
        d.window = None;
        assert_eq!(header(&d.headers(), "ratelimit-policy"), None);
    }

    #[test]
    fn policy_names_are_valid_structured_strings() {
        let mut d = decision(true);
        d.policy = "we\"ird\\näme".into();
        let h = d.headers();
        assert_eq!(
            header(&h, "ratelimit"),
            Some("\"we\\\"ird\\\\n_me\";r=3;t=3")
        );
    }

    #[test]
    fn wire_decisions_convert() {
        let d = Decision::from_wire(
            "p",
            RatelimitDecisionExt {
                allowed: false,
                limit: 5,
                remaining: 1,
                reset_after_ms: 10,
                retry_after_ms: 20,
                window_ms: None,
                fallback: Some("local".into()),
                headers: None,
            },
        );
        assert_eq!(d.retry_after, Duration::from_millis(20));
        assert_eq!(d.fallback.as_deref(), Some("local"));
        assert_eq!(d.window, None);
    }

    #[cfg(feature = "tower")]
    mod tower_layer_tests {
        use super::*;
        use crate::ratelimit::{Limiter, OnError, RateLimitLayer};
        use futures::future::BoxFuture;
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        use tower::{service_fn, Layer, ServiceExt};

        /// Allows `n` requests per key, then denies.
        #[derive(Clone)]
        struct Fake {
            left: Arc<AtomicU64>,
            fail: bool,
        }

        impl Limiter for Fake {
            fn check(
                &self,
                policy: &str,
                _key: &str,
            ) -> BoxFuture<'static, crate::Result<Decision>> {
                let (left, fail, policy) = (self.left.clone(), self.fail, policy.to_string());
                Box::pin(async move {
                    if fail {
                        return Err(crate::Error::Timeout);
                    }
                    let ok = left
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    let mut d = decision(ok);
                    d.policy = policy;
                    Ok(d)
                })
            }
        }

        fn key_of(req: &http::Request<()>) -> Option<String> {
            req.headers()
                .get("x-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        }

        fn req(key: Option<&str>) -> http::Request<()> {
            let mut b = http::Request::builder().uri("/");
            if let Some(k) = key {
                b = b.header("x-key", k);
            }
            b.body(()).unwrap()
        }

        #[tokio::test]
        async fn answers_429_with_headers_when_denied() {
            let calls = Arc::new(AtomicU64::new(0));
            let c2 = calls.clone();
            let inner = service_fn(move |_req: http::Request<()>| {
                c2.fetch_add(1, Ordering::SeqCst);
                async {
                    Ok::<_, std::convert::Infallible>(http::Response::new("hello".to_string()))
                }
            });
            let fake = Fake {
                left: Arc::new(AtomicU64::new(1)),
                fail: false,
            };
            let svc = RateLimitLayer::new(fake, "api", key_of).layer(inner);

            let ok = svc.clone().oneshot(req(Some("a"))).await.unwrap();
            assert_eq!(ok.status(), http::StatusCode::OK);
            assert_eq!(ok.body(), "hello");
            assert_eq!(ok.headers()["ratelimit"], "\"api\";r=3;t=3");
            assert!(ok.headers().get("retry-after").is_none());

            let denied = svc.clone().oneshot(req(Some("a"))).await.unwrap();
            assert_eq!(denied.status(), http::StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(denied.headers()["retry-after"], "2");
            assert_eq!(denied.headers()["x-ratelimit-remaining"], "0");
            assert_eq!(denied.body(), "", "the inner service was not called");
            assert_eq!(calls.load(Ordering::SeqCst), 1);

            // No key: not limited.
            let free = svc.oneshot(req(None)).await.unwrap();
            assert_eq!(free.status(), http::StatusCode::OK);
            assert_eq!(calls.load(Ordering::SeqCst), 2);
        }

        #[tokio::test]
        async fn limiter_errors_follow_on_error() {
            let inner = service_fn(|_req: http::Request<()>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
            });
            let broken = Fake {
                left: Arc::new(AtomicU64::new(0)),
                fail: true,
            };
            let open = RateLimitLayer::new(broken.clone(), "api", key_of).layer(inner);
            let r = open.oneshot(req(Some("a"))).await.unwrap();
            assert_eq!(r.status(), http::StatusCode::OK);
            let closed = RateLimitLayer::new(broken, "api", key_of)
                .on_error(OnError::Deny)
                .layer(inner);
            let r = closed.oneshot(req(Some("a"))).await.unwrap();
            assert_eq!(r.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        }
    }
}
