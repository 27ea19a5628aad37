//! The admin HTTP server on `admin.listen`: what an operator and an
//! orchestrator need to run shoald without reading its logs.
//!
//! - `/healthz`: the process is alive and serving (200 even when Redis is down:
//!   restarting shoald does not bring Redis back, so liveness must not fail on it).
//! - `/readyz`: 200 only when [`Ctx::ready`] holds (Redis reachable, invalidation
//!   subscriber and revocation reader caught up, overrides loaded) and the
//!   daemon is not draining; otherwise 503 with the reasons as JSON.
//! - `/metrics`: Prometheus / OpenMetrics text (see `metrics`).
//! - `/quotas`: per policy and tenant, usage against limit, for people (HTML,
//!   auto-refreshing) and scripts (`?format=json` or `Accept: application/json`).
//!
//! Loopback by default: `/quotas` lists tenant keys. In Kubernetes the probes
//! come from the node, so the sidecar manifest listens on the pod address and
//! relies on a network policy (deploy/README.md).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use shoal_client::proto::QuotaKeyUsage;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::ctx::Ctx;
use crate::ops::metrics::Metrics;
use crate::ratelimit::algorithm_name;

/// How often the quota page reloads itself.
const QUOTA_REFRESH_SECS: u32 = 5;
/// How long one `/quotas` report answers every viewer: each report SCANs the
/// keyspace (cache keys included), so page refreshes from many viewers share
/// one scan per this interval, and concurrent misses wait for the one in flight.
const QUOTA_CACHE: std::time::Duration = std::time::Duration::from_secs(4);

/// The last `/quotas` report: (made at, policy filter, prefix filter, report).
type QuotaCache = tokio::sync::Mutex<
    Option<(
        std::time::Instant,
        Option<String>,
        Option<String>,
        Arc<QuotaReport>,
    )>,
>;

/// The admin server could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen on admin.listen = {addr:?}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// Binds `admin.listen`; `None` when it is empty (admin disabled). Done before
/// anything else starts, so a taken port stops the daemon with a clear error
/// instead of leaving it running without probes or metrics.
pub async fn bind(listen: &str) -> Result<Option<TcpListener>, AdminError> {
    let listen = listen.trim();
    if listen.is_empty() {
        return Ok(None);
    }
    TcpListener::bind(listen)
        .await
        .map(Some)
        .map_err(|source| AdminError::Bind {
            addr: listen.to_string(),
            source,
        })
}

#[derive(Clone)]
struct AdminState {
    ctx: Arc<Ctx>,
    metrics: Arc<Metrics>,
    quotas: Arc<QuotaCache>,
    /// Cancelled when the daemon starts draining (SIGTERM): readiness fails at
    /// once so load balancers stop sending work, while the server stays up.
    draining: CancellationToken,
}

/// The admin routes over `ctx`; `draining` is the daemon's shutdown token.
pub fn router(ctx: Arc<Ctx>, draining: CancellationToken) -> Router {
    let state = AdminState {
        metrics: Arc::new(Metrics::new(ctx.clone())),
        quotas: Arc::default(),
        ctx,
        draining,
    };
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/quotas", get(quotas))
        .with_state(state)
}

/// Serves until `cancel` fires (after the daemon has drained).
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<Ctx>,
    draining: CancellationToken,
    cancel: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin HTTP listening");
    }
    let app = router(ctx, draining);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin HTTP server failed");
    }
}

async fn index() -> Html<&'static str> {
    Html(concat!(
        "<!doctype html><meta charset=utf-8><title>shoald</title>",
        "<h1>shoald</h1><ul>",
        "<li><a href=\"/healthz\">/healthz</a> liveness</li>",
        "<li><a href=\"/readyz\">/readyz</a> readiness</li>",
        "<li><a href=\"/metrics\">/metrics</a> Prometheus</li>",
        "<li><a href=\"/quotas\">/quotas</a> quota usage per tenant</li></ul>"
    ))
}

#[derive(Debug, Serialize)]
struct Health {
    status: &'static str,
    node: String,
    version: &'static str,
}

async fn healthz(State(st): State<AdminState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        node: st.ctx.config.node.id.clone(),
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// `/readyz` body.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    /// Why not, in words an operator can act on; empty when ready.
    pub reasons: Vec<String>,
    pub checks: ReadinessChecks,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReadinessChecks {
    pub redis: bool,
    pub invalidations: bool,
    pub sessions: bool,
    pub ratelimits: bool,
    pub draining: bool,
}

/// The daemon's readiness, with reasons. The verdict is [`Ctx::ready`] (the same
/// one the `stats` op reports); the checks only explain it.
pub fn readiness(ctx: &Ctx, draining: bool) -> Readiness {
    let checks = ReadinessChecks {
        redis: ctx.store.is_healthy(),
        invalidations: ctx.coherence.caught_up(),
        sessions: ctx.sessions.ready(),
        ratelimits: ctx.ratelimits.ready(),
        draining,
    };
    let ready = ctx.ready() && !draining;
    let mut reasons = Vec::new();
    if !ready {
        if !checks.redis {
            reasons.push(match ctx.store.errors().last() {
                Some(e) => format!("redis unreachable or refusing to serve: {e}"),
                None => "redis unreachable: the last command could not reach it".to_string(),
            });
            if let Some(e) = ctx.redis_health.snapshot().last_error {
                reasons.push(format!("last redis health poll: {e}"));
            }
        }
        if !checks.invalidations {
            reasons.push(
                "invalidation subscriber not caught up: L1 is bypassed until it has \
                 resubscribed and replayed the log"
                    .to_string(),
            );
        }
        if !checks.sessions {
            reasons.push("session revocation reader not caught up".to_string());
        }
        if !checks.ratelimits {
            reasons.push("rate-limit overrides not loaded".to_string());
        }
        if draining {
            reasons.push("shutting down: draining connections".to_string());
        }
        if reasons.is_empty() {
            // A component changed between the verdict and the checks.
            reasons.push("not ready (state changing; retry)".to_string());
        }
    }
    Readiness {
        ready,
        reasons,
        checks,
    }
}

async fn readyz(State(st): State<AdminState>) -> Response {
    let r = readiness(&st.ctx, st.draining.is_cancelled());
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(r)).into_response()
}

async fn metrics(State(st): State<AdminState>) -> Response {
    match st.metrics.render() {
        Ok(body) => (
            [(header::CONTENT_TYPE, crate::ops::metrics::CONTENT_TYPE)],
            body,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct QuotaQuery {
    format: Option<String>,
    /// Only this policy.
    policy: Option<String>,
    /// Only keys starting with this.
    prefix: Option<String>,
}

/// `/quotas?format=json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct QuotaReport {
    pub node: String,
    pub generated_at_ms: u64,
    pub policies: Vec<PolicyQuota>,
}

/// One policy on the quota page.
#[derive(Debug, Serialize, Deserialize)]
pub struct PolicyQuota {
    pub policy: String,
    pub algorithm: String,
    /// The policy's own limit per window (tenants may have overrides).
    pub limit: u64,
    pub window_ms: u64,
    /// Tenants (rate-limit keys) with state in Redis.
    pub keys: Vec<QuotaKeyUsage>,
    /// More keys exist than `admin.quota_max_keys`.
    pub truncated: bool,
    /// Why usage could not be read (Redis down, ...); the policy is still listed.
    pub error: Option<String>,
}

/// Reads usage of every configured policy (or one) with the code behind the
/// `quota.usage` op, so the page and `shoalctl quotas` can never disagree.
pub async fn quota_report(ctx: &Ctx, policy: Option<&str>, prefix: Option<&str>) -> QuotaReport {
    let mut policies = Vec::new();
    for (name, p) in &ctx.config.ratelimit.policies {
        if policy.is_some_and(|want| want != name) {
            continue;
        }
        let base = PolicyQuota {
            policy: name.clone(),
            algorithm: algorithm_name(p.algorithm).to_string(),
            limit: p.limit,
            window_ms: u64::try_from(p.window.as_millis()).unwrap_or(u64::MAX),
            keys: Vec::new(),
            truncated: false,
            error: None,
        };
        let usage = ctx
            .ratelimits
            .quota_usage(name, prefix, Some(ctx.config.admin.quota_max_keys))
            .await;
        policies.push(match usage {
            Ok(u) => PolicyQuota {
                algorithm: u.algorithm,
                limit: u.limit,
                window_ms: u.window_ms,
                keys: u.keys,
                truncated: u.truncated,
                ..base
            },
            Err(e) => PolicyQuota {
                error: Some(e.to_string()),
                ..base
            },
        });
    }
    QuotaReport {
        node: ctx.config.node.id.clone(),
        generated_at_ms: now_ms(),
        policies,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// JSON when asked by `?format=json`, or when `Accept` names JSON and prefers
/// it to HTML (a browser's `Accept` lists `text/html` first).
fn wants_json(format: Option<&str>, headers: &HeaderMap) -> bool {
    match format {
        Some(f) if f.eq_ignore_ascii_case("json") => return true,
        Some(f) if f.eq_ignore_ascii_case("html") => return false,
        _ => {}
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    match (accept.find("application/json"), accept.find("text/html")) {
        (Some(_), None) => true,
        (Some(j), Some(h)) => j < h,
        _ => false,
    }
}

async fn quotas(
    State(st): State<AdminState>,
    Query(q): Query<QuotaQuery>,
    headers: HeaderMap,
) -> Response {
    let report = {
        // Single flight: one report at a time; the ones waiting reuse it.
        let mut cached = st.quotas.lock().await;
        match &*cached {
            Some((at, policy, prefix, r))
                if at.elapsed() < QUOTA_CACHE && *policy == q.policy && *prefix == q.prefix =>
            {
                r.clone()
            }
            _ => {
                let r =
                    Arc::new(quota_report(&st.ctx, q.policy.as_deref(), q.prefix.as_deref()).await);
                *cached = Some((
                    std::time::Instant::now(),
                    q.policy.clone(),
                    q.prefix.clone(),
                    r.clone(),
                ));
                r
            }
        }
    };
    if wants_json(q.format.as_deref(), &headers) {
        return Json(&*report).into_response();
    }
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html(render_quotas(&report)),
    )
        .into_response()
}

/// Usage level of a tenant, which picks the bar's colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Below 70 % of the limit.
    Ok,
    /// 70 % up to 90 %.
    Warn,
    /// 90 % and above, or nothing left.
    Full,
}

impl Level {
    pub fn of(k: &QuotaKeyUsage) -> Level {
        let ratio = ratio(k);
        if k.remaining == 0 || ratio >= 0.9 {
            Level::Full
        } else if ratio >= 0.7 {
            Level::Warn
        } else {
            Level::Ok
        }
    }
    /// The bar colour (tests find tenant rows in a screenshot by these).
    pub fn colour(self) -> (u8, u8, u8) {
        match self {
            Level::Ok => (0x2d, 0xa4, 0x4e),
            Level::Warn => (0xd4, 0xa7, 0x2c),
            Level::Full => (0xcf, 0x22, 0x2e),
        }
    }
    fn class(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Full => "full",
        }
    }
}

fn ratio(k: &QuotaKeyUsage) -> f64 {
    if k.limit == 0 {
        1.0
    } else {
        (k.used as f64 / k.limit as f64).clamp(0.0, 1.0)
    }
}

/// Escapes text for HTML element content and quoted attributes. Tenant keys
/// come from applications (often from end users): never trusted as markup.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// "850 ms", "12.3 s", "4 min 10 s", "10 min", "2 h 5 min": a person's reading
/// of a duration (the JSON form carries exact milliseconds).
pub fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    let two = |n: u64, big: &str, m: u64, small: &str| {
        if m == 0 {
            format!("{n} {big}")
        } else {
            format!("{n} {big} {m} {small}")
        }
    };
    if ms < 1000 {
        format!("{ms} ms")
    } else if s < 60 {
        if ms % 1000 == 0 {
            format!("{s} s")
        } else {
            format!("{:.1} s", ms as f64 / 1000.0)
        }
    } else if s < 3600 {
        two(s / 60, "min", s % 60, "s")
    } else if s < 86_400 {
        two(s / 3600, "h", (s % 3600) / 60, "min")
    } else {
        two(s / 86_400, "d", (s % 86_400) / 3600, "h")
    }
}

fn css() -> String {
    let rgb = |l: Level| {
        let (r, g, b) = l.colour();
        format!("#{r:02x}{g:02x}{b:02x}")
    };
    format!(
        "body{{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1f2328;background:#fff}}\
         h1{{font-size:20px;margin:0 0 4px}}h2{{font-size:16px;margin:24px 0 6px}}\
         h2 small{{font-weight:normal;color:#59636e}}.meta{{color:#59636e;margin:0 0 12px}}\
         table{{border-collapse:collapse;min-width:760px}}\
         th,td{{text-align:left;padding:6px 12px;border-bottom:1px solid #d1d9e0}}\
         th{{font-weight:600;color:#59636e}}td.num{{text-align:right;font-variant-numeric:tabular-nums}}\
         td.key{{font-family:ui-monospace,monospace;max-width:360px;overflow-wrap:anywhere}}\
         .bar{{width:240px;height:16px;background:#eaeef2;border-radius:3px;overflow:hidden}}\
         .fill{{height:16px;min-width:3px}}\
         .fill.ok{{background:{}}}.fill.warn{{background:{}}}.fill.full{{background:{}}}\
         .error{{color:#cf222e}}.empty{{color:#59636e}}",
        rgb(Level::Ok),
        rgb(Level::Warn),
        rgb(Level::Full)
    )
}

/// The quota page. Tenants are sorted by usage, fullest first: the page is
/// for finding who is about to be limited.
pub fn render_quotas(r: &QuotaReport) -> String {
    let mut h = String::with_capacity(4096);
    let _ = write!(
        h,
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta http-equiv=refresh content={QUOTA_REFRESH_SECS}>\
         <title>shoal quotas · {node}</title><style>{css}</style></head><body>\
         <h1>Quota usage</h1><p class=meta>node <b>{node}</b> · refreshes every \
         {QUOTA_REFRESH_SECS} s · <a href=\"?format=json\">JSON</a></p>",
        node = esc(&r.node),
        css = css(),
    );
    if r.policies.is_empty() {
        h.push_str(
            "<p class=empty>No rate-limit policies are configured ([ratelimit.policies.NAME]).</p>",
        );
    }
    for p in &r.policies {
        let _ = write!(
            h,
            "<section class=policy><h2>{name} <small>{alg} · {limit} per {window}</small></h2>",
            name = esc(&p.policy),
            alg = esc(&p.algorithm),
            limit = p.limit,
            window = human_duration(p.window_ms),
        );
        if let Some(e) = &p.error {
            let _ = write!(h, "<p class=error>usage unavailable: {}</p>", esc(e));
        }
        if p.keys.is_empty() {
            if p.error.is_none() {
                h.push_str("<p class=empty>No tenant has state right now.</p>");
            }
            h.push_str("</section>");
            continue;
        }
        h.push_str(
            "<table><thead><tr><th>tenant</th><th>usage</th><th class=num>used / limit</th>\
             <th class=num>remaining</th><th class=num>resets in</th></tr></thead><tbody>",
        );
        let mut keys: Vec<&QuotaKeyUsage> = p.keys.iter().collect();
        keys.sort_by(|a, b| {
            ratio(b)
                .total_cmp(&ratio(a))
                .then_with(|| a.key.cmp(&b.key))
        });
        for k in keys {
            let level = Level::of(k);
            let _ = write!(
                h,
                "<tr class=tenant><td class=key>{key}</td><td><div class=bar title=\"{pct:.0}%\">\
                 <div class=\"fill {class}\" style=\"width:{pct:.1}%\"></div></div></td>\
                 <td class=num>{used} / {limit}</td><td class=num>{remaining}</td>\
                 <td class=num>{reset}</td></tr>",
                key = esc(&k.key),
                pct = ratio(k) * 100.0,
                class = level.class(),
                used = k.used,
                limit = k.limit,
                remaining = k.remaining,
                reset = human_duration(k.reset_after_ms),
            );
        }
        h.push_str("</tbody></table>");
        if p.truncated {
            h.push_str("<p class=meta>More tenants exist than admin.quota_max_keys shows; filter with ?prefix=.</p>");
        }
        h.push_str("</section>");
    }
    h.push_str("</body></html>");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str, used: u64, limit: u64) -> QuotaKeyUsage {
        QuotaKeyUsage {
            key: k.into(),
            used,
            limit,
            remaining: limit.saturating_sub(used),
            reset_after_ms: 1500,
        }
    }

    #[test]
    fn levels() {
        assert_eq!(Level::of(&key("a", 1, 10)), Level::Ok);
        assert_eq!(Level::of(&key("a", 7, 10)), Level::Warn);
        assert_eq!(Level::of(&key("a", 9, 10)), Level::Full);
        assert_eq!(Level::of(&key("a", 10, 10)), Level::Full);
    }

    #[test]
    fn tenant_keys_are_escaped() {
        let r = QuotaReport {
            node: "n<1>".into(),
            generated_at_ms: 0,
            policies: vec![PolicyQuota {
                policy: "api".into(),
                algorithm: "gcra".into(),
                limit: 10,
                window_ms: 1000,
                keys: vec![key("<script>alert(1)</script>", 1, 10)],
                truncated: false,
                error: None,
            }],
        };
        let html = render_quotas(&r);
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("n&lt;1&gt;"));
    }

    #[test]
    fn accept_negotiation() {
        let mut h = HeaderMap::new();
        assert!(!wants_json(None, &h));
        assert!(wants_json(Some("json"), &h));
        h.insert(
            header::ACCEPT,
            "application/json"
                .parse()
                .unwrap_or_else(|_| unreachable!()),
        );
        assert!(wants_json(None, &h));
        assert!(!wants_json(Some("html"), &h));
        h.insert(
            header::ACCEPT,
            "text/html,application/xhtml+xml,application/json;q=0.9,*/*;q=0.8"
                .parse()
                .unwrap_or_else(|_| unreachable!()),
        );
        assert!(!wants_json(None, &h));
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(850), "850 ms");
        assert_eq!(human_duration(12_340), "12.3 s");
        assert_eq!(human_duration(250_000), "4 min 10 s");
        assert_eq!(human_duration(7_500_000), "2 h 5 min");
        assert_eq!(human_duration(1000), "1 s");
        assert_eq!(human_duration(600_000), "10 min");
        assert_eq!(human_duration(86_400_000), "1 d");
    }
}
