//! The cache's scripts (`lua/cache_*.lua`, `identity.lua`, `heartbeat.lua`,
//! `log_replay.lua`), loaded at compile time and preloaded with `SCRIPT LOAD`.

use redis::Script;

/// The scripts, loaded from `lua/` at compile time.
#[derive(Debug)]
pub(super) struct Scripts {
    pub(super) get: Script,
    pub(super) mget: Script,
    pub(super) set: Script,
    pub(super) invalidate: Script,
    pub(super) invalidate_tags: Script,
    pub(super) identity: Script,
    pub(super) heartbeat: Script,
    pub(super) log_replay: Script,
}

impl Scripts {
    pub(super) fn load() -> Self {
        Scripts {
            get: Script::new(include_str!("../../../lua/cache_get.lua")),
            mget: Script::new(include_str!("../../../lua/cache_mget.lua")),
            set: Script::new(include_str!("../../../lua/cache_set.lua")),
            invalidate: Script::new(include_str!("../../../lua/cache_invalidate.lua")),
            invalidate_tags: Script::new(include_str!("../../../lua/cache_invalidate_tags.lua")),
            identity: Script::new(include_str!("../../../lua/identity.lua")),
            heartbeat: Script::new(include_str!("../../../lua/heartbeat.lua")),
            log_replay: Script::new(include_str!("../../../lua/log_replay.lua")),
        }
    }
}
