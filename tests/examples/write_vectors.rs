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
#![forbid(unsafe_code)]

use anyhow::Result;
use rmpv::Value;
use serde_json::json;
use shoal_tests::raw::{body, frame, req};
use shoal_tests::vectors::{self, to_hex, Mode, Step, VectorFile};

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

    /// A well-formed request frame. String fields `${NAME}` are placeholders
    /// for captured variables: the step `uses` them.
    fn req(&mut self, note: &str, fields: &[(&str, Value)]) -> &mut Step {
        let uses = fields
            .iter()
            .filter_map(|(_, v)| v.as_str()?.strip_prefix("${")?.strip_suffix('}'))
            .map(str::to_string)
            .collect();
        let step = self.raw(note, &frame(&body(&req(fields))));
        step.uses = uses;
        step
    }

    /// A request `{"id": id, "op": op, ...args}`.
    fn call(&mut self, note: &str, id: u64, op: &str, args: &[(&str, Value)]) -> &mut Step {
        let mut fields = vec![("id", Value::from(id)), ("op", Value::from(op))];
        fields.extend(args.iter().cloned());
        self.req(note, &fields)
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
        self.call(
            "handshake",
            0,
            "hello",
            &[("version", 1.into()), ("client", "vectors/1".into())],
        )
        .vary("ok.server", "type")
        .vary("ok.node", "type");
        self
    }
}

trait StepExt {
    fn vary(&mut self, path: &str, rule: impl Into<serde_json::Value>) -> &mut Self;
    fn capture(&mut self, name: &str, path: &str) -> &mut Self;
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
        "hello first, ping (with and without a trace), a second hello refused without closing, stats, admin.info, shm.attach",
    );
    f.hello();
    f.call("ping", 1, "ping", &[]);
    f.call(
        "the optional envelope field `trace` (W3C traceparent) is accepted by every op",
        2,
        "ping",
        &[(
            "trace",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        )],
    );
    f.call(
        "a second hello: bad_request for its id, the connection stays open",
        3,
        "hello",
        &[("version", 1.into())],
    )
    .err();
    f.call("stats: a free-form map of counters", 4, "stats", &[])
        .vary("ok", "type");
    f.call("still open", 5, "ping", &[]);
    f.call(
        "extension: admin.info, the daemon's Redis (no credentials), prefix and node; answered without Redis",
        6,
        "admin.info",
        &[],
    )
    .vary("ok.redis", "type")
    .vary("ok.server", "type");
    f.call(
        "extension: shm.attach, the shared-memory L1; the segment's descriptor rides on this response (SCM_RIGHTS), which a plain read drops",
        7,
        "shm.attach",
        &[],
    )
    .vary("ok.bytes", "type")
    .vary("ok.mono_ns", "type");
    f
}

fn cache() -> F {
    let mut f = F::new(
        "02-cache",
        "cache.set / get / mget / invalidate / invalidate_tags, fill leases and a stale fill",
    );
    f.hello();
    let user = typed(&("alice", 31u32));
    f.call(
        "set a typed value: the Rust client's `set(\"vec:user:42\", &(\"alice\", 31), 60 s)`",
        1,
        "cache.set",
        &[
            ("key", "vec:user:42".into()),
            ("value", bin(&user)),
            ("ttl_ms", 60_000.into()),
        ],
    );
    f.call("a hit: `from` is l1 or l2 (L1 serves only while the daemon is caught up); ttl_ms counts down", 2, "cache.get", &[("key", "vec:user:42".into())],
    )
    .vary("ok.from", json!({"one_of": ["l1", "l2"]}))
    .vary("ok.ttl_ms", range(1, 60_000));
    f.call(
        "a miss: every other field nil",
        3,
        "cache.get",
        &[("key", "vec:missing".into())],
    );
    f.call(
        "mget: one result per key, same order",
        4,
        "cache.mget",
        &[("keys", strs(&["vec:user:42", "vec:missing"]))],
    )
    .vary("ok.0.from", json!({"one_of": ["l1", "l2"]}))
    .vary("ok.0.ttl_ms", range(1, 60_000));
    f.call(
        "set with tags and without ttl_ms (cache.default_ttl applies)",
        5,
        "cache.set",
        &[
            ("key", "vec:a".into()),
            ("value", bin(b"A")),
            ("tags", strs(&["vec:tag"])),
        ],
    );
    f.call(
        "another key with the same tag",
        6,
        "cache.set",
        &[
            ("key", "vec:b".into()),
            ("value", bin(b"B")),
            ("tags", strs(&["vec:tag"])),
        ],
    );
    f.call(
        "invalidate a tag: seq is the invalidation log id, keys how many keys carried the tag",
        7,
        "cache.invalidate_tags",
        &[("tags", strs(&["vec:tag"]))],
    )
    .vary("ok.seq", "type");
    f.call(
        "both tagged keys are gone",
        8,
        "cache.mget",
        &[("keys", strs(&["vec:a", "vec:b"]))],
    );
    f.call(
        "invalidate keys",
        9,
        "cache.invalidate",
        &[("keys", strs(&["vec:user:42"]))],
    )
    .vary("ok.seq", "type");
    f.call("gone", 10, "cache.get", &[("key", "vec:user:42".into())]);
    f.call(
        "leases: start from a clean key (an invalidate also drops any lease)",
        11,
        "cache.invalidate",
        &[("keys", strs(&["vec:lease"]))],
    )
    .vary("ok.seq", "type");
    f.call(
        "a miss with lease: true grants a fill lease (the caller loads and fills)",
        12,
        "cache.get",
        &[("key", "vec:lease".into()), ("lease", true.into())],
    )
    .vary("ok.lease", "type")
    .capture("LEASE", "ok.lease");
    f.call(
        "another miss while the lease is held: no lease, wait_ms (at most 50) before reading again",
        13,
        "cache.get",
        &[("key", "vec:lease".into()), ("lease", true.into())],
    )
    .vary("ok.wait_ms", range(1, 50));
    f.call(
        "the fill presents its lease: stored",
        14,
        "cache.set",
        &[
            ("key", "vec:lease".into()),
            ("value", bin(b"filled")),
            ("ttl_ms", 60_000.into()),
            ("lease", "${LEASE}".into()),
        ],
    );
    f.call(
        "the filled value",
        15,
        "cache.get",
        &[("key", "vec:lease".into())],
    )
    .vary("ok.from", json!({"one_of": ["l1", "l2"]}))
    .vary("ok.ttl_ms", range(1, 60_000));
    f.call(
        "stale fill: invalidate ...",
        16,
        "cache.invalidate",
        &[("keys", strs(&["vec:lease"]))],
    )
    .vary("ok.seq", "type");
    f.call(
        "... take a lease ...",
        17,
        "cache.get",
        &[("key", "vec:lease".into()), ("lease", true.into())],
    )
    .vary("ok.lease", "type")
    .capture("LEASE2", "ok.lease");
    f.call(
        "... a writer invalidates while the loader reads its database ...",
        18,
        "cache.invalidate",
        &[("keys", strs(&["vec:lease"]))],
    )
    .vary("ok.seq", "type");
    f.call(
        "... so the loader's fill is refused: stored false",
        19,
        "cache.set",
        &[
            ("key", "vec:lease".into()),
            ("value", bin(b"stale")),
            ("ttl_ms", 60_000.into()),
            ("lease", "${LEASE2}".into()),
        ],
    );
    f.call(
        "nothing stored",
        20,
        "cache.get",
        &[("key", "vec:lease".into())],
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
    f.call(
        "start clean: revoke every session of the user (the count depends on earlier runs)",
        1,
        "session.revoke_user",
        &[("user", "vec-user".into())],
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
    let st = f.req(
        "get",
        &[
            ("id", 3.into()),
            ("op", "session.get".into()),
            ("token", "${TOKEN}".into()),
        ],
    );
    at(st, &info);
    let st = f.req(
        "get without refreshing the idle expiry",
        &[
            ("id", 4.into()),
            ("op", "session.get".into()),
            ("token", "${TOKEN}".into()),
            ("touch", false.into()),
        ],
    );
    at(st, &info);
    let viewer = typed(&json!({"role": "viewer"}));
    f.call(
        "update the data (every daemon sees it, like a revocation)",
        5,
        "session.update",
        &[("token", "${TOKEN}".into()), ("data", bin(&viewer))],
    );
    let st = f.req(
        "the new data",
        &[
            ("id", 6.into()),
            ("op", "session.get".into()),
            ("token", "${TOKEN}".into()),
        ],
    );
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
    f.call(
        "rotate: a new token for the same session (user, data, absolute expiry kept)",
        8,
        "session.rotate",
        &[("token", "${TOKEN}".into())],
    )
    .vary("ok.token", "type")
    .capture("TOKEN2", "ok.token");
    f.call(
        "the old token is revoked",
        9,
        "session.get",
        &[("token", "${TOKEN}".into())],
    )
    .err();
    let st = f.req(
        "the new one works",
        &[
            ("id", 10.into()),
            ("op", "session.get".into()),
            ("token", "${TOKEN2}".into()),
        ],
    );
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
    f.call(
        "revoke by session_id (an operator who never saw the token)",
        12,
        "session.revoke",
        &[("session_id", "${SID}".into())],
    );
    f.call(
        "revoked",
        13,
        "session.get",
        &[("token", "${TOKEN2}".into())],
    )
    .err();
    f.call(
        "revoking it again: false",
        14,
        "session.revoke",
        &[("token", "${TOKEN2}".into())],
    );
    f.call(
        "updating a revoked session: false",
        15,
        "session.update",
        &[("token", "${TOKEN2}".into()), ("data", bin(b"x"))],
    );
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
    let st = f.req(
        "data is an empty bin",
        &[
            ("id", 17.into()),
            ("op", "session.get".into()),
            ("token", "${TOKEN3}".into()),
        ],
    );
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
    f.call(
        "logout everywhere: both sessions revoked",
        19,
        "session.revoke_user",
        &[("user", "vec-user".into())],
    );
    f.call("gone", 20, "session.get", &[("token", "${TOKEN4}".into())])
        .err();
    f.call(
        "a well-formed token nobody issued: not_found",
        21,
        "session.get",
        &[(
            "token",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
        )],
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
    f.call(
        "a policy the daemon does not have",
        7,
        "ratelimit.check",
        &[("policy", "vec-nope".into()), ("key", "vec-client".into())],
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
    f.call(
        "extension: quota.usage lists the policy's keys with state (SCAN, bounded)",
        17,
        "quota.usage",
        &[
            ("policy", "vec-log".into()),
            ("prefix", "vec-quota-".into()),
            ("max_keys", 10.into()),
        ],
    )
    .vary("ok.keys.*.reset_after_ms", range(1, HOUR_MS));
    f
}

fn locks() -> F {
    let mut f = F::new(
        "07-locks",
        "extensions: lock.acquire / lock.extend / lock.release on one name; the fence \
         grows with every acquisition (it never resets, so it varies between replays)",
    );
    f.hello();
    let name = || ("name", Value::from("vec:lock"));
    f.call(
        "acquire: the token is the holder's proof, the fence a fencing token",
        1,
        "lock.acquire",
        &[name(), ("ttl_ms", 30_000.into())],
    )
    .vary("ok.token", "type")
    .vary("ok.fence", "type")
    .capture("TOKEN", "ok.token");
    f.call(
        "a second acquire while held: not acquired, retry_after_ms is what the holder has left",
        2,
        "lock.acquire",
        &[name(), ("ttl_ms", 30_000.into())],
    )
    .vary("ok.retry_after_ms", range(1, 30_000));
    f.call(
        "extend by the holder",
        3,
        "lock.extend",
        &[
            name(),
            ("token", "${TOKEN}".into()),
            ("ttl_ms", 30_000.into()),
        ],
    );
    f.call(
        "extend with another token: refused",
        4,
        "lock.extend",
        &[
            name(),
            ("token", "not-the-holder".into()),
            ("ttl_ms", 30_000.into()),
        ],
    );
    f.call(
        "release by the holder",
        5,
        "lock.release",
        &[name(), ("token", "${TOKEN}".into())],
    );
    f.call(
        "a second release: the token no longer holds it",
        6,
        "lock.release",
        &[name(), ("token", "${TOKEN}".into())],
    );
    f.call(
        "ttl_ms 0 is bad_request; the connection stays open",
        7,
        "lock.acquire",
        &[name(), ("ttl_ms", 0.into())],
    )
    .err();
    f.call("still open", 8, "ping", &[]);
    f
}

fn reserve_concurrency() -> F {
    let mut f = F::new(
        "05-ratelimit-extensions",
        "extensions: ratelimit.reserve on vec-bucket (token_bucket, 2 per hour), \
         concurrency leases on vec-conc (2 in flight, 30 s leases), and \
         ratelimit.penalty / ratelimit.reward on vec-bucket",
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
    f.req("release", &rel);
    rel[0].1 = 11.into();
    f.req("released twice: false", &rel);
    let mut rel2 = pk(12, "ratelimit.release", "vec-conc", "vec-job");
    rel2.push(("lease", "${L2}".into()));
    f.req("release the other", &rel2);
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
    f.req(
        "start clean",
        &pk(15, "ratelimit.reset", "vec-bucket", "vec-abuser"),
    )
    .vary("ok.reset", "type");
    let mut pen = pk(16, "ratelimit.penalty", "vec-bucket", "vec-abuser");
    pen.push(("points", 2.into()));
    f.req(
        "penalty: 2 points taken without asking; the answer is a peek after it (denied)",
        &pen,
    )
    .vary("ok.reset_after_ms", range(1, HOUR_MS))
    .vary("ok.retry_after_ms", range(1, HOUR_MS));
    pen[0].1 = 17.into();
    f.req(
        "a penalty may go beyond the limit: the bucket owes 2 more (~90 min to the next)",
        &pen,
    )
    .vary("ok.reset_after_ms", range(1, 3 * HOUR_MS))
    .vary("ok.retry_after_ms", range(HOUR_MS, 2 * HOUR_MS));
    let mut rew = pk(18, "ratelimit.reward", "vec-bucket", "vec-abuser");
    rew.push(("points", 2.into()));
    f.req("reward: 2 points back, still denied", &rew)
        .vary("ok.reset_after_ms", range(1, 2 * HOUR_MS))
        .vary("ok.retry_after_ms", range(1, HOUR_MS));
    rew[0].1 = 19.into();
    f.req(
        "2 more back: full again (never above capacity); cached denials on every daemon lift",
        &rew,
    );
    let mut zero = pk(20, "ratelimit.penalty", "vec-bucket", "vec-abuser");
    zero.push(("points", 0.into()));
    f.req("points 0: bad_request", &zero).err();
    let mut conc = pk(21, "ratelimit.reward", "vec-conc", "vec-abuser");
    conc.push(("points", 1.into()));
    f.req("reward on a concurrency policy: bad_request", &conc)
        .err();
    f
}

fn errors() -> F {
    let mut f = F::new(
        "06-errors",
        "wrong requests: an error for their id, and the connection stays open",
    );
    f.hello();
    f.call("unknown op", 1, "cache.frobnicate", &[]).err();
    f.req("op missing", &[("id", 2.into())]).err();
    f.call(
        "wrong type: key must be a string",
        3,
        "cache.get",
        &[("key", 5.into())],
    )
    .err();
    f.call(
        "wrong type: value must be bin, not str",
        4,
        "cache.set",
        &[("key", "vec:k".into()), ("value", "text".into())],
    )
    .err();
    f.call(
        "argument missing",
        5,
        "cache.set",
        &[("key", "vec:k".into())],
    )
    .err();
    f.call(
        "a duration of 0",
        6,
        "cache.set",
        &[
            ("key", "vec:k".into()),
            ("value", bin(b"v")),
            ("ttl_ms", 0.into()),
        ],
    )
    .err();
    let long = "k".repeat(4097);
    f.call(
        "a key of 4097 bytes (limit socket.max_key, 4096)",
        7,
        "cache.get",
        &[("key", s(&long))],
    )
    .err();
    f.call("an empty key", 8, "cache.get", &[("key", "".into())])
        .err();
    f.call("an empty key list", 9, "cache.mget", &[("keys", strs(&[]))])
        .err();
    f.call(
        "a negative number where an unsigned one is needed",
        10,
        "ratelimit.check",
        &[
            ("policy", "vec-log".into()),
            ("key", "vec-k".into()),
            ("cost", (-1).into()),
        ],
    )
    .err();
    f.call(
        "a 5000-byte value (the frame fits in max_frame 8 KiB) ...",
        11,
        "cache.set",
        &[
            ("key", "vec:big".into()),
            ("value", bin(&[0x61; 5000])),
            ("ttl_ms", 60_000.into()),
        ],
    );
    f.call("... read twice in one mget: the result would exceed max_frame: frame_too_large for this id, connection kept", 12, "cache.mget", &[("keys", strs(&["vec:big", "vec:big"])),
        ],
    )
    .err();
    f.call("still open", 13, "ping", &[]);
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
    f.call("ping first", 42, "ping", &[]).err().closes();
    out.push(f);

    let mut f = F::new(
        "16-close-unsupported-version",
        "hello with a version the server does not speak: unsupported_version, then close",
    );
    f.call("version 2", 0, "hello", &[("version", 2.into())])
        .err()
        .closes();
    out.push(f);

    let mut f = F::new(
        "17-close-bad-hello",
        "a first request that is not a valid hello (here: no version): bad_request, then close",
    );
    f.call("hello without version", 0, "hello", &[])
        .err()
        .closes();
    out.push(f);
    out
}

#[tokio::main]
async fn main() -> Result<()> {
    let daemon = vectors::start_daemon().await?;
    let mut files = vec![
        handshake(),
        cache(),
        sessions(),
        ratelimit(),
        reserve_concurrency(),
        errors(),
        locks(),
    ];
    files.extend(closing());
    let dir = vectors::dir();
    for f in &mut files {
        vectors::run(daemon.socket(), &mut f.file, Mode::Record).await?;
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
