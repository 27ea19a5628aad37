//! `parse_request`: one frame body to a `Request`, with the same error codes and
//! messages for every kind of bad input as PROTOCOL.md and the recorded vectors
//! give. The frame is checked and its fields borrowed by `fields.rs`; this file
//! holds each op's argument rules, checked in a fixed order so the first problem
//! reported does not depend on the order of the map's entries.

use bytes::Bytes;

use super::fields::{check, Field, Fields};
use super::{Limits, Op, ParseError, Request, RevokeTarget, MAX_DURATION_MS};
use crate::proto::ErrorCode;

/// Parses one frame body into a request.
pub fn parse_request(body: &[u8], limits: &Limits) -> Result<Request, ParseError> {
    let checked = check(body).map_err(|e| ParseError::Unusable(format!("not MessagePack: {e}")))?;
    if checked.trailing > 0 {
        return Err(ParseError::Unusable(format!(
            "{} trailing bytes after the MessagePack value",
            checked.trailing
        )));
    }
    if !checked.is_map {
        return Err(ParseError::Unusable("a request must be a map".into()));
    }
    if checked.reserved.is_empty() {
        parse_fields(body, limits)
    } else {
        // `0xc1` (never used by MessagePack) was read as nil; keep doing so.
        let mut patched = body.to_vec();
        for at in checked.reserved {
            patched[at] = 0xc0;
        }
        parse_fields(&patched, limits)
    }
}

fn parse_fields(frame: &[u8], limits: &Limits) -> Result<Request, ParseError> {
    let mut fields =
        Fields::decode(frame).map_err(|e| ParseError::Unusable(format!("not MessagePack: {e}")))?;
    let id = match fields.take("id") {
        Some(Field::Uint(i)) => i,
        Some(_) => {
            return Err(ParseError::Unusable(
                "`id` must be an unsigned integer".into(),
            ))
        }
        None => return Err(ParseError::Unusable("`id` is missing".into())),
    };
    let args = Args {
        id,
        fields: &mut fields,
        limits,
    };
    args.into_request()
}

struct Args<'f, 'r> {
    id: u64,
    fields: &'r mut Fields<'f>,
    limits: &'r Limits,
}

impl<'f> Args<'f, '_> {
    fn bad(&self, msg: impl Into<String>) -> ParseError {
        ParseError::Invalid {
            id: self.id,
            code: ErrorCode::BadRequest,
            msg: msg.into(),
        }
    }

    fn opt(&mut self, name: &str) -> Option<Field<'f>> {
        match self.fields.take(name) {
            Some(Field::Nil) | None => None,
            Some(v) => Some(v),
        }
    }

    fn opt_string(&mut self, name: &str) -> Result<Option<String>, ParseError> {
        match self.opt(name) {
            None => Ok(None),
            Some(Field::Str(s)) => Ok(Some(s.to_owned())),
            Some(Field::BadStr) => Err(self.bad(format!("`{name}` must be valid UTF-8"))),
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
        let Field::Array(items) = v else {
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
                Field::Str(s) => {
                    self.check_key(name, s)?;
                    out.push(s.to_owned());
                }
                Field::BadStr => {
                    return Err(self.bad(format!("`{name}` items must be valid UTF-8")))
                }
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
            Some(Field::Bin(b)) => Ok(Some(Bytes::copy_from_slice(b))),
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
            Some(Field::Uint(i)) => Ok(Some(i)),
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
            Some(Field::Bool(b)) => Ok(Some(b)),
            Some(_) => Err(self.bad(format!("`{name}` must be a boolean"))),
        }
    }

    fn into_request(mut self) -> Result<Request, ParseError> {
        let trace = match self.fields.take("trace") {
            None | Some(Field::Nil | Field::BadStr) => None,
            Some(Field::Str(s)) => Some(s.to_owned()),
            Some(_) => return Err(self.bad("`trace` must be a string")),
        };
        let op_name = match self.fields.take("op") {
            Some(Field::Str(s)) => s,
            Some(Field::BadStr) => return Err(self.bad("`op` must be valid UTF-8")),
            Some(_) => return Err(self.bad("`op` must be a string")),
            None => return Err(self.bad("`op` is missing")),
        };
        let op = match op_name {
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use rmpv::Value;

    use super::*;

    fn parse(v: Value) -> Result<Request, ParseError> {
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, &v).unwrap();
        parse_request(&buf, &Limits::default())
    }

    fn map(entries: Vec<(&str, Value)>) -> Value {
        Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (Value::from(k), v))
                .collect(),
        )
    }

    #[test]
    fn unusable_frames_close() {
        assert!(matches!(
            parse_request(&[0xc1], &Limits::default()),
            Err(ParseError::Unusable(_))
        ));
        assert!(matches!(
            parse(Value::from(3)),
            Err(ParseError::Unusable(_))
        ));
        assert!(matches!(
            parse(map(vec![("op", Value::from("ping"))])),
            Err(ParseError::Unusable(_))
        ));
        assert!(matches!(
            parse(map(vec![
                ("id", Value::from(-1)),
                ("op", Value::from("ping"))
            ])),
            Err(ParseError::Unusable(_))
        ));
        assert!(matches!(
            parse(map(vec![
                ("id", Value::from("7")),
                ("op", Value::from("ping"))
            ])),
            Err(ParseError::Unusable(_))
        ));
    }

    #[test]
    fn wrong_requests_keep_their_id() {
        let e = parse(map(vec![
            ("id", Value::from(9)),
            ("op", Value::from("nope")),
        ]));
        assert!(matches!(
            e,
            Err(ParseError::Invalid {
                id: 9,
                code: ErrorCode::UnknownOp,
                ..
            })
        ));
        let e = parse(map(vec![("id", Value::from(9))]));
        assert!(matches!(
            e,
            Err(ParseError::Invalid {
                id: 9,
                code: ErrorCode::BadRequest,
                ..
            })
        ));
        let e = parse(map(vec![
            ("id", Value::from(9)),
            ("op", Value::from("cache.get")),
            ("key", Value::from(5)),
        ]));
        assert!(matches!(
            e,
            Err(ParseError::Invalid {
                id: 9,
                code: ErrorCode::BadRequest,
                ..
            })
        ));
        let e = parse(map(vec![
            ("id", Value::from(9)),
            ("op", Value::from("cache.set")),
            ("key", Value::from("k")),
            ("value", Value::from("a string, not bin")),
        ]));
        assert!(matches!(
            e,
            Err(ParseError::Invalid {
                id: 9,
                code: ErrorCode::BadRequest,
                ..
            })
        ));
        let e = parse(map(vec![
            ("id", Value::from(9)),
            ("op", Value::from("cache.set")),
            ("key", Value::from("k")),
            ("value", Value::Binary(vec![1])),
            ("ttl_ms", Value::from(0)),
        ]));
        assert!(matches!(
            e,
            Err(ParseError::Invalid {
                id: 9,
                code: ErrorCode::BadRequest,
                ..
            })
        ));
        let long = "k".repeat(5000);
        let e = parse(map(vec![
            ("id", Value::from(9)),
            ("op", Value::from("cache.get")),
            ("key", Value::from(long.as_str())),
        ]));
        assert!(matches!(
            e,
            Err(ParseError::Invalid {
                id: 9,
                code: ErrorCode::BadRequest,
                ..
            })
        ));
    }

    #[test]
    fn encode_then_parse_roundtrips() {
        let reqs = vec![
            Op::Hello {
                version: 1,
                client: Some("t/1".into()),
            },
            Op::Ping,
            Op::CacheGet {
                key: "a".into(),
                lease: true,
            },
            Op::CacheSet {
                key: "a".into(),
                value: Bytes::from_static(b"\x00\x01"),
                ttl_ms: Some(5),
                lease: Some("tok".into()),
                tags: vec!["t".into()],
            },
            Op::CacheMget {
                keys: vec!["a".into(), "b".into()],
            },
            Op::SessionRevoke {
                target: RevokeTarget::SessionId("s".into()),
            },
            Op::RatelimitCheck {
                policy: "p".into(),
                key: "k".into(),
                cost: 3,
            },
        ];
        for (i, op) in reqs.into_iter().enumerate() {
            let r = Request {
                id: i as u64,
                trace: Some("00-ab-cd-01".into()),
                op,
            };
            assert_eq!(parse_request(&r.encode(), &Limits::default()).unwrap(), r);
        }
    }

    #[test]
    fn ratelimit_ops_validate_their_arguments() {
        let bad = |fields: Vec<(&str, Value)>| {
            let mut f = vec![("id", Value::from(4))];
            f.extend(fields);
            matches!(
                parse(map(f)),
                Err(ParseError::Invalid {
                    id: 4,
                    code: ErrorCode::BadRequest,
                    ..
                })
            )
        };
        let pk = || vec![("policy", Value::from("p")), ("key", Value::from("k"))];
        let with = |op: &str, extra: Vec<(&'static str, Value)>| {
            let mut f = vec![("op", Value::from(op))];
            f.extend(pk());
            f.extend(extra);
            f
        };
        assert!(
            bad(with("ratelimit.reserve", vec![])),
            "max_wait_ms missing"
        );
        assert!(bad(with(
            "ratelimit.reserve",
            vec![("max_wait_ms", Value::from(0))]
        )));
        assert!(bad(with(
            "ratelimit.reserve",
            vec![("max_wait_ms", Value::from(5)), ("cost", Value::from(0))]
        )));
        assert!(bad(with(
            "ratelimit.acquire_concurrent",
            vec![("lease_ms", Value::from(0))]
        )));
        assert!(bad(with("ratelimit.release", vec![])), "lease missing");
        assert!(bad(with("ratelimit.set_override", vec![])), "limit missing");
        assert!(bad(with(
            "ratelimit.set_override",
            vec![("limit", Value::from(0))]
        )));
        assert!(bad(with(
            "ratelimit.set_override",
            vec![("limit", Value::from(1)), ("burst", Value::from(0))]
        )));
        assert!(bad(vec![
            ("op", Value::from("quota.usage")),
            ("policy", Value::from("p")),
            ("max_keys", Value::from(0)),
        ]));
        assert!(bad(vec![
            ("op", Value::from("quota.usage")),
            ("policy", Value::from("p")),
            ("prefix", Value::from(3)),
        ]));
        let ok = parse(map(vec![
            ("id", Value::from(4)),
            ("op", Value::from("quota.usage")),
            ("policy", Value::from("p")),
        ]))
        .unwrap();
        assert_eq!(
            ok.op,
            Op::QuotaUsage {
                policy: "p".into(),
                prefix: None,
                max_keys: None
            }
        );
    }
}
