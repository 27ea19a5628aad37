//! Redis stream ids (`<ms>-<seq>`): the positions of the invalidation log.
//!
//! They order changes without comparing anyone's wall clock: a read that returns
//! log position P happened after every change with an id <= P, in Redis's order.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    pub fn parse(s: &str) -> Option<StreamId> {
        let (ms, seq) = s.split_once('-')?;
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// Packs into a u64 that never sorts below the id (for change marks): a seq
    /// that does not fit in 16 bits rounds up to the next millisecond.
    pub fn pack_up(self) -> u64 {
        if self.seq >= 0xffff {
            (self.ms.saturating_add(1) << 16) & !0xffff
        } else {
            (self.ms << 16) | self.seq
        }
    }

    /// Packs into a u64 that never sorts above the id (for read positions).
    pub fn pack_down(self) -> u64 {
        (self.ms << 16) | self.seq.min(0xffff)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_is_conservative() {
        let change = StreamId { ms: 5, seq: 70_002 };
        let read = StreamId { ms: 5, seq: 70_001 };
        // A change after the read must always compare greater after packing.
        assert!(change.pack_up() > read.pack_down());
        let early = StreamId { ms: 5, seq: 3 };
        assert!(early.pack_up() <= StreamId { ms: 5, seq: 3 }.pack_down());
        assert_eq!(StreamId::parse("12-3"), Some(StreamId { ms: 12, seq: 3 }));
        assert_eq!(StreamId::parse("x"), None);
    }
}
