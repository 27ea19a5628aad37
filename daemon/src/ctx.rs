//! `Ctx`: the daemon's shared state (configuration, Redis, the cache, sessions,
//! rate limits, locks, counters), built once by `run` and handed to every
//! connection and to the admin server; the features below it never see it.

use std::sync::Arc;

use crate::config::Config;
use crate::{cache, lock, ops, ratelimit, session, store};

/// Everything a request handler needs, shared by all connections.
#[derive(Debug)]
pub struct Ctx {
    pub config: Config,
    pub store: store::Store,
    pub cache: Arc<cache::Cache>,
    /// The shared-memory L1 (`cache.shm_bytes`), when on.
    pub shm: Option<Arc<cache::shm::Shm>>,
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
    pub fn new(config: Config) -> Result<Ctx, store::StoreError> {
        let stats = Arc::new(ops::stats::Stats::default());
        let store = store::Store::new(&config)?;
        // The segment's trust groups are L1's: one, or one per cluster bucket.
        let groups = usize::from(store.buckets().max(1));
        let shm = match cache::shm::Shm::new(&config.cache, groups) {
            Ok(s) => s.map(Arc::new),
            Err(e) => {
                // Clients fall back to the socket; nothing else depends on it.
                tracing::warn!(error = %e, "shared-memory L1 unavailable; serving over the socket only");
                None
            }
        };
        let l1 = Arc::new(
            cache::l1::L1::new(
                config.cache.l1_max_bytes.as_u64(),
                config.cache.l1_max_ttl,
                config.cache.max_staleness,
                stats.clone(),
            )
            .with_buckets(store.buckets())
            .with_shm(shm.clone()),
        );
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
            shm,
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
