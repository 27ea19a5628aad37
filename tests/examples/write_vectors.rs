//! Records the protocol test vectors in `tests/vectors/` from a real daemon.
//!
//! The scenarios (requests, which response fields vary, what to capture) are
//! written here; the responses are whatever `shoald` answers. Run it after a
//! change of the protocol, review the diff of `tests/vectors/*.json` like code
//! (every change of an exact field is a change of the contract), then
//! `cargo test -p shoal-tests --test vectors` replays them.
//!
//! ```sh
//! cargo build -p shoald --bin shoald && cargo run -p shoal-tests --example write_vectors
//! ```
//!
//! A new op gets its steps in the file of its area (or a new `NN-area.json`).

use std::time::Duration;

use anyhow::Result;
use rmpv::Value;
use serde_json::json;
use shoal_tests::raw::{body, frame, req};
use shoal_tests::vectors::{self, to_hex, Mode, Step, VectorFile};
use shoal_tests::RedisServer;

/// A vector file under construction.
struct F {
    name: &'static str,
    file: VectorFile,
}

impl F {
    fn new(name: &'static str, description: &str) -> F {
        F {
            name,
            file: VectorFile {
                description: description.into(),
                steps: Vec::new(),
            },
        }
    }

    /// A well-formed request frame.
    fn req(&mut self, note: &str, fields: &[(&str, Value)]) -> &mut Step {
        self.raw(note, &frame(&body(&req(fields))))
    }

    /// Arbitrary bytes.
    fn raw(&mut self, note: &str, bytes: &[u8]) -> &mut Step {
        self.file.steps.push(Step {
            note: note.into(),
            request: to_hex(bytes),
            ..Step::default()
        });
        self.file.steps.last_mut().expect("just pushed")
    }

    /// The handshake every connection starts with.
    fn hello(&mut self) -> &mut Self {
        self.req(
            "handshake",
            &[
                ("id", 0.into()),
                ("op", "hello".into()),
                ("version", 1.into()),
                ("client", "vectors/1".into()),
            ],
        )
        .vary("ok.server", "type")
        .vary("ok.node", "type");
        self
    }
}

trait StepExt {
    fn vary(&mut self, path: &str, rule: impl Into<serde_json::Value>) -> &mut Self;
    fn capture(&mut self, name: &str, path: &str) -> &mut Self;
    fn uses(&mut self, name: &str) -> &mut Self;
    fn closes(&mut self) -> &mut Self;
    /// The error message is for people: only its type is checked.
    fn err(&mut self) -> &mut Self {
        self.vary("err.msg", "type")
    }
}

impl StepExt for Step {
    fn vary(&mut self, path: &str, rule: impl Into<serde_json::Value>) -> &mut Self {
        self.vary.insert(path.into(), rule.into());
        self
    }
    fn capture(&mut self, name: &str, path: &str) -> &mut Self {
        self.capture.insert(name.into(), path.into());
        self
    }
    fn uses(&mut self, name: &str) -> &mut Self {
        self.uses.push(name.into());
        self
    }
    fn closes(&mut self) -> &mut Self {
        self.closes = true;
        self
    }
}

fn s(v: &str) -> Value {
    Value::from(v)
}

fn bin(b: &[u8]) -> Value {
    Value::Binary(b.to_vec())
}

fn strs(v: &[&str]) -> Value {
    Value::Array(v.iter().map(|x| s(x)).collect())
}

fn range(min: u64, max: u64) -> serde_json::Value {
    json!({"min": min, "max": max})
}

/// Typed values as the Rust client writes them (`proto::to_value`).
fn typed<T: serde::Serialize>(v: &T) -> Vec<u8> {
    shoal_tests::client::proto::to_value(v).expect("encodable")
}

const HOUR_MS: u64 = 3_600_000;

fn handshake() -> F {
    let mut f = F::new(
        "01-handshake",
        "hello first, ping (with and without a trace), a second hello refused without closing, stats",
    );
    f.hello();
    f.req("ping", &[("id", 1.into()), ("op", "ping".into())]);
    f.req(
        "the optional envelope field `trace` (W3C traceparent) is accepted by every op",
        &[
            ("id", 2.into()),
            ("op", "ping".into()),
            (
                "trace",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            ),
        ],
    );
    f.req(
        "a second hello: bad_request for its id, the connection stays open",
        &[
            ("id", 3.into()),
            ("op", "hello".into()),
            ("version", 1.into()),
        ],
    )
    .err();
    f.req(
        "stats: a free-form map of counters",
        &[("id", 4.into()), ("op", "stats".into())],
    )
    .vary("ok", "type");
    f.req("still open", &[("id", 5.into()), ("op", "ping".into())]);
    f
}

fn cache() -> F {
    let mut f = F::new(
        "02-cache",
        "cache.set / get / mget / invalidate / invalidate_tags, fill leases and a stale fill",
    );
    f.hello();
    let user = typed(&("alice", 31u32));
    f.req(
        "set a typed value: the Rust client's `set(\"vec:user:42\", &(\"alice\", 31), 60 s)`",
        &[
            ("id", 1.into()),
            ("op", "cache.set".into()),
            ("key", "vec:user:42".into()),
            ("value", bin(&user)),
            ("ttl_ms", 60_000.into()),
        ],
    );
    f.req(
        "a hit: `from` is l1 or l2 (L1 serves only while the daemon is caught up); ttl_ms counts down",
        &[("id", 2.into()), ("op", "cache.get".into()), ("key", "vec:user:42".into())],
    )
    .vary("ok.from", json!({"one_of": ["l1", "l2"]}))
    .vary("ok.ttl_ms", range(1, 60_000));
    f.req(
        "a miss: every other field nil",
        &[
            ("id", 3.into()),
            ("op", "cache.get".into()),
            ("key", "vec:missing".into()),
        ],
    );
    f.req(
        "mget: one result per key, same order",
        &[
            ("id", 4.into()),
            ("op", "cache.mget".into()),
            ("keys", strs(&["vec:user:42", "vec:missing"])),
        ],
    )
    .vary("ok.0.from", json!({"one_of": ["l1", "l2"]}))
    .vary("ok.0.ttl_ms", range(1, 60_000));
    f.req(
        "set with tags and without ttl_ms (cache.default_ttl applies)",
        &[
            ("id", 5.into()),
            ("op", "cache.set".into()),
            ("key", "vec:a".into()),
            ("value", bin(b"A")),
            ("tags", strs(&["vec:tag"])),
        ],
    );
    f.req(
        "another key with the same tag",
        &[
            ("id", 6.into()),
            ("op", "cache.set".into()),
            ("key", "vec:b".into()),
            ("value", bin(b"B")),
            ("tags", strs(&["vec:tag"])),
        ],
    );
    f.req(
        "invalidate a tag: seq is the invalidation log id, keys how many keys carried the tag",
        &[
            ("id", 7.into()),
            ("op", "cache.invalidate_tags".into()),
            ("tags", strs(&["vec:tag"])),
        ],
    )
    .vary("ok.seq", "type");
    f.req(
        "both tagged keys are gone",
        &[
            ("id", 8.into()),
            ("op", "cache.mget".into()),
            ("keys", strs(&["vec:a", "vec:b"])),
        ],
    );
    f.req(
        "invalidate keys",
        &[
            ("id", 9.into()),
            ("op", "cache.invalidate".into()),
            ("keys", strs(&["vec:user:42"])),
        ],
    )
    .vary("ok.seq", "type");
    f.req(
        "gone",
        &[
            ("id", 10.into()),
            ("op", "cache.get".into()),
            ("key", "vec:user:42".into()),
        ],
    );
    f.req(
        "leases: start from a clean key (an invalidate also drops any lease)",
        &[
            ("id", 11.into()),
            ("op", "cache.invalidate".into()),
            ("keys", strs(&["vec:lease"])),
        ],
    )
    .vary("ok.seq", "type");
    f.req(
        "a miss with lease: true grants a fill lease (the caller loads and fills)",
        &[
            ("id", 12.into()),
            ("op", "cache.get".into()),
            ("key", "vec:lease".into()),
            ("lease", true.into()),
        ],
    )
    .vary("ok.lease", "type")
    .capture("LEASE", "ok.lease");
    f.req(
        "another miss while the lease is held: no lease, wait_ms (at most 50) before reading again",
        &[
            ("id", 13.into()),
            ("op", "cache.get".into()),
            ("key", "vec:lease".into()),
            ("lease", true.into()),
        ],
    )
    .vary("ok.wait_ms", range(1, 50));
    f.req(
        "the fill presents its lease: stored",
        &[
            ("id", 14.into()),
            ("op", "cache.set".into()),
            ("key", "vec:lease".into()),
            ("value", bin(b"filled")),
            ("ttl_ms", 60_000.into()),
            ("lease", "${LEASE}".into()),
        ],
    )
    .uses("LEASE");
    f.req(
        "the filled value",
        &[
            ("id", 15.into()),
            ("op", "cache.get".into()),
            ("key", "vec:lease".into()),
        ],
    )
    .vary("ok.from", json!({"one_of": ["l1", "l2"]}))
    .vary("ok.ttl_ms", range(1, 60_000));
    f.req(
        "stale fill: invalidate ...",
        &[
            ("id", 16.into()),
            ("op", "cache.invalidate".into()),
            ("keys", strs(&["vec:lease"])),
        ],
    )
    .vary("ok.seq", "type");
    f.req(
        "... take a lease ...",
        &[
            ("id", 17.into()),
            ("op", "cache.get".into()),
            ("key", "vec:lease".into()),
            ("lease", true.into()),
        ],
    )
    .vary("ok.lease", "type")
    .capture("LEASE2", "ok.lease");
    f.req(
        "... a writer invalidates while the loader reads its database ...",
        &[
            ("id", 18.into()),
            ("op", "cache.invalidate".into()),
            ("keys", strs(&["vec:lease"])),
        ],
    )
    .vary("ok.seq", "type");
    f.req(
        "... so the loader's fill is refused: stored false",
        &[
            ("id", 19.into()),
            ("op", "cache.set".into()),
            ("key", "vec:lease".into()),
            ("value", bin(b"stale")),
            ("ttl_ms", 60_000.into()),
            ("lease", "${LEASE2}".into()),
        ],
    )
    .uses("LEASE2");
    f.req(
        "nothing stored",
        &[
            ("id", 20.into()),
            ("op", "cache.get".into()),
            ("key", "vec:lease".into()),
        ],
    );
    f
}

fn sessions() -> F {
    let mut f = F::new(
        "03-sessions",
        "session.create / get / update / list / rotate / revoke (token and session_id) / revoke_user",
    );
    f.hello();
    let at = |step: &mut Step, fields: &[&str]| {
        for x in fields {
            step.vary(x, "type");
        }
    };
    let info = [
        "ok.created_at_ms",
        "ok.last_seen_ms",
        "ok.expires_at_ms",
        "ok.absolute_expires_at_ms",
    ];
    f.req(
        "start clean: revoke every session of the user (the count depends on earlier runs)",
        &[
            ("id", 1.into()),
            ("op", "session.revoke_user".into()),
            ("user", "vec-user".into()),
        ],
    )
    .vary("ok.revoked", "type");
    let admin = typed(&json!({"role": "admin"}));
    let st = f
        .req(
            "create: data is opaque bin (here the Rust client's typed `{\"role\": \"admin\"}`)",
            &[
                ("id", 2.into()),
                ("op", "session.create".into()),
                ("user", "vec-user".into()),
                ("data", bin(&admin)),
                ("idle_ttl_ms", 600_000.into()),
                ("absolute_ttl_ms", HOUR_MS.into()),
            ],
        )
        .capture("TOKEN", "ok.token");
    at(
        st,
        &["ok.token", "ok.expires_at_ms", "ok.absolute_expires_at_ms"],
    );
    let st = f
        .req(
            "get",
            &[
                ("id", 3.into()),
                ("op", "session.get".into()),
                ("token", "${TOKEN}".into()),
            ],
        )
        .uses("TOKEN");
    at(st, &info);
    let st = f
        .req(
            "get without refreshing the idle expiry",
            &[
                ("id", 4.into()),
                ("op", "session.get".into()),
                ("token", "${TOKEN}".into()),
                ("touch", false.into()),
            ],
        )
        .uses("TOKEN");
    at(st, &info);
    let viewer = typed(&json!({"role": "viewer"}));
    f.req(
        "update the data (every daemon sees it, like a revocation)",
        &[
            ("id", 5.into()),
            ("op", "session.update".into()),
            ("token", "${TOKEN}".into()),
            ("data", bin(&viewer)),
        ],
    )
    .uses("TOKEN");
    let st = f
        .req(
            "the new data",
            &[
                ("id", 6.into()),
                ("op", "session.get".into()),
                ("token", "${TOKEN}".into()),
            ],
        )
        .uses("TOKEN");
    at(st, &info);
    let st = f
        .req(
            "list the user's sessions: session_id, never the token",
            &[
                ("id", 7.into()),
                ("op", "session.list".into()),
                ("user", "vec-user".into()),
            ],
        )
        .vary("ok.*.session_id", "type");
    for x in ["created_at_ms", "last_seen_ms", "expires_at_ms"] {
        st.vary(&format!("ok.*.{x}"), "type");
    }
    f.req(
        "rotate: a new token for the same session (user, data, absolute expiry kept)",
        &[
            ("id", 8.into()),
            ("op", "session.rotate".into()),
            ("token", "${TOKEN}".into()),
        ],
    )
    .uses("TOKEN")
    .vary("ok.token", "type")
    .capture("TOKEN2", "ok.token");
    f.req(
        "the old token is revoked",
        &[
            ("id", 9.into()),
            ("op", "session.get".into()),
            ("token", "${TOKEN}".into()),
        ],
    )
    .uses("TOKEN")
    .err();
    let st = f
        .req(
            "the new one works",
            &[
                ("id", 10.into()),
                ("op", "session.get".into()),
                ("token", "${TOKEN2}".into()),
            ],
        )
        .uses("TOKEN2");
    at(st, &info);
    let st = f
        .req(
            "list again to learn the session_id",
            &[
                ("id", 11.into()),
                ("op", "session.list".into()),
                ("user", "vec-user".into()),
            ],
        )
        .vary("ok.*.session_id", "type")
        .capture("SID", "ok.0.session_id");
    for x in ["created_at_ms", "last_seen_ms", "expires_at_ms"] {
        st.vary(&format!("ok.*.{x}"), "type");
    }
    f.req(
        "revoke by session_id (an operator who never saw the token)",
        &[
            ("id", 12.into()),
            ("op", "session.revoke".into()),
            ("session_id", "${SID}".into()),
        ],
    )
    .uses("SID");
    f.req(
        "revoked",
        &[
            ("id", 13.into()),
            ("op", "session.get".into()),
            ("token", "${TOKEN2}".into()),
        ],
    )
    .uses("TOKEN2")
    .err();
    f.req(
        "revoking it again: false",
        &[
            ("id", 14.into()),
            ("op", "session.revoke".into()),
            ("token", "${TOKEN2}".into()),
        ],
    )
    .uses("TOKEN2");
    f.req(
        "updating a revoked session: false",
        &[
            ("id", 15.into()),
            ("op", "session.update".into()),
            ("token", "${TOKEN2}".into()),
            ("data", bin(b"x")),
        ],
    )
    .uses("TOKEN2");
    let st = f
        .req(
            "create with defaults: no data (empty bin), configured idle and absolute TTLs",
            &[
                ("id", 16.into()),
                ("op", "session.create".into()),
                ("user", "vec-user".into()),
            ],
        )
        .capture("TOKEN3", "ok.token");
    at(
        st,
        &["ok.token", "ok.expires_at_ms", "ok.absolute_expires_at_ms"],
    );
    let st = f
        .req(
            "data is an empty bin",
            &[
                ("id", 17.into()),
                ("op", "session.get".into()),
                ("token", "${TOKEN3}".into()),
            ],
        )
        .uses("TOKEN3");
    at(st, &info);
    let st = f
        .req(
            "a second session of the same user",
            &[
                ("id", 18.into()),
                ("op", "session.create".into()),
                ("user", "vec-user".into()),
            ],
        )
        .capture("TOKEN4", "ok.token");
    at(
        st,
        &["ok.token", "ok.expires_at_ms", "ok.absolute_expires_at_ms"],
    );
    f.req(
        "logout everywhere: both sessions revoked",
        &[
            ("id", 19.into()),
            ("op", "session.revoke_user".into()),
            ("user", "vec-user".into()),
        ],
    );
    f.req(
        "gone",
        &[
            ("id", 20.into()),
            ("op", "session.get".into()),
            ("token", "${TOKEN4}".into()),
        ],
    )
    .uses("TOKEN4")
    .err();
    f.req(
        "a well-formed token nobody issued: not_found",
        &[
            ("id", 21.into()),
            ("op", "session.get".into()),
            (
                "token",
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
            ),
        ],
    )
    .err();
    f
}

fn ratelimit() -> F {
    let mut f = F::new(
        "04-ratelimit",
        "ratelimit.check / peek / reset on policy vec-log (sliding_log, 3 per hour), cost, \
         unknown_policy; extensions: set_override / clear_override and quota.usage",
    );
    f.hello();
    let pk = |id: u64, op: &str, key: &str| -> Vec<(&'static str, Value)> {
        vec![
            ("id", id.into()),
            ("op", s(op)),
            ("policy", "vec-log".into()),
            ("key", s(key)),
        ]
    };
    f.req("start clean", &pk(1, "ratelimit.reset", "vec-client"))
        .vary("ok.reset", "type");
    f.req(
        "allowed: 2 of 3 left; window_ms and fallback (nil) are shoal's optional extra fields",
        &pk(2, "ratelimit.check", "vec-client"),
    )
    .vary("ok.reset_after_ms", range(1, HOUR_MS));
    let mut cost2 = pk(3, "ratelimit.check", "vec-client");
    cost2.push(("cost", 2.into()));
    f.req("cost 2 takes the rest", &cost2)
        .vary("ok.reset_after_ms", range(1, HOUR_MS));
    f.req(
        "denied: retry_after_ms until a request of this cost would pass",
        &pk(4, "ratelimit.check", "vec-client"),
    )
    .vary("ok.reset_after_ms", range(1, HOUR_MS))
    .vary("ok.retry_after_ms", range(1, HOUR_MS));
    f.req(
        "peek: as check, consuming nothing",
        &pk(5, "ratelimit.peek", "vec-client"),
    )
    .vary("ok.reset_after_ms", range(1, HOUR_MS))
    .vary("ok.retry_after_ms", range(1, HOUR_MS));
    let mut cost4 = pk(6, "ratelimit.check", "vec-client");
    cost4.push(("cost", 4.into()));
    f.req("a cost the policy can never allow: bad_request", &cost4)
        .err();
    f.req(
        "a policy the daemon does not have",
        &[
            ("id", 7.into()),
            ("op", "ratelimit.check".into()),
            ("policy", "vec-nope".into()),
            ("key", "vec-client".into()),
        ],
    )
    .err();
    f.req(
        "reset: state existed",
        &pk(8, "ratelimit.reset", "vec-client"),
    );
    f.req("full again", &pk(9, "ratelimit.peek", "vec-client"));
    f.req(
        "extension: start clean",
        &pk(10, "ratelimit.clear_override", "vec-tenant"),
    )
    .vary("ok.cleared", "type");
    f.req(
        "extension: start clean",
        &pk(11, "ratelimit.reset", "vec-tenant"),
    )
    .vary("ok.reset", "type");
    let mut set = pk(12, "ratelimit.set_override", "vec-tenant");
    set.push(("limit", 5.into()));
    f.req(
        "extension: a runtime override of one key's limit (stored in Redis, fleet-wide)",
        &set,
    );
    f.req(
        "the override applies: limit 5",
        &pk(13, "ratelimit.check", "vec-tenant"),
    )
    .vary("ok.reset_after_ms", range(1, HOUR_MS));
    f.req(
        "extension: clear it",
        &pk(14, "ratelimit.clear_override", "vec-tenant"),
    );
    f.req(
        "extension: quota.usage, start clean",
        &pk(15, "ratelimit.reset", "vec-quota-a"),
    )
    .vary("ok.reset", "type");
    f.req("use one", &pk(16, "ratelimit.check", "vec-quota-a"))
        .vary("ok.reset_after_ms", range(1, HOUR_MS));
    f.req(
        "extension: quota.usage lists the policy's keys with state (SCAN, bounded)",
        &[
            ("id", 17.into()),
            ("op", "quota.usage".into()),
            ("policy", "vec-log".into()),
            ("prefix", "vec-quota-".into()),
            ("max_keys", 10.into()),
        ],
    )
    .vary("ok.keys.*.reset_after_ms", range(1, HOUR_MS));
    f
}

fn reserve_concurrency() -> F {
    let mut f = F::new(
        "05-ratelimit-extensions",
        "extensions: ratelimit.reserve on vec-bucket (token_bucket, 2 per hour) and \
         concurrency leases on vec-conc (2 in flight, 30 s leases)",
    );
    f.hello();
    let pk = |id: u64, op: &str, policy: &str, key: &str| -> Vec<(&'static str, Value)> {
        vec![
            ("id", id.into()),
            ("op", s(op)),
            ("policy", s(policy)),
            ("key", s(key)),
        ]
    };
    f.req(
        "start clean",
        &pk(1, "ratelimit.reset", "vec-bucket", "vec-vendor"),
    )
    .vary("ok.reset", "type");
    let mut r = pk(2, "ratelimit.reserve", "vec-bucket", "vec-vendor");
    r.push(("max_wait_ms", 1000.into()));
    f.req("reserve: granted now (wait_ms 0)", &r);
    r[0].1 = 3.into();
    f.req("the burst's second slot", &r);
    r[0].1 = 4.into();
    f.req(
        "the next slot is ~30 min away, beyond max_wait_ms: not granted, nothing booked",
        &r,
    )
    .vary("ok.wait_ms", range(1001, HOUR_MS));
    let mut bad = pk(5, "ratelimit.reserve", "vec-conc", "vec-vendor");
    bad.push(("max_wait_ms", 1000.into()));
    f.req("a concurrency policy cannot book future slots", &bad)
        .err();
    f.req(
        "start clean",
        &pk(6, "ratelimit.reset", "vec-conc", "vec-job"),
    )
    .vary("ok.reset", "type");
    f.req(
        "acquire an in-flight slot (lease_ms defaults to the policy's window)",
        &pk(7, "ratelimit.acquire_concurrent", "vec-conc", "vec-job"),
    )
    .vary("ok.lease", "type")
    .capture("L1", "ok.lease");
    let mut a = pk(8, "ratelimit.acquire_concurrent", "vec-conc", "vec-job");
    a.push(("lease_ms", 20_000.into()));
    f.req("a second one with its own lease_ms", &a)
        .vary("ok.lease", "type")
        .capture("L2", "ok.lease");
    f.req(
        "full: not acquired, retry_after_ms until the oldest lease expires",
        &pk(9, "ratelimit.acquire_concurrent", "vec-conc", "vec-job"),
    )
    .vary("ok.retry_after_ms", range(1, 30_000));
    let mut rel = pk(10, "ratelimit.release", "vec-conc", "vec-job");
    rel.push(("lease", "${L1}".into()));
    f.req("release", &rel).uses("L1");
    rel[0].1 = 11.into();
    f.req("released twice: false", &rel).uses("L1");
    let mut rel2 = pk(12, "ratelimit.release", "vec-conc", "vec-job");
    rel2.push(("lease", "${L2}".into()));
    f.req("release the other", &rel2).uses("L2");
    f.req(
        "ratelimit.check on a concurrency policy: bad_request",
        &pk(13, "ratelimit.check", "vec-conc", "vec-job"),
    )
    .err();
    f.req(
        "acquire_concurrent on a rate policy: bad_request",
        &pk(14, "ratelimit.acquire_concurrent", "vec-bucket", "vec-job"),
    )
    .err();
    f
}

fn errors() -> F {
    let mut f = F::new(
        "06-errors",
        "wrong requests: an error for their id, and the connection stays open",
    );
    f.hello();
    f.req(
        "unknown op",
        &[("id", 1.into()), ("op", "cache.frobnicate".into())],
    )
    .err();
    f.req("op missing", &[("id", 2.into())]).err();
    f.req(
        "wrong type: key must be a string",
        &[
            ("id", 3.into()),
            ("op", "cache.get".into()),
            ("key", 5.into()),
        ],
    )
    .err();
    f.req(
        "wrong type: value must be bin, not str",
        &[
            ("id", 4.into()),
            ("op", "cache.set".into()),
            ("key", "vec:k".into()),
            ("value", "text".into()),
        ],
    )
    .err();
    f.req(
        "argument missing",
        &[
            ("id", 5.into()),
            ("op", "cache.set".into()),
            ("key", "vec:k".into()),
        ],
    )
    .err();
    f.req(
        "a duration of 0",
        &[
            ("id", 6.into()),
            ("op", "cache.set".into()),
            ("key", "vec:k".into()),
            ("value", bin(b"v")),
            ("ttl_ms", 0.into()),
        ],
    )
    .err();
    let long = "k".repeat(4097);
    f.req(
        "a key of 4097 bytes (limit socket.max_key, 4096)",
        &[
            ("id", 7.into()),
            ("op", "cache.get".into()),
            ("key", s(&long)),
        ],
    )
    .err();
    f.req(
        "an empty key",
        &[
            ("id", 8.into()),
            ("op", "cache.get".into()),
            ("key", "".into()),
        ],
    )
    .err();
    f.req(
        "an empty key list",
        &[
            ("id", 9.into()),
            ("op", "cache.mget".into()),
            ("keys", strs(&[])),
        ],
    )
    .err();
    f.req(
        "a negative number where an unsigned one is needed",
        &[
            ("id", 10.into()),
            ("op", "ratelimit.check".into()),
            ("policy", "vec-log".into()),
            ("key", "vec-k".into()),
            ("cost", (-1).into()),
        ],
    )
    .err();
    f.req(
        "a 5000-byte value (the frame fits in max_frame 8 KiB) ...",
        &[
            ("id", 11.into()),
            ("op", "cache.set".into()),
            ("key", "vec:big".into()),
            ("value", bin(&[0x61; 5000])),
            ("ttl_ms", 60_000.into()),
        ],
    );
    f.req(
        "... read twice in one mget: the result would exceed max_frame: frame_too_large for this id, connection kept",
        &[
            ("id", 12.into()),
            ("op", "cache.mget".into()),
            ("keys", strs(&["vec:big", "vec:big"])),
        ],
    )
    .err();
    f.req("still open", &[("id", 13.into()), ("op", "ping".into())]);
    f
}

fn closing() -> Vec<F> {
    let mut out = Vec::new();
    let mut f = F::new(
        "10-close-frame-too-large",
        "a length prefix above max_frame (8192 here): frame_too_large with id 0, then close (the body is never read)",
    );
    f.hello();
    f.raw("prefix announcing 8193 bytes", &8193u32.to_be_bytes())
        .err()
        .closes();
    out.push(f);

    let mut f = F::new(
        "11-close-empty-frame",
        "a zero-length frame: bad_request with id 0, then close",
    );
    f.hello();
    f.raw("prefix 0", &[0, 0, 0, 0]).err().closes();
    out.push(f);

    let mut f = F::new(
        "12-close-not-msgpack",
        "a body that is not MessagePack: bad_request with id 0, then close",
    );
    f.hello();
    f.raw(
        "a map announcing 2 entries that ends after the first key",
        &frame(&[0x82, 0xa2, b'i', b'd']),
    )
    .err()
    .closes();
    out.push(f);

    let mut f = F::new(
        "13-close-not-a-map",
        "a body that is MessagePack but not a map: bad_request with id 0, then close",
    );
    f.hello();
    f.raw(
        "[1, 2]",
        &frame(&body(&Value::Array(vec![1.into(), 2.into()]))),
    )
    .err()
    .closes();
    out.push(f);

    let mut f = F::new(
        "14-close-id-not-uint",
        "a map whose id is not an unsigned integer: bad_request with id 0, then close",
    );
    f.hello();
    f.req(
        "id as a string",
        &[("id", "7".into()), ("op", "ping".into())],
    )
    .err()
    .closes();
    out.push(f);

    let mut f = F::new(
        "15-close-op-before-hello",
        "any op before hello: bad_request with that request's id, then close",
    );
    f.req("ping first", &[("id", 42.into()), ("op", "ping".into())])
        .err()
        .closes();
    out.push(f);

    let mut f = F::new(
        "16-close-unsupported-version",
        "hello with a version the server does not speak: unsupported_version, then close",
    );
    f.req(
        "version 2",
        &[
            ("id", 0.into()),
            ("op", "hello".into()),
            ("version", 2.into()),
        ],
    )
    .err()
    .closes();
    out.push(f);

    let mut f = F::new(
        "17-close-bad-hello",
        "a first request that is not a valid hello (here: no version): bad_request, then close",
    );
    f.req(
        "hello without version",
        &[("id", 0.into()), ("op", "hello".into())],
    )
    .err()
    .closes();
    out.push(f);
    out
}

#[tokio::main]
async fn main() -> Result<()> {
    let redis = RedisServer::start().await?;
    let work = tempfile::tempdir()?;
    let mut daemon = vectors::spawn_daemon(&redis, work.path())?;
    daemon.wait_ready(Duration::from_secs(20)).await?;
    let mut files = vec![
        handshake(),
        cache(),
        sessions(),
        ratelimit(),
        reserve_concurrency(),
        errors(),
    ];
    files.extend(closing());
    let dir = vectors::dir();
    for f in &mut files {
        vectors::run(&daemon.socket, &mut f.file, Mode::Record).await?;
        let path = dir.join(format!("{}.json", f.name));
        std::fs::write(&path, serde_json::to_string_pretty(&f.file)? + "\n")?;
        println!("wrote {}", path.display());
    }
    let values = serde_json::json!({
        "description": "What the Rust client's typed helpers put inside a value's bin \
            (rmp_serde::to_vec_named), and what they read. See tests/vectors/README.md.",
        "values": vectors::typed_values()?,
    });
    let path = dir.join("values.json");
    std::fs::write(&path, serde_json::to_string_pretty(&values)? + "\n")?;
    println!("wrote {}", path.display());
    Ok(())
}
