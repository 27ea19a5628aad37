//! Redis Cluster's hash slot of a key (`CLUSTER KEYSLOT`). On a cluster the
//! daemon groups the cache's keys by slot into buckets (slot mod
//! `redis.cluster.buckets`), each with its own trust; the shared-memory reader
//! finds a key's trust group with the same function, so both sides agree by
//! construction.
#![forbid(unsafe_code)]

/// Redis Cluster's slot of a key: CRC16 (XMODEM) of its hash tag (the first
/// `{...}` with something inside) or of the whole key, mod 16384.
pub fn keyslot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % 16384
}
