//! What L1 holds for a key, shared by L1 and the shared-memory publisher (which
//! copies entries out of L1) so neither has to import the other.

use std::time::Instant;

use bytes::Bytes;

use crate::store::streamid::StreamId;

/// One cached value and what decides how long it may be served.
#[derive(Debug, Clone)]
pub struct Entry {
    pub value: Bytes,
    pub expires_at: Instant,
    /// The log position the value was read (or written) at.
    pub pos: StreamId,
    /// When L2's copy expires, as far as the read could tell.
    pub l2_expires_at: Option<Instant>,
    /// L1's flush count when it was filled: a later flush voids it.
    pub(crate) flushes: u64,
}
