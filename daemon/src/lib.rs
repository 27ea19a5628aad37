//! shoald: the daemon that runs beside every API replica and gives the fleet one
//! coherent view of cached data, sessions and rate limits.
//!
//! The binary (`main.rs`) only loads configuration, binds the socket and calls
//! [`run`]; tests call the same [`run`] in-process. See ARCHITECTURE.md for the
//! code map and the invariants.
#![forbid(unsafe_code)]

pub mod cache;
pub mod config;
pub mod ctx;
pub mod error;
pub mod lock;
pub mod ops;
pub mod random;
pub mod ratelimit;
pub mod server;
pub mod session;
pub mod store;

use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

pub use config::{Config, ConfigError};
pub use ctx::Ctx;
pub use random::random_token;
pub use server::dispatch::SERVER_NAME;
pub use server::socket::{bind, BindError};

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
    // On Redis Cluster the subscriber keeps one position and proof per bucket.
    if ctx.store.buckets() > 0 {
        tasks.spawn(cache::sharded::run(subscriber, background.child_token()));
    } else {
        tasks.spawn(subscriber.run(background.child_token()));
    }
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

    let result = server::serve(listener, ctx.clone(), shutdown)
        .await
        .map_err(RunError::Accept);

    // Same-host readers stop at once rather than when the proof runs out.
    if let Some(shm) = &ctx.shm {
        shm.close();
    }
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
            _ = tick.tick() => ctx.cache.run_pending_tasks().await,
        }
    }
}
