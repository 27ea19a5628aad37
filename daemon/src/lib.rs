//! shoald: the daemon that runs beside every API replica and gives the fleet one
//! coherent view of cached data, sessions and rate limits.
//!
//! The binary (`main.rs`) only loads configuration, binds the socket and calls
//! [`run`]; tests call the same [`run`] in-process. See ARCHITECTURE.md for the
//! code map and the invariants.

pub mod cache;
pub mod config;
pub mod lock;
pub mod ops;
pub mod ratelimit;
pub mod server;
pub mod session;
pub mod store;

use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

pub use config::{Config, ConfigError};
pub use server::socket::{bind, BindError};

/// Name and version sent in `hello`.
pub const SERVER_NAME: &str = concat!("shoald/", env!("CARGO_PKG_VERSION"));

/// A fatal error of [`run`].
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot set up redis: {0}")]
    Store(#[from] store::StoreError),
    #[error("accept failed: {0}")]
    Accept(std::io::Error),
    #[error(transparent)]
    Admin(#[from] ops::admin::AdminError),
}

/// Everything a request handler needs, shared by all connections.
#[derive(Debug)]
pub struct Ctx {
    pub config: Config,
    pub store: store::Store,
    pub cache: Arc<cache::Cache>,
    pub stats: Arc<ops::stats::Stats>,
    pub coherence: Arc<cache::coherence::CoherenceState>,
    pub sessions: Arc<session::Sessions>,
    pub ratelimits: Arc<ratelimit::RateLimits>,
    pub locks: Arc<lock::Locks>,
    pub limits: shoal_client::proto::Limits,
    pub max_frame: usize,
    /// What the Redis health watch saw last (for `/metrics` and `/readyz`).
    pub redis_health: Arc<ops::redis_watch::RedisHealth>,
    /// The admin server's bound address, once it listens (`admin.listen` may
    /// ask for port 0).
    pub admin_addr: tokio::sync::watch::Sender<Option<std::net::SocketAddr>>,
}

impl Ctx {
    /// Builds the shared state; connects to nothing yet.
    pub fn new(config: Config) -> Result<Ctx, RunError> {
        let stats = Arc::new(ops::stats::Stats::default());
        let store = store::Store::new(&config)?;
        let l1 = Arc::new(cache::l1::L1::new(
            config.cache.l1_max_bytes.as_u64(),
            config.cache.l1_max_ttl,
            config.cache.max_staleness,
            stats.clone(),
        ));
        let cache = Arc::new(cache::Cache::new(
            l1,
            store.clone(),
            stats.clone(),
            &config.cache,
        ));
        let sessions = Arc::new(session::Sessions::new(
            &config,
            store.clone(),
            stats.clone(),
        ));
        let ratelimits = Arc::new(ratelimit::RateLimits::new(
            &config,
            store.clone(),
            stats.clone(),
        ));
        let locks = Arc::new(lock::Locks::new(store.clone(), &config.redis.prefix));
        let limits = shoal_client::proto::Limits {
            max_key: config.socket.max_key,
            max_batch: config.socket.max_batch,
        };
        let max_frame = usize::try_from(config.socket.max_frame.as_u64()).unwrap_or(usize::MAX);
        Ok(Ctx {
            config,
            store,
            cache,
            stats,
            coherence: Arc::new(cache::coherence::CoherenceState::default()),
            sessions,
            ratelimits,
            locks,
            limits,
            max_frame,
            redis_health: Arc::default(),
            admin_addr: tokio::sync::watch::Sender::new(None),
        })
    }

    /// Whether this daemon is caught up with the fleet and Redis answers.
    pub fn ready(&self) -> bool {
        self.coherence.caught_up()
            && self.store.is_healthy()
            && self.sessions.ready()
            && self.ratelimits.ready()
    }
}

/// Serves `listener` until `shutdown` is cancelled, then drains: stops accepting,
/// answers every request already received (within `shutdown.grace`), removes the
/// socket file and stops every background task.
pub async fn run(
    listener: UnixListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let ctx = Arc::new(Ctx::new(config)?);
    run_with(listener, ctx, shutdown).await
}

/// [`run`] with a prepared context (tests use it to look at the daemon's state).
pub async fn run_with(
    listener: UnixListener,
    ctx: Arc<Ctx>,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    // Bound before anything starts: a taken admin port is a startup error.
    let admin_listener = ops::admin::bind(&ctx.config.admin.listen).await?;
    let background = CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();
    let subscriber = cache::coherence::Subscriber {
        store: ctx.store.clone(),
        cache: ctx.cache.clone(),
        stats: ctx.stats.clone(),
        state: ctx.coherence.clone(),
        heartbeat: ctx.config.cache.heartbeat,
        max_staleness: ctx.config.cache.max_staleness,
        instance: format!("{}:{}", ctx.config.node.id, random_token(8)),
    };
    tasks.spawn(subscriber.run(background.child_token()));
    // Sentinel: follows `+switch-master` (returns at once otherwise).
    tasks.spawn(
        ctx.store
            .endpoint()
            .clone()
            .follow(background.child_token()),
    );
    tasks.spawn(l1_maintenance(ctx.clone(), background.child_token()));
    tasks.spawn(ctx.sessions.clone().run(background.child_token()));
    tasks.spawn(ctx.ratelimits.clone().run(background.child_token()));
    let watcher = ops::redis_watch::Watcher {
        store: ctx.store.clone(),
        health: ctx.redis_health.clone(),
        interval: ctx.config.redis.watch_interval,
    };
    tasks.spawn(watcher.run(background.child_token()));
    if let Some(l) = admin_listener {
        ctx.admin_addr.send_replace(l.local_addr().ok());
        // Readiness fails as soon as draining starts (`shutdown`); the server
        // itself stops with the other background tasks, after the drain.
        tasks.spawn(ops::admin::serve(
            l,
            ctx.clone(),
            shutdown.clone(),
            background.child_token(),
        ));
    }

    let result = server::serve(listener, ctx.clone(), shutdown).await;

    background.cancel();
    tasks.close();
    tasks.wait().await;
    tracing::info!("shoald stopped");
    result
}

/// moka applies its size bound lazily; run its housekeeping regularly so the
/// byte bound holds even when the cache is only read.
async fn l1_maintenance(ctx: Arc<Ctx>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => ctx.cache.l1().run_pending_tasks().await,
        }
    }
}

/// `n` random bytes from the OS CSPRNG as URL-safe base64 without padding.
pub fn random_token(n: usize) -> String {
    use base64::Engine;
    let mut buf = vec![0u8; n];
    if getrandom::fill(&mut buf).is_err() {
        // The OS refused (no entropy source): a thread RNG seeded from it earlier
        // is the best remaining choice, and better than failing the request.
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut buf);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&buf)
}
