//! The request parser as it was before #14 (an `rmpv` value tree, hand-written
//! checks), kept as the oracle the serde decoder must agree with byte for byte:
//! the same request, or the same error kind, code and message, for every input.
//! The fuzz target body and `proto_props.rs` run the new parser on arbitrary and
//! mutated frames; this test runs both on those and on frames built to reach
//! every error message.

use bytes::Bytes;
use proptest::prelude::*;
use rmpv::Value;
use shoal_client::proto::{
    parse_request, ErrorCode, Limits, Op, ParseError, Request, RevokeTarget, MAX_DURATION_MS,
};

/// Parses one frame body into a request: the parser before #14, verbatim.
pub fn parse_request_rmpv(body: &[u8], limits: &Limits) -> Result<Request, ParseError> {
    let mut rd = body;
    let value = rmpv::decode::read_value(&mut rd)
        .map_err(|e| ParseError::Unusable(format!("not MessagePack: {e}")))?;
    if !rd.is_empty() {
        return Err(ParseError::Unusable(format!(
            "{} trailing bytes after the MessagePack value",
            rd.len()
        )));
    }
    let Value::Map(entries) = value else {
        return Err(ParseError::Unusable("a request must be a map".into()));
    };
    let mut fields = Fields::new(entries);
    let id = match fields.take("id") {
        Some(Value::Integer(i)) => i
            .as_u64()
            .ok_or_else(|| ParseError::Unusable("`id` must be an unsigned integer".into()))?,
        Some(_) => {
            return Err(ParseError::Unusable(
                "`id` must be an unsigned integer".into(),
            ))
        }
        None => return Err(ParseError::Unusable("`id` is missing".into())),
    };
    let args = Args { id, fields, limits };
    args.into_request()
}

/// The map's entries, with string keys, looked up by name.
struct Fields {
    entries: Vec<(Value, Value)>,
}

impl Fields {
    fn new(entries: Vec<(Value, Value)>) -> Self {
        Fields { entries }
    }

    fn take(&mut self, name: &str) -> Option<Value> {
        let pos = self
            .entries
            .iter()
            .position(|(k, _)| k.as_str() == Some(name))?;
        Some(self.entries.swap_remove(pos).1)
    }
}

struct Args<'a> {
    id: u64,
    fields: Fields,
    limits: &'a Limits,
}

impl Args<'_> {
    fn bad(&self, msg: impl Into<String>) -> ParseError {
        ParseError::Invalid {
            id: self.id,
            code: ErrorCode::BadRequest,
            msg: msg.into(),
        }
    }

    fn opt(&mut self, name: &str) -> Option<Value> {
        match self.fields.take(name) {
            Some(Value::Nil) | None => None,
            Some(v) => Some(v),
        }
    }

    fn opt_string(&mut self, name: &str) -> Result<Option<String>, ParseError> {
        match self.opt(name) {
            None => Ok(None),
            Some(Value::String(s)) => match s.into_str() {
                Some(s) => Ok(Some(s)),
                None => Err(self.bad(format!("`{name}` must be valid UTF-8"))),
            },
            Some(_) => Err(self.bad(format!("`{name}` must be a string"))),
        }
    }

    fn string(&mut self, name: &str) -> Result<String, ParseError> {
        self.opt_string(name)?
            .ok_or_else(|| self.bad(format!("`{name}` is missing")))
    }

    /// A key-like string: non-empty and within `max_key`.
    fn key(&mut self, name: &str) -> Result<String, ParseError> {
        let s = self.string(name)?;
        self.check_key(name, &s)?;
        Ok(s)
    }

    fn check_key(&self, name: &str, s: &str) -> Result<(), ParseError> {
        if s.is_empty() {
            return Err(self.bad(format!("`{name}` must not be empty")));
        }
        if s.len() > self.limits.max_key {
            return Err(self.bad(format!(
                "`{name}` is {} bytes, longer than the limit of {} bytes",
                s.len(),
                self.limits.max_key
            )));
        }
        Ok(())
    }

    fn opt_key_array(&mut self, name: &str) -> Result<Option<Vec<String>>, ParseError> {
        let Some(v) = self.opt(name) else {
            return Ok(None);
        };
        let Value::Array(items) = v else {
            return Err(self.bad(format!("`{name}` must be an array of strings")));
        };
        if items.len() > self.limits.max_batch {
            return Err(self.bad(format!(
                "`{name}` has {} items, more than the limit of {}",
                items.len(),
                self.limits.max_batch
            )));
        }
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Value::String(s) => match s.into_str() {
                    Some(s) => {
                        self.check_key(name, &s)?;
                        out.push(s);
                    }
                    None => return Err(self.bad(format!("`{name}` items must be valid UTF-8"))),
                },
                _ => return Err(self.bad(format!("`{name}` must be an array of strings"))),
            }
        }
        Ok(Some(out))
    }

    /// A required, non-empty array of keys.
    fn key_array(&mut self, name: &str) -> Result<Vec<String>, ParseError> {
        let v = self
            .opt_key_array(name)?
            .ok_or_else(|| self.bad(format!("`{name}` is missing")))?;
        if v.is_empty() {
            return Err(self.bad(format!("`{name}` must not be empty")));
        }
        Ok(v)
    }

    fn opt_bin(&mut self, name: &str) -> Result<Option<Bytes>, ParseError> {
        match self.opt(name) {
            None => Ok(None),
            Some(Value::Binary(b)) => Ok(Some(Bytes::from(b))),
            Some(_) => Err(self.bad(format!("`{name}` must be MessagePack bin"))),
        }
    }

    fn bin(&mut self, name: &str) -> Result<Bytes, ParseError> {
        self.opt_bin(name)?
            .ok_or_else(|| self.bad(format!("`{name}` is missing")))
    }

    fn opt_uint(&mut self, name: &str) -> Result<Option<u64>, ParseError> {
        match self.opt(name) {
            None => Ok(None),
            Some(Value::Integer(i)) => i
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.bad(format!("`{name}` must be an unsigned integer"))),
            Some(_) => Err(self.bad(format!("`{name}` must be an unsigned integer"))),
        }
    }

    /// An optional duration in milliseconds: 0 is out of range.
    fn opt_ms(&mut self, name: &str) -> Result<Option<u64>, ParseError> {
        match self.opt_uint(name)? {
            Some(0) => Err(self.bad(format!("`{name}` must be a positive duration"))),
            Some(ms) if ms > MAX_DURATION_MS => Err(self.bad(format!(
                "`{name}` must be at most {MAX_DURATION_MS} ms (about 10 years)"
            ))),
            v => Ok(v),
        }
    }

    /// A rate-limit `cost`: optional (default 1), at least 1.
    fn cost(&mut self) -> Result<u64, ParseError> {
        match self.opt_uint("cost")? {
            None => Ok(1),
            Some(0) => Err(self.bad("`cost` must be at least 1")),
            Some(c) => Ok(c),
        }
    }

    /// A required duration in ms, at least 1 (a lock's lifetime).
    fn ttl(&mut self, name: &str) -> Result<u64, ParseError> {
        match self.opt_ms(name)? {
            None => Err(self.bad(format!("`{name}` is missing"))),
            Some(0) => Err(self.bad(format!("`{name}` must be at least 1"))),
            Some(v) => Ok(v),
        }
    }

    /// An optional count that must be at least 1 when given.
    fn opt_positive(&mut self, name: &str) -> Result<Option<u64>, ParseError> {
        match self.opt_uint(name)? {
            Some(0) => Err(self.bad(format!("`{name}` must be at least 1"))),
            v => Ok(v),
        }
    }

    fn opt_bool(&mut self, name: &str) -> Result<Option<bool>, ParseError> {
        match self.opt(name) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(b)),
            Some(_) => Err(self.bad(format!("`{name}` must be a boolean"))),
        }
    }

    fn into_request(mut self) -> Result<Request, ParseError> {
        let trace = match self.fields.take("trace") {
            None | Some(Value::Nil) => None,
            Some(Value::String(s)) => s.into_str(),
            Some(_) => return Err(self.bad("`trace` must be a string")),
        };
        let op_name = match self.fields.take("op") {
            Some(Value::String(s)) => match s.into_str() {
                Some(s) => s,
                None => return Err(self.bad("`op` must be valid UTF-8")),
            },
            Some(_) => return Err(self.bad("`op` must be a string")),
            None => return Err(self.bad("`op` is missing")),
        };
        let op = match op_name.as_str() {
            "hello" => Op::Hello {
                version: self
                    .opt_uint("version")?
                    .ok_or_else(|| self.bad("`version` is missing"))?,
                client: self.opt_string("client")?,
            },
            "ping" => Op::Ping,
            "stats" => Op::Stats,
            "admin.info" => Op::AdminInfo,
            "cache.get" => Op::CacheGet {
                key: self.key("key")?,
                lease: self.opt_bool("lease")?.unwrap_or(false),
            },
            "cache.mget" => Op::CacheMget {
                keys: self.key_array("keys")?,
            },
            "cache.set" => Op::CacheSet {
                key: self.key("key")?,
                value: self.bin("value")?,
                ttl_ms: self.opt_ms("ttl_ms")?,
                lease: self.opt_string("lease")?,
                tags: self.opt_key_array("tags")?.unwrap_or_default(),
            },
            "cache.invalidate" => Op::CacheInvalidate {
                keys: self.key_array("keys")?,
            },
            "cache.invalidate_tags" => Op::CacheInvalidateTags {
                tags: self.key_array("tags")?,
            },
            "session.create" => Op::SessionCreate {
                user: self.key("user")?,
                data: self.opt_bin("data")?.unwrap_or_default(),
                idle_ttl_ms: self.opt_ms("idle_ttl_ms")?,
                absolute_ttl_ms: self.opt_ms("absolute_ttl_ms")?,
            },
            "session.get" => Op::SessionGet {
                token: self.key("token")?,
                touch: self.opt_bool("touch")?.unwrap_or(true),
            },
            "session.update" => Op::SessionUpdate {
                token: self.key("token")?,
                data: self.bin("data")?,
            },
            "session.rotate" => Op::SessionRotate {
                token: self.key("token")?,
            },
            "session.revoke" => {
                let token = self.opt_string("token")?;
                let sid = self.opt_string("session_id")?;
                let target = match (token, sid) {
                    (Some(t), None) => {
                        self.check_key("token", &t)?;
                        RevokeTarget::Token(t)
                    }
                    (None, Some(s)) => {
                        self.check_key("session_id", &s)?;
                        RevokeTarget::SessionId(s)
                    }
                    (Some(_), Some(_)) => {
                        return Err(self.bad("give `token` or `session_id`, not both"))
                    }
                    (None, None) => return Err(self.bad("`token` or `session_id` is missing")),
                };
                Op::SessionRevoke { target }
            }
            "session.revoke_user" => Op::SessionRevokeUser {
                user: self.key("user")?,
            },
            "session.list" => Op::SessionList {
                user: self.key("user")?,
            },
            "ratelimit.check" => Op::RatelimitCheck {
                policy: self.key("policy")?,
                key: self.key("key")?,
                cost: self.cost()?,
            },
            "ratelimit.peek" => Op::RatelimitPeek {
                policy: self.key("policy")?,
                key: self.key("key")?,
            },
            "ratelimit.reset" => Op::RatelimitReset {
                policy: self.key("policy")?,
                key: self.key("key")?,
            },
            "ratelimit.penalty" => Op::RatelimitPenalty {
                policy: self.key("policy")?,
                key: self.key("key")?,
                points: self
                    .opt_positive("points")?
                    .ok_or_else(|| self.bad("`points` is missing"))?,
            },
            "ratelimit.reward" => Op::RatelimitReward {
                policy: self.key("policy")?,
                key: self.key("key")?,
                points: self
                    .opt_positive("points")?
                    .ok_or_else(|| self.bad("`points` is missing"))?,
            },
            "ratelimit.reserve" => Op::RatelimitReserve {
                policy: self.key("policy")?,
                key: self.key("key")?,
                cost: self.cost()?,
                max_wait_ms: self
                    .opt_ms("max_wait_ms")?
                    .ok_or_else(|| self.bad("`max_wait_ms` is missing"))?,
            },
            "ratelimit.acquire_concurrent" => Op::RatelimitAcquireConcurrent {
                policy: self.key("policy")?,
                key: self.key("key")?,
                lease_ms: self.opt_ms("lease_ms")?,
            },
            "ratelimit.release" => Op::RatelimitRelease {
                policy: self.key("policy")?,
                key: self.key("key")?,
                lease: self.key("lease")?,
            },
            "ratelimit.set_override" => Op::RatelimitSetOverride {
                policy: self.key("policy")?,
                key: self.key("key")?,
                limit: self
                    .opt_positive("limit")?
                    .ok_or_else(|| self.bad("`limit` is missing"))?,
                burst: self.opt_positive("burst")?,
            },
            "ratelimit.clear_override" => Op::RatelimitClearOverride {
                policy: self.key("policy")?,
                key: self.key("key")?,
            },
            "lock.acquire" => Op::LockAcquire {
                name: self.key("name")?,
                ttl_ms: self.ttl("ttl_ms")?,
                wait_ms: self.opt_ms("wait_ms")?,
            },
            "lock.extend" => Op::LockExtend {
                name: self.key("name")?,
                token: self.key("token")?,
                ttl_ms: self.ttl("ttl_ms")?,
            },
            "lock.release" => Op::LockRelease {
                name: self.key("name")?,
                token: self.key("token")?,
            },
            "quota.usage" => Op::QuotaUsage {
                policy: self.key("policy")?,
                prefix: match self.opt_string("prefix")? {
                    Some(p) if p.len() > self.limits.max_key => {
                        return Err(self.bad(format!(
                            "`prefix` is longer than the limit of {} bytes",
                            self.limits.max_key
                        )))
                    }
                    p => p,
                },
                max_keys: self.opt_positive("max_keys")?,
            },
            other => {
                return Err(ParseError::Invalid {
                    id: self.id,
                    code: ErrorCode::UnknownOp,
                    msg: format!("unknown op `{}`", truncate(other, 64)),
                })
            }
        };
        Ok(Request {
            id: self.id,
            trace,
            op,
        })
    }
}

/// Durations beyond this are refused: they overflow Redis PX arithmetic long before
/// anyone means them.
const _OLD_MAX_DURATION_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

// ---- the comparison ----

/// A MessagePack value to write, including what a sloppy or hostile writer sends.
#[derive(Debug, Clone)]
enum G {
    Nil,
    /// `0xc1`, which MessagePack never uses.
    Reserved,
    Bool(bool),
    Uint(u64),
    /// A non-negative number written with a signed marker.
    I32(i32),
    Int(i64),
    F64(f64),
    Str(String),
    BadStr(Vec<u8>),
    Bin(Vec<u8>),
    Arr(Vec<G>),
    Map(Vec<(G, G)>),
    Ext(i8, Vec<u8>),
}

fn write(g: &G, out: &mut Vec<u8>) {
    use rmp::encode as e;
    match g {
        G::Nil => e::write_nil(out).expect("writing to a Vec"),
        G::Reserved => out.push(0xc1),
        G::Bool(b) => e::write_bool(out, *b).expect("writing to a Vec"),
        G::Uint(u) => {
            e::write_uint(out, *u).expect("writing to a Vec");
        }
        G::I32(i) => e::write_i32(out, *i).expect("writing to a Vec"),
        G::Int(i) => {
            e::write_sint(out, *i).expect("writing to a Vec");
        }
        G::F64(f) => e::write_f64(out, *f).expect("writing to a Vec"),
        G::Str(s) => e::write_str(out, s).expect("writing to a Vec"),
        G::BadStr(b) => {
            e::write_str_len(out, b.len() as u32).expect("writing to a Vec");
            out.extend_from_slice(b);
        }
        G::Bin(b) => e::write_bin(out, b).expect("writing to a Vec"),
        G::Arr(items) => {
            e::write_array_len(out, items.len() as u32).expect("writing to a Vec");
            for i in items {
                write(i, out);
            }
        }
        G::Map(entries) => {
            e::write_map_len(out, entries.len() as u32).expect("writing to a Vec");
            for (k, v) in entries {
                write(k, out);
                write(v, out);
            }
        }
        G::Ext(t, d) => {
            e::write_ext_meta(out, d.len() as u32, *t).expect("writing to a Vec");
            out.extend_from_slice(d);
        }
    }
}

const NAMES: &[&str] = &[
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
    "junk",
];

const OPS: &[&str] = &[
    "hello",
    "ping",
    "stats",
    "admin.info",
    "cache.get",
    "cache.mget",
    "cache.set",
    "cache.invalidate",
    "cache.invalidate_tags",
    "session.create",
    "session.get",
    "session.update",
    "session.rotate",
    "session.revoke",
    "session.revoke_user",
    "session.list",
    "ratelimit.check",
    "ratelimit.peek",
    "ratelimit.reset",
    "ratelimit.penalty",
    "ratelimit.reward",
    "ratelimit.reserve",
    "ratelimit.acquire_concurrent",
    "ratelimit.release",
    "ratelimit.set_override",
    "ratelimit.clear_override",
    "lock.acquire",
    "lock.extend",
    "lock.release",
    "quota.usage",
    "nope",
    "",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z:é]{0,6}",
        Just(String::new()),
        (0usize..20).prop_map(|n| "k".repeat(n * 300)),
    ]
}

fn scalar() -> impl Strategy<Value = G> {
    prop_oneof![
        Just(G::Nil),
        Just(G::Reserved),
        any::<bool>().prop_map(G::Bool),
        prop_oneof![
            Just(0u64),
            Just(1),
            2u64..100_000,
            Just(MAX_DURATION_MS),
            Just(MAX_DURATION_MS + 1),
            any::<u64>()
        ]
        .prop_map(G::Uint),
        (-3i32..3).prop_map(G::I32),
        (-1000i64..-1).prop_map(G::Int),
        Just(G::F64(1.5)),
        text().prop_map(G::Str),
        proptest::sample::select(OPS).prop_map(|s| G::Str(s.to_string())),
        proptest::collection::vec(0x80u8..0xff, 1..4).prop_map(G::BadStr),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(G::Bin),
        (any::<i8>(), proptest::collection::vec(any::<u8>(), 0..5)).prop_map(|(t, d)| G::Ext(t, d)),
    ]
}

fn value() -> impl Strategy<Value = G> {
    scalar().prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(G::Arr),
            proptest::collection::vec((inner.clone(), inner), 0..3).prop_map(G::Map),
        ]
    })
}

fn entry() -> impl Strategy<Value = (G, G)> {
    (
        prop_oneof![
            4 => proptest::sample::select(NAMES).prop_map(|n| G::Str(n.to_string())),
            1 => scalar(),
        ],
        value(),
    )
}

/// A map with a usable id and op most of the time, then fields of any kind.
fn request_map() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![4 => (0u64..50).prop_map(G::Uint), 1 => scalar()],
        prop_oneof![4 => proptest::sample::select(OPS).prop_map(|s| G::Str(s.to_string())), 1 => scalar()],
        proptest::collection::vec(entry(), 0..8),
        any::<bool>(),
    )
        .prop_map(|(id, op, mut rest, id_last)| {
            let mut entries = vec![(G::Str("op".into()), op)];
            entries.append(&mut rest);
            let id = (G::Str("id".into()), id);
            if id_last {
                entries.push(id);
            } else {
                entries.insert(0, id);
            }
            let mut out = Vec::new();
            write(&G::Map(entries), &mut out);
            out
        })
}

fn same(body: &[u8]) {
    let limits = Limits {
        max_key: 1000,
        max_batch: 4,
    };
    assert_eq!(
        parse_request(body, &limits),
        parse_request_rmpv(body, &limits),
        "frame {body:02x?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn serde_decoder_agrees_with_the_old_parser_on_request_maps(body in request_map()) {
        same(&body);
    }

    #[test]
    fn serde_decoder_agrees_on_damaged_maps(
        body in request_map(),
        cut in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        same(&body[..cut.index(body.len() + 1)]);
        let mut flipped = body.clone();
        if !flipped.is_empty() {
            let i = at.index(flipped.len());
            flipped[i] = byte;
            same(&flipped);
        }
        let mut longer = body;
        longer.push(byte);
        same(&longer);
    }

    #[test]
    fn serde_decoder_agrees_on_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..64)) {
        same(&body);
    }
}

#[test]
fn serde_decoder_agrees_on_deep_nesting() {
    // The old parser recurses deeper than a test thread's stack in debug builds.
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(deep_nesting)
        .expect("thread")
        .join()
        .expect("agrees");
}

fn deep_nesting() {
    for depth in [
        1usize, 100, 340, 341, 342, 510, 511, 512, 513, 1023, 1024, 1025,
    ] {
        for (open, leaf) in [(0x91u8, 0xc0u8), (0x81, 0xa0)] {
            let mut body = vec![0x82, 0xa2, b'i', b'd', 0x01, 0xa2, b'o', b'p'];
            body.extend(std::iter::repeat_n(open, depth));
            if open == 0x81 {
                // a map's key, then its value, at each level
                body.clear();
                body.extend([0x82, 0xa2, b'i', b'd', 0x01, 0xa1, b'x']);
                for _ in 0..depth {
                    body.extend([0x81, 0xa0]);
                }
            }
            body.push(leaf);
            same(&body);
        }
    }
}

#[test]
fn serde_decoder_agrees_on_the_fuzz_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/frames");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz corpus") {
        let data = std::fs::read(entry.expect("entry").path()).expect("read");
        same(&data);
        if data.len() > 4 {
            same(&data[4..]);
        }
        n += 1;
    }
    assert!(n > 0, "no corpus files in {}", dir.display());
}

#[test]
fn every_op_roundtrips_through_both() {
    let ops = vec![
        Op::Hello {
            version: 1,
            client: Some("c".into()),
        },
        Op::CacheSet {
            key: "k".into(),
            value: Bytes::from_static(b"\xff\x00"),
            ttl_ms: Some(5),
            lease: Some("l".into()),
            tags: vec!["t".into()],
        },
        Op::SessionRevoke {
            target: RevokeTarget::Token("t".into()),
        },
        Op::QuotaUsage {
            policy: "p".into(),
            prefix: Some("a".into()),
            max_keys: Some(3),
        },
    ];
    for op in ops {
        let r = Request {
            id: 3,
            trace: Some("00-1-2-01".into()),
            op,
        };
        let body = r.encode();
        same(&body);
        assert_eq!(parse_request(&body, &Limits::default()), Ok(r));
    }
}
