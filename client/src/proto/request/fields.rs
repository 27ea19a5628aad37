//! Decoding a request frame without a value tree, in two passes: `check` walks the
//! MessagePack bytes exactly as `rmpv` did (same errors, same depth limit), so an
//! unusable frame gets the message it always got; then serde (`rmp_serde` over the
//! frame) collects the top-level map's known fields as `Field`s that borrow their
//! strings and bytes from the frame. `parse.rs` applies each op's rules to them.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize as _;

/// Nesting budget of a frame, as `rmpv::decode::MAX_DEPTH` counts it (every value
/// costs one, every container, string and binary one more).
const MAX_DEPTH: u16 = 1024;

/// Why [`check`] refused a frame, worded as `rmpv::decode::Error` words it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WalkError {
    Marker,
    Data,
    Short { len: usize, read: usize },
    Depth,
}

impl fmt::Display for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalkError::Marker => {
                f.write_str("I/O error while reading marker byte: failed to fill whole buffer")
            }
            WalkError::Data => {
                f.write_str("I/O error while reading non-marker bytes: failed to fill whole buffer")
            }
            WalkError::Short { len, read } => write!(
                f,
                "I/O error while reading non-marker bytes: Expected {len} bytes, read {read} bytes"
            ),
            WalkError::Depth => f.write_str("depth limit exceeded"),
        }
    }
}

/// The outcome of [`check`] on a well-formed frame.
pub(super) struct Checked {
    /// Bytes after the first value.
    pub trailing: usize,
    /// Whether the value is a map.
    pub is_map: bool,
    /// Offsets of the reserved marker `0xc1`, which `rmpv` read as nil and
    /// `rmp_serde` refuses; the caller patches them to nil (`0xc0`).
    pub reserved: Vec<usize>,
}

/// Walks the first MessagePack value of `body` without building it.
pub(super) fn check(body: &[u8]) -> Result<Checked, WalkError> {
    let mut w = Walk {
        buf: body,
        pos: 0,
        reserved: Vec::new(),
    };
    w.value(MAX_DEPTH)?;
    Ok(Checked {
        trailing: body.len() - w.pos,
        is_map: matches!(body.first(), Some(0x80..=0x8f | 0xde | 0xdf)),
        reserved: w.reserved,
    })
}

struct Walk<'a> {
    buf: &'a [u8],
    pos: usize,
    reserved: Vec<usize>,
}

fn dec(depth: u16) -> Result<u16, WalkError> {
    depth.checked_sub(1).ok_or(WalkError::Depth)
}

impl Walk<'_> {
    fn data(&mut self, n: usize) -> Result<&[u8], WalkError> {
        if self.buf.len() - self.pos < n {
            self.pos = self.buf.len();
            return Err(WalkError::Data);
        }
        let d = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(d)
    }

    fn len(&mut self, width: usize) -> Result<usize, WalkError> {
        let d = self.data(width)?;
        Ok(d.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b)))
    }

    /// `rmpv`'s `read_bin_data`: one level, then `len` bytes.
    fn bytes(&mut self, len: usize, depth: u16) -> Result<(), WalkError> {
        dec(depth)?;
        let avail = self.buf.len() - self.pos;
        if avail < len {
            self.pos = self.buf.len();
            return Err(WalkError::Short { len, read: avail });
        }
        self.pos += len;
        Ok(())
    }

    fn str(&mut self, len: usize, depth: u16) -> Result<(), WalkError> {
        let depth = dec(depth)?;
        self.bytes(len, depth)
    }

    fn array(&mut self, len: usize, depth: u16) -> Result<(), WalkError> {
        let depth = dec(depth)?;
        for _ in 0..len {
            self.value(depth)?;
        }
        Ok(())
    }

    fn map(&mut self, len: usize, depth: u16) -> Result<(), WalkError> {
        let depth = dec(depth)?;
        for _ in 0..len {
            self.value(depth)?;
            self.value(depth)?;
        }
        Ok(())
    }

    fn ext(&mut self, len: usize, depth: u16) -> Result<(), WalkError> {
        let depth = dec(depth)?;
        self.data(1)?;
        self.bytes(len, depth)
    }

    fn value(&mut self, depth: u16) -> Result<(), WalkError> {
        let depth = dec(depth)?;
        let Some(&m) = self.buf.get(self.pos) else {
            return Err(WalkError::Marker);
        };
        self.pos += 1;
        match m {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => Ok(()),
            0xc1 => {
                self.reserved.push(self.pos - 1);
                Ok(())
            }
            0x80..=0x8f => self.map(usize::from(m & 0x0f), depth),
            0x90..=0x9f => self.array(usize::from(m & 0x0f), depth),
            0xa0..=0xbf => self.str(usize::from(m & 0x1f), depth),
            0xc4..=0xc6 => {
                let n = self.len(1 << (m - 0xc4))?;
                self.bytes(n, depth)
            }
            0xc7..=0xc9 => {
                let n = self.len(1 << (m - 0xc7))?;
                self.ext(n, depth)
            }
            0xca | 0xce | 0xd2 => self.data(4).map(drop),
            0xcb | 0xcf | 0xd3 => self.data(8).map(drop),
            0xcc | 0xd0 => self.data(1).map(drop),
            0xcd | 0xd1 => self.data(2).map(drop),
            0xd4..=0xd8 => self.ext(1 << (m - 0xd4), depth),
            0xd9..=0xdb => {
                let n = self.len(1 << (m - 0xd9))?;
                self.str(n, depth)
            }
            0xdc | 0xdd => {
                let n = self.len(2 << (m - 0xdc))?;
                self.array(n, depth)
            }
            0xde | 0xdf => {
                let n = self.len(2 << (m - 0xde))?;
                self.map(n, depth)
            }
        }
    }
}

/// One argument as the frame carries it, borrowing from the frame.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Field<'a> {
    Nil,
    Bool(bool),
    /// A non-negative integer, whatever its MessagePack width or signedness.
    Uint(u64),
    Str(&'a str),
    /// A MessagePack str whose bytes are not UTF-8.
    BadStr,
    Bin(&'a [u8]),
    /// An array; its items are never arrays (a nested array is `Other`).
    Array(Vec<Field<'a>>),
    /// Anything else: negative integers, floats, maps, extension types.
    Other,
}

/// The slot of each field name a request may carry; any other name is ignored.
pub(super) fn slot(name: &str) -> Option<usize> {
    Some(match name {
        "id" => 0,
        "op" => 1,
        "trace" => 2,
        "version" => 3,
        "client" => 4,
        "key" => 5,
        "keys" => 6,
        "value" => 7,
        "ttl_ms" => 8,
        "lease" => 9,
        "tags" => 10,
        "user" => 11,
        "data" => 12,
        "idle_ttl_ms" => 13,
        "absolute_ttl_ms" => 14,
        "token" => 15,
        "touch" => 16,
        "session_id" => 17,
        "policy" => 18,
        "cost" => 19,
        "points" => 20,
        "max_wait_ms" => 21,
        "lease_ms" => 22,
        "limit" => 23,
        "burst" => 24,
        "name" => 25,
        "wait_ms" => 26,
        "prefix" => 27,
        "max_keys" => 28,
        _ => return None,
    })
}

/// The entries of a request map, taken out by name the way the parser before #14
/// did (so repeated names give the same answers): the first entry of that name,
/// removed by `swap_remove`, which moves the last entry into its place. Entries
/// with other names stay as placeholders, since they take part in that shuffle.
/// Up to `INLINE` entries live on the stack; a larger map goes to the heap.
#[derive(Debug)]
pub(super) struct Fields<'a> {
    inline: [(u8, Field<'a>); INLINE],
    len: usize,
    /// All entries, when the map has more than `INLINE`.
    spill: Vec<(u8, Field<'a>)>,
}

/// Entries kept without allocating (`cache.set`, the largest request, has 8
/// fields counting `id`, `op` and `trace`).
const INLINE: usize = 10;
/// The slot of an entry whose name is not a known field.
const NO_SLOT: u8 = u8::MAX;

impl<'a> Fields<'a> {
    /// Decodes the map `frame` holds (already [`check`]ed, reserved markers patched).
    pub fn decode(frame: &'a [u8]) -> Result<Fields<'a>, rmp_serde::decode::Error> {
        let mut fields = Fields {
            inline: [const { (NO_SLOT, Field::Nil) }; INLINE],
            len: 0,
            spill: Vec::new(),
        };
        let mut de = rmp_serde::Deserializer::from_read_ref(frame);
        de.deserialize_map(FieldsVisitor {
            frame,
            out: &mut fields,
        })?;
        Ok(fields)
    }

    fn push(&mut self, entry: (u8, Field<'a>)) {
        if self.len < INLINE {
            self.inline[self.len] = entry;
            self.len += 1;
            return;
        }
        if self.spill.is_empty() {
            self.spill.extend(
                self.inline
                    .iter_mut()
                    .map(|e| std::mem::replace(e, (NO_SLOT, Field::Nil))),
            );
        }
        self.spill.push(entry);
    }

    /// Takes field `name` out.
    pub fn take(&mut self, name: &str) -> Option<Field<'a>> {
        debug_assert!(slot(name).is_some(), "field `{name}` has no slot");
        let want = u8::try_from(slot(name)?).ok()?;
        if !self.spill.is_empty() {
            let pos = self.spill.iter().position(|(s, _)| *s == want)?;
            return Some(self.spill.swap_remove(pos).1);
        }
        let entries = &mut self.inline[..self.len];
        let pos = entries.iter().position(|(s, _)| *s == want)?;
        let last = entries.len() - 1;
        entries.swap(pos, last);
        self.len = last;
        Some(std::mem::replace(&mut self.inline[last], (NO_SLOT, Field::Nil)).1)
    }
}

/// Fills `out` (in place: `Fields` is a few hundred bytes, not worth moving).
struct FieldsVisitor<'a, 'o> {
    frame: &'a [u8],
    out: &'o mut Fields<'a>,
}

impl<'de> Visitor<'de> for FieldsVisitor<'de, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a request map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let fields = self.out;
        while let Some(name) = map.next_key_seed(KeySeed)? {
            match name.and_then(slot).and_then(|i| u8::try_from(i).ok()) {
                Some(i) => {
                    let v = map.next_value_seed(FieldSeed {
                        frame: self.frame,
                        nested: false,
                    })?;
                    fields.push((i, v));
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                    fields.push((NO_SLOT, Field::Other));
                }
            }
        }
        Ok(())
    }
}

/// A map key: its name when it is a UTF-8 string, else `None` (never matches).
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Option<&'de str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        // Keys that are not strings are consumed like any ignored value.
        let f = d.deserialize_any(FieldVisitor {
            frame: &[],
            nested: true,
        })?;
        Ok(match f {
            Field::Str(s) => Some(s),
            _ => None,
        })
    }
}

struct FieldSeed<'a> {
    frame: &'a [u8],
    nested: bool,
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'de> {
    type Value = Field<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Field<'de>, D::Error> {
        d.deserialize_any(FieldVisitor {
            frame: self.frame,
            nested: self.nested,
        })
    }
}

struct FieldVisitor<'a> {
    frame: &'a [u8],
    nested: bool,
}

impl<'de> Visitor<'de> for FieldVisitor<'de> {
    type Value = Field<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a MessagePack value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Field<'de>, E> {
        Ok(Field::Nil)
    }

    fn visit_none<E: de::Error>(self) -> Result<Field<'de>, E> {
        Ok(Field::Nil)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Field<'de>, E> {
        Ok(Field::Bool(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Field<'de>, E> {
        Ok(Field::Uint(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Field<'de>, E> {
        Ok(u64::try_from(v).map_or(Field::Other, Field::Uint))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Field<'de>, E> {
        Ok(Field::Other)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Field<'de>, E> {
        Ok(Field::Str(v))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Field<'de>, E> {
        Err(E::custom("a string not borrowed from the frame"))
    }

    /// `rmp_serde` hands over bin and non-UTF-8 str alike as bytes; the header in
    /// front of them in the frame tells which.
    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Field<'de>, E> {
        if is_str_payload(self.frame, v) {
            Ok(Field::BadStr)
        } else {
            Ok(Field::Bin(v))
        }
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Field<'de>, E> {
        Err(E::custom("bytes not borrowed from the frame"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field<'de>, A::Error> {
        if self.nested {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(Field::Other);
        }
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element_seed(FieldSeed {
            frame: self.frame,
            nested: true,
        })? {
            items.push(item);
        }
        Ok(Field::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Field::Other)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Field<'de>, D::Error> {
        // `rmp_serde`'s extension types.
        IgnoredAny::deserialize(d)?;
        Ok(Field::Other)
    }
}

/// Whether `payload` (a slice of `frame`) is the body of a MessagePack str: the
/// bytes right in front of it are a str header announcing exactly its length. No
/// bin header can be read that way (a bin header's last bytes would have to
/// announce a length they cannot).
fn is_str_payload(frame: &[u8], payload: &[u8]) -> bool {
    let base = frame.as_ptr() as usize;
    let Some(at) = (payload.as_ptr() as usize).checked_sub(base) else {
        return false;
    };
    let Some(head) = frame.get(..at) else {
        return false;
    };
    let n = payload.len();
    match *head {
        [.., m] if m & 0xe0 == 0xa0 && usize::from(m & 0x1f) == n => true,
        [.., 0xd9, l] if usize::from(l) == n => true,
        [.., 0xda, a, b] if usize::from(u16::from_be_bytes([a, b])) == n => true,
        [.., 0xdb, a, b, c, d] if usize::try_from(u32::from_be_bytes([a, b, c, d])) == Ok(n) => {
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn str_and_bin_headers_are_told_apart() {
        for n in [0usize, 1, 31, 32, 255, 256, 65_535, 65_536] {
            let payload = vec![0xffu8; n];
            let mut s = Vec::new();
            rmp::encode::write_str_len(&mut s, n as u32).unwrap();
            let hs = s.len();
            s.extend_from_slice(&payload);
            assert!(is_str_payload(&s, &s[hs..]), "str of {n}");
            let mut b = Vec::new();
            rmp::encode::write_bin_len(&mut b, n as u32).unwrap();
            let hb = b.len();
            b.extend_from_slice(&payload);
            assert!(!is_str_payload(&b, &b[hb..]), "bin of {n}");
        }
    }

    #[test]
    fn every_slot_is_distinct() {
        let names = [
            "id",
            "op",
            "trace",
            "version",
            "client",
            "key",
            "keys",
            "value",
            "ttl_ms",
            "lease",
            "tags",
            "user",
            "data",
            "idle_ttl_ms",
            "absolute_ttl_ms",
            "token",
            "touch",
            "session_id",
            "policy",
            "cost",
            "points",
            "max_wait_ms",
            "lease_ms",
            "limit",
            "burst",
            "name",
            "wait_ms",
            "prefix",
            "max_keys",
        ];
        let mut seen: Vec<usize> = names.iter().filter_map(|n| slot(n)).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..names.len()).collect::<Vec<_>>());
    }
}
