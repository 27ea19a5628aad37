//! Sessions end to end (issue #5): three daemons against one real redis-server.
//!
//! What is proven here: a revocation, rotation, data update or "revoke all of a
//! user" on one daemon is honoured by the other two as soon as their revocation
//! readers have applied it (measured and printed); a hot session costs no Redis
//! call; idle and absolute expiry hold on every daemon; the raw token is nowhere
//! in Redis nor in the logs; the reader's gap rules hold (connection killed while
//! revocations flow, stream trimmed past a cursor, Redis restarted empty); and the
//! `cached` fallback serves during an outage within `max_stale` and not after.
//!
//! Tests await events (the reader's readiness and cursor, exposed as `watch`
//! channels) rather than sleeping; expiry waits are computed from Redis's own
//! clock (`TIME`), the one clock session deadlines are made of.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rmpv::Value;
use serde::{Deserialize, Serialize};
use shoal_client::session::{SessionCookie, SessionOptions};
use shoal_client::{Client, ErrorCode};
use shoal_tests::proxy::FaultProxy;
use shoal_tests::raw::{err_code, field, req, RawConn};
use shoal_tests::shoald::config::SessionUnavailable;
use shoal_tests::shoald::store::streamid::StreamId;
use shoal_tests::{test_config, Daemon, RedisServer};

const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    name: String,
    roles: Vec<String>,
}

fn profile(name: &str) -> Profile {
    Profile {
        name: name.into(),
        roles: vec!["reader".into()],
    }
}

/// Three (or more) daemons against one redis-server, each with a client.
struct Fleet {
    redis: RedisServer,
    _dir: tempfile::TempDir,
    d: Vec<Daemon>,
    c: Vec<Client>,
}

async fn fleet(n: usize) -> Result<Fleet> {
    fleet_with(n, |_, _| {}).await
}

async fn fleet_with(n: usize, tweak: impl Fn(usize, &mut shoald::Config)) -> Result<Fleet> {
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let mut d = Vec::new();
    let mut c = Vec::new();
    for i in 0..n {
        let mut config = test_config(&redis, dir.path(), &format!("n{i}"));
        tweak(i, &mut config);
        let daemon = Daemon::start_ready(config).await?;
        wait_sessions_ready(&daemon).await?;
        c.push(daemon.client().await?);
        d.push(daemon);
    }
    Ok(Fleet {
        redis,
        _dir: dir,
        d,
        c,
    })
}

use shoal_tests::shoald;

async fn wait_sessions_ready(d: &Daemon) -> Result<()> {
    let mut rx = d.ctx.sessions.watch_ready();
    tokio::time::timeout(WAIT, rx.wait_for(|r| *r))
        .await
        .context("revocation reader did not become ready")??;
    Ok(())
}

async fn wait_sessions_unready(d: &Daemon) -> Result<()> {
    let mut rx = d.ctx.sessions.watch_ready();
    tokio::time::timeout(WAIT, rx.wait_for(|r| !*r))
        .await
        .context("revocation reader did not notice the outage")??;
    Ok(())
}

/// Waits until `d` has applied every revocation up to `id`.
async fn wait_cursor(d: &Daemon, id: StreamId) -> Result<()> {
    let mut rx = d.ctx.sessions.watch_cursor();
    tokio::time::timeout(WAIT, rx.wait_for(|c| *c >= id))
        .await
        .with_context(|| format!("revocation {id} not applied in time"))??;
    Ok(())
}

/// The id of the newest revocation-stream entry.
async fn last_revocation(redis: &RedisServer) -> Result<StreamId> {
    let (id, _) = redis.last_entry("shoal:srev").await?;
    StreamId::parse(&id).context("bad stream id")
}

/// Waits until every daemon of the fleet applied the newest revocation.
async fn all_caught_up(f: &Fleet) -> Result<StreamId> {
    let last = last_revocation(&f.redis).await?;
    for d in &f.d {
        wait_cursor(d, last).await?;
    }
    Ok(last)
}

/// Redis's clock, in ms.
async fn redis_now_ms(redis: &RedisServer) -> Result<u64> {
    let mut c = redis.conn().await?;
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(&mut c).await?;
    Ok(s * 1000 + us / 1000)
}

/// Waits until Redis's clock has passed `at_ms`.
async fn until_redis_time(redis: &RedisServer, at_ms: u64) -> Result<()> {
    loop {
        let now = redis_now_ms(redis).await?;
        if now > at_ms {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(at_ms - now + 1)).await;
    }
}

/// Kills every revocation-reader connection (by its client name). Returns how many.
async fn kill_readers(redis: &RedisServer) -> Result<usize> {
    let mut c = redis.conn().await?;
    let list: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut c).await?;
    let mut killed = 0;
    for line in list.lines() {
        if !line.contains(" name=shoal-srev:") {
            continue;
        }
        let Some(id) = line
            .split(' ')
            .find_map(|kv| kv.strip_prefix("id="))
            .map(str::to_string)
        else {
            continue;
        };
        let n: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(&id)
            .query_async(&mut c)
            .await
            .unwrap_or(0);
        killed += n as usize;
    }
    Ok(killed)
}

fn stat(d: &Daemon, name: &str) -> u64 {
    let mut m = std::collections::BTreeMap::new();
    d.ctx.sessions.stats_into(&mut m);
    m.get(name).copied().unwrap_or(0)
}

async fn valid(c: &Client, token: &str) -> Result<bool> {
    Ok(c.session_get_raw(token, false).await?.is_some())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test]
async fn create_validate_everywhere_hot_path_list_and_cookie() -> Result<()> {
    let f = fleet(3).await?;
    let created = f.c[0]
        .session_create("alice", &profile("Alice"), SessionOptions::default())
        .await?;
    assert!(created.token.len() >= 43, "at least 256 bits, base64url");
    assert!(shoald::session::plausible_token(&created.token));
    assert!(created.expires_at_ms <= created.absolute_expires_at_ms);

    for c in &f.c {
        let s = c
            .session_get::<Profile>(&created.token)
            .await?
            .context("valid everywhere")?;
        assert_eq!(s.user, "alice");
        assert_eq!(s.data, profile("Alice"));
        assert_eq!(s.absolute_expires_at_ms, created.absolute_expires_at_ms);
    }
    // Every daemon now holds it: a burst of validations costs no Redis call at all
    // (no read, and no sliding write: a tenth of 30 minutes has not passed).
    let reads: Vec<u64> = f.d.iter().map(|d| stat(d, "session_redis_reads")).collect();
    for _ in 0..50 {
        for c in &f.c {
            assert!(c.session_get::<Profile>(&created.token).await?.is_some());
        }
    }
    for (i, d) in f.d.iter().enumerate() {
        assert_eq!(
            stat(d, "session_redis_reads"),
            reads[i],
            "n{i} went to Redis"
        );
        assert_eq!(stat(d, "session_touches"), 0);
        assert!(stat(d, "session_local_hits") >= 50);
    }

    // The cookie carries the token and comes back in a Cookie header.
    let cookie = SessionCookie::default();
    let set = cookie.set_cookie(&created.token, created.absolute_expires_at_ms);
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/", "Max-Age="] {
        assert!(set.contains(attr), "{attr} missing");
    }
    let header = format!("theme=dark; {}", set.split(';').next().unwrap_or(""));
    let token = cookie
        .token_from_header(&header)
        .context("token in header")?;
    assert!(valid(&f.c[2], token).await?);

    // list shows an id that is not the token, and revoking by that id works.
    let other = f.c[1]
        .session_create_raw("alice", Vec::new(), SessionOptions::default())
        .await?;
    let list = f.c[2].session_list("alice").await?;
    assert_eq!(list.len(), 2);
    for e in &list {
        assert_ne!(e.session_id, created.token);
        assert_ne!(e.session_id, other.token);
        assert!(e.expires_at_ms >= e.last_seen_ms && e.last_seen_ms >= e.created_at_ms);
        // An id grants nothing.
        assert!(!valid(&f.c[0], &e.session_id).await?);
    }
    assert!(f.c[2].session_list("nobody").await?.is_empty());
    let mut revoked = 0;
    for e in &list {
        if f.c[1].session_revoke_id(&e.session_id).await? {
            revoked += 1;
        }
    }
    assert_eq!(revoked, 2);
    assert!(!f.c[1].session_revoke_id(&list[0].session_id).await?);
    all_caught_up(&f).await?;
    for c in &f.c {
        assert!(!valid(c, &created.token).await?);
        assert!(!valid(c, &other.token).await?);
    }
    assert!(f.c[0].session_list("alice").await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn revocation_on_one_daemon_is_rejected_on_the_other_two() -> Result<()> {
    let f = fleet(3).await?;
    let mut delays = Vec::new();
    for round in 0..30 {
        let origin = round % 3;
        let s = f.c[origin]
            .session_create_raw("bob", b"x".to_vec(), SessionOptions::default())
            .await?;
        for c in &f.c {
            assert!(valid(c, &s.token).await?);
        }
        let started = Instant::now();
        assert!(f.c[origin].session_revoke(&s.token).await?);
        // The daemon that answered rejects it at once.
        assert!(!valid(&f.c[origin], &s.token).await?);
        let id = last_revocation(&f.redis).await?;
        for (i, d) in f.d.iter().enumerate() {
            if i == origin {
                continue;
            }
            wait_cursor(d, id).await?;
            delays.push(started.elapsed());
            assert!(
                !valid(&f.c[i], &s.token).await?,
                "revoked session honoured on n{i}"
            );
        }
    }
    delays.sort();
    println!(
        "revocation propagation to the other daemons (revoke sent -> applied), n={}: p50 {:?}, p99 {:?}, max {:?}",
        delays.len(),
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays.last().copied().unwrap_or_default()
    );
    assert!(f.d.iter().all(|d| stat(d, "session_events_applied") >= 30));
    Ok(())
}

#[tokio::test]
async fn rotate_invalidates_the_old_token_everywhere_and_keeps_the_data() -> Result<()> {
    let f = fleet(3).await?;
    let opts = SessionOptions {
        idle_ttl: Some(Duration::from_secs(600)),
        absolute_ttl: Some(Duration::from_secs(3600)),
    };
    let s = f.c[0]
        .session_create("carol", &profile("Carol"), opts)
        .await?;
    let before = f.c[0]
        .session_get::<Profile>(&s.token)
        .await?
        .context("valid")?;
    for c in &f.c {
        assert!(valid(c, &s.token).await?);
    }
    let new = f.c[1].session_rotate(&s.token).await?.context("rotated")?;
    assert_ne!(new, s.token);
    assert!(
        !valid(&f.c[1], &s.token).await?,
        "old token at the rotating daemon"
    );
    all_caught_up(&f).await?;
    for (i, c) in f.c.iter().enumerate() {
        assert!(!valid(c, &s.token).await?, "old token honoured on n{i}");
        let after = c
            .session_get::<Profile>(&new)
            .await?
            .context("new token valid everywhere")?;
        assert_eq!(after.user, "carol");
        assert_eq!(after.data, before.data);
        assert_eq!(after.created_at_ms, before.created_at_ms);
        assert_eq!(after.absolute_expires_at_ms, before.absolute_expires_at_ms);
    }
    assert_eq!(f.c[2].session_list("carol").await?.len(), 1);
    assert_eq!(f.c[2].session_rotate(&s.token).await?, None);
    Ok(())
}

#[tokio::test]
async fn update_is_seen_by_every_daemon() -> Result<()> {
    let f = fleet(3).await?;
    let s = f.c[0]
        .session_create("dave", &profile("Dave"), SessionOptions::default())
        .await?;
    for c in &f.c {
        assert!(valid(c, &s.token).await?);
    }
    let mut changed = profile("Dave");
    changed.roles.push("admin".into());
    assert!(f.c[2].session_update(&s.token, &changed).await?);
    // The answering daemon serves the new data at once, the others once applied.
    let own = f.c[2].session_get::<Profile>(&s.token).await?;
    assert_eq!(own.map(|s| s.data), Some(changed.clone()));
    all_caught_up(&f).await?;
    for c in &f.c {
        let got = c.session_get::<Profile>(&s.token).await?;
        assert_eq!(got.map(|s| s.data), Some(changed.clone()));
    }
    assert!(!f.c[1].session_update(&"A".repeat(43), &changed).await?);
    Ok(())
}

#[tokio::test]
async fn revoke_user_covers_sessions_created_on_every_node() -> Result<()> {
    let f = fleet(3).await?;
    let mut tokens = Vec::new();
    for c in &f.c {
        tokens.push(
            c.session_create_raw("erin", b"e".to_vec(), SessionOptions::default())
                .await?
                .token,
        );
    }
    let bystander = f.c[0]
        .session_create_raw("frank", b"f".to_vec(), SessionOptions::default())
        .await?
        .token;
    // Every daemon caches every session, whoever created it.
    for c in &f.c {
        for t in tokens.iter().chain([&bystander]) {
            assert!(valid(c, t).await?);
        }
    }
    assert_eq!(f.c[1].session_revoke_user("erin").await?, 3);
    // The stream entry names the user and the new epoch, not the sessions: each
    // daemon drops whatever it cached for that user from before the epoch.
    let (_, last) = f.redis.last_entry("shoal:srev").await?;
    let fields: Vec<&str> = last.iter().map(|(k, _)| k.as_str()).collect();
    assert!(fields.contains(&"u") && fields.contains(&"e") && !fields.contains(&"h"));
    all_caught_up(&f).await?;
    for (i, c) in f.c.iter().enumerate() {
        for t in &tokens {
            assert!(!valid(c, t).await?, "erin's session honoured on n{i}");
        }
        assert!(valid(c, &bystander).await?, "frank's session lost on n{i}");
    }
    // A session created after the revocation is unaffected, and cached again.
    let fresh = f.c[2]
        .session_create_raw("erin", b"e2".to_vec(), SessionOptions::default())
        .await?
        .token;
    for c in &f.c {
        assert!(valid(c, &fresh).await?);
    }
    let hits = stat(&f.d[0], "session_local_hits");
    assert!(valid(&f.c[0], &fresh).await?);
    assert_eq!(stat(&f.d[0], "session_local_hits"), hits + 1);
    assert_eq!(f.c[0].session_list("erin").await?.len(), 1);
    assert_eq!(f.c[0].session_revoke_user("nobody").await?, 0);
    Ok(())
}

#[tokio::test]
async fn idle_expiry_slides_absolute_expiry_caps_and_the_index_is_cleaned() -> Result<()> {
    let f = fleet_with(3, |_, c| c.session.touch_fraction = 0.2).await?;

    // Idle: never used after creation, gone everywhere at its deadline, including
    // on the daemon that cached it at creation (its local deadline is Redis's).
    let idle = f.c[0]
        .session_create_raw(
            "gina",
            Vec::new(),
            SessionOptions {
                idle_ttl: Some(Duration::from_millis(400)),
                absolute_ttl: Some(Duration::from_secs(60)),
            },
        )
        .await?;
    for c in &f.c {
        assert!(valid(c, &idle.token).await?);
    }
    // Absolute: used all the time, still ends at its absolute expiry.
    let capped = f.c[0]
        .session_create_raw(
            "gina",
            Vec::new(),
            SessionOptions {
                idle_ttl: Some(Duration::from_secs(60)),
                absolute_ttl: Some(Duration::from_millis(900)),
            },
        )
        .await?;
    // Sliding: used through one daemon for well over its idle window.
    let sliding = f.c[0]
        .session_create_raw(
            "gina",
            Vec::new(),
            SessionOptions {
                idle_ttl: Some(Duration::from_millis(500)),
                absolute_ttl: Some(Duration::from_secs(60)),
            },
        )
        .await?;
    let keeper = f.c[1]
        .session_create_raw("gina", Vec::new(), SessionOptions::default())
        .await?;
    assert_eq!(f.c[2].session_list("gina").await?.len(), 4);

    let first_expiry = sliding.expires_at_ms;
    let end = redis_now_ms(&f.redis).await? + 1300;
    while redis_now_ms(&f.redis).await? < end {
        let s = f.c[0]
            .session_get_raw(&sliding.token, true)
            .await?
            .context("sliding session expired while in use")?;
        assert!(s.expires_at_ms <= s.absolute_expires_at_ms);
        if let Some(c) = f.c[0].session_get_raw(&capped.token, true).await? {
            assert!(c.expires_at_ms <= capped.absolute_expires_at_ms);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Refreshes were coalesced: far fewer Redis writes than requests.
    let touches = stat(&f.d[0], "session_touches");
    assert!((1..=20).contains(&touches), "{touches} sliding writes");

    // The other daemons saw an old deadline; they ask Redis and find it extended.
    for c in &f.c[1..] {
        let s = c
            .session_get_raw(&sliding.token, false)
            .await?
            .context("sliding session valid on the other daemons")?;
        assert!(s.expires_at_ms > first_expiry + 500);
    }
    until_redis_time(&f.redis, idle.expires_at_ms).await?;
    until_redis_time(&f.redis, capped.absolute_expires_at_ms).await?;
    for (i, c) in f.c.iter().enumerate() {
        assert!(!valid(c, &idle.token).await?, "idle session alive on n{i}");
        assert!(
            !valid(c, &capped.token).await?,
            "session past absolute expiry on n{i}"
        );
    }
    let mut conn = f.redis.conn().await?;
    let listed = f.c[1].session_list("gina").await?;
    assert_eq!(listed.len(), 2, "the sliding session and the keeper");
    let members: u64 = redis::cmd("ZCARD")
        .arg("shoal:su:gina")
        .query_async(&mut conn)
        .await?;
    assert_eq!(members, 2, "dead members removed from the index");
    // The index itself expires with its longest-lived session.
    let pttl: i64 = redis::cmd("PTTL")
        .arg("shoal:su:gina")
        .query_async(&mut conn)
        .await?;
    assert!(pttl > 0);
    assert!(valid(&f.c[2], &keeper.token).await?);
    Ok(())
}

/// A writer the test can read back (a log capture).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An `XRANGE` entry: id and field/value pairs.
type StreamEntry = (String, Vec<(Vec<u8>, Vec<u8>)>);

/// Every value of every key, as bytes.
async fn dump_redis(redis: &RedisServer) -> Result<Vec<(String, Vec<Vec<u8>>)>> {
    let mut c = redis.conn().await?;
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut c).await?;
    let mut out = Vec::new();
    for k in keys {
        let t: String = redis::cmd("TYPE").arg(&k).query_async(&mut c).await?;
        let values: Vec<Vec<u8>> = match t.as_str() {
            "string" => vec![redis::cmd("GET").arg(&k).query_async(&mut c).await?],
            "hash" => redis::cmd("HGETALL").arg(&k).query_async(&mut c).await?,
            "zset" => {
                redis::cmd("ZRANGE")
                    .arg(&k)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query_async(&mut c)
                    .await?
            }
            "set" => redis::cmd("SMEMBERS").arg(&k).query_async(&mut c).await?,
            "stream" => {
                let entries: Vec<StreamEntry> = redis::cmd("XRANGE")
                    .arg(&k)
                    .arg("-")
                    .arg("+")
                    .query_async(&mut c)
                    .await?;
                entries
                    .into_iter()
                    .flat_map(|(_, f)| f.into_iter().flat_map(|(a, b)| [a, b]))
                    .collect()
            }
            other => bail!("unexpected type {other} for {k}"),
        };
        out.push((k, values));
    }
    Ok(out)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn raw_token_is_absent_from_every_redis_key_and_value_and_from_the_logs() -> Result<()> {
    // A current-thread runtime: the daemons' tasks run on this thread, so the
    // thread's log subscriber (every level) sees everything they log.
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (tokens, dump, errors) = rt.block_on(async {
        let f = fleet(3).await?;
        let mut tokens = Vec::new();
        let mut errors = Vec::new();
        for (i, c) in f.c.iter().enumerate() {
            let s = c
                .session_create("hank", &profile("Hank"), SessionOptions::default())
                .await?;
            for c in &f.c {
                assert!(valid(c, &s.token).await?);
            }
            tokens.push(s.token.clone());
            if i == 0 {
                let rotated = c.session_rotate(&s.token).await?.context("rotated")?;
                c.session_update(&rotated, &profile("H")).await?;
                tokens.push(rotated);
            }
        }
        f.c[1].session_revoke(&tokens[2]).await?;
        // Errors about a (now) invalid token must not repeat it.
        for t in &tokens[..1] {
            match f.c[2]
                .call::<Value>(shoal_client::Op::SessionRotate { token: t.clone() })
                .await
            {
                Err(e) => errors.push(e.to_string()),
                Ok(_) => bail!("rotating a rotated token succeeded"),
            }
        }
        let dump = dump_redis(&f.redis).await?;
        f.c[0].session_revoke_user("hank").await?;
        all_caught_up(&f).await?;
        let mut stats = Vec::new();
        for c in &f.c {
            stats.push(format!("{:?}", c.stats().await?));
        }
        errors.extend(stats);
        let mut dump = dump;
        dump.extend(dump_redis(&f.redis).await?);
        for d in f.d {
            d.stop().await?;
        }
        Ok::<_, anyhow::Error>((tokens, dump, errors))
    })?;
    let logs = logs.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(!logs.is_empty(), "the capture saw the daemons' logs");
    assert!(
        dump.iter().any(|(k, _)| k.starts_with("shoal:s:")),
        "sessions were stored"
    );
    for t in &tokens {
        for (key, values) in &dump {
            assert!(!key.contains(t.as_str()), "token in key name {key}");
            for v in values {
                assert!(!contains(v, t.as_bytes()), "token in a value of {key}");
            }
        }
        assert!(!contains(&logs, t.as_bytes()), "token in the logs");
        for e in &errors {
            assert!(!e.contains(t.as_str()), "token in an error or stats");
        }
    }
    Ok(())
}

#[tokio::test]
async fn reader_killed_while_revocations_flow_then_none_honoured() -> Result<()> {
    let f = fleet(3).await?;
    let mut tokens = Vec::new();
    for i in 0..45 {
        tokens.push(
            f.c[i % 3]
                .session_create_raw("ivan", b"i".to_vec(), SessionOptions::default())
                .await?
                .token,
        );
    }
    for c in &f.c {
        for t in &tokens {
            assert!(valid(c, t).await?);
        }
    }
    let reconnects: u64 =
        f.d.iter()
            .map(|d| stat(d, "session_reader_reconnects"))
            .sum();
    let revoker = {
        let clients = f.c.clone();
        let tokens = tokens.clone();
        tokio::spawn(async move {
            for (i, t) in tokens.iter().enumerate() {
                assert!(clients[i % 3].session_revoke(t).await?);
                tokio::task::yield_now().await;
            }
            Ok::<_, anyhow::Error>(())
        })
    };
    let mut killed = 0;
    while !revoker.is_finished() {
        killed += kill_readers(&f.redis).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    revoker.await??;
    assert!(
        killed >= 3,
        "readers were killed while revocations flowed ({killed})"
    );
    let last = last_revocation(&f.redis).await?;
    for d in &f.d {
        wait_sessions_ready(d).await?;
        wait_cursor(d, last).await?;
    }
    let after: u64 =
        f.d.iter()
            .map(|d| stat(d, "session_reader_reconnects"))
            .sum();
    assert!(after > reconnects);
    for (i, c) in f.c.iter().enumerate() {
        for t in &tokens {
            assert!(!valid(c, t).await?, "revoked session honoured on n{i}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn stream_trimmed_past_a_cursor_flushes_the_local_cache() -> Result<()> {
    let redis = RedisServer::start().await?;
    let proxy = FaultProxy::start(redis.port()).await?;
    let dir = tempfile::tempdir()?;
    // n0 reaches Redis through the proxy; n1 and n2 directly.
    let mut d = Vec::new();
    let mut c = Vec::new();
    for i in 0..3 {
        let mut config = test_config(&redis, dir.path(), &format!("n{i}"));
        if i == 0 {
            config.redis.url = proxy.url();
        }
        let daemon = Daemon::start_ready(config).await?;
        wait_sessions_ready(&daemon).await?;
        c.push(daemon.client().await?);
        d.push(daemon);
    }
    let doomed = c[1]
        .session_create_raw("judy", b"j".to_vec(), SessionOptions::default())
        .await?
        .token;
    let kept = c[1]
        .session_create_raw("judy", b"k".to_vec(), SessionOptions::default())
        .await?
        .token;
    // Some history, so n0's cursor is past the start of the stream.
    let history = c[2]
        .session_create_raw("judy", Vec::new(), SessionOptions::default())
        .await?
        .token;
    c[2].session_revoke(&history).await?;
    wait_cursor(&d[0], last_revocation(&redis).await?).await?;
    assert!(valid(&c[0], &doomed).await?);
    assert!(valid(&c[0], &kept).await?);

    proxy.block();
    proxy.cut_all();
    wait_sessions_unready(&d[0]).await?;
    // While n0 is away: a revocation it does not see, then a trim past its cursor.
    assert!(c[1].session_revoke(&doomed).await?);
    let mut conn = redis.conn().await?;
    let _: i64 = redis::cmd("XTRIM")
        .arg("shoal:srev")
        .arg("MAXLEN")
        .arg(0)
        .query_async(&mut conn)
        .await?;
    proxy.unblock();
    wait_sessions_ready(&d[0]).await?;
    assert_eq!(stat(&d[0], "session_flushes_trimmed"), 1);
    assert!(
        !valid(&c[0], &doomed).await?,
        "revoked during the gap, honoured after it"
    );
    let reads = stat(&d[0], "session_redis_reads");
    assert!(valid(&c[0], &kept).await?);
    assert_eq!(
        stat(&d[0], "session_redis_reads"),
        reads + 1,
        "the flushed cache asks Redis again"
    );
    assert_eq!(stat(&d[1], "session_flushes_trimmed"), 0);
    Ok(())
}

#[tokio::test]
async fn redis_restarted_empty_flushes_every_local_cache() -> Result<()> {
    let mut f = fleet(3).await?;
    let s = f.c[0]
        .session_create_raw("kim", b"k".to_vec(), SessionOptions::default())
        .await?
        .token;
    for c in &f.c {
        assert!(valid(c, &s).await?);
    }
    // A revocation first, so every cursor is past the start of the stream.
    let dummy = f.c[2]
        .session_create_raw("kim", Vec::new(), SessionOptions::default())
        .await?
        .token;
    f.c[2].session_revoke(&dummy).await?;
    let before = all_caught_up(&f).await?;
    assert!(before > StreamId::ZERO);
    f.redis.restart().await?;
    // Each reader notices (connection closed), reconnects, finds a new identity,
    // flushes and restarts its cursor at the new, empty stream: await that.
    for (i, d) in f.d.iter().enumerate() {
        let mut cursor = d.ctx.sessions.watch_cursor();
        tokio::time::timeout(WAIT, cursor.wait_for(|c| *c < before))
            .await
            .with_context(|| format!("n{i} did not notice the restart"))??;
        wait_sessions_ready(d).await?;
        assert_eq!(stat(d, "session_flushes_redis_identity"), 1);
    }
    for (i, c) in f.c.iter().enumerate() {
        assert!(
            !valid(c, &s).await?,
            "session of a lost dataset honoured on n{i}"
        );
    }
    // Sessions work again (a new fleet hash key is created if none is configured).
    let fresh = f.c[1]
        .session_create_raw("kim", b"k".to_vec(), SessionOptions::default())
        .await?
        .token;
    for c in &f.c {
        assert!(valid(c, &fresh).await?);
    }
    Ok(())
}

#[tokio::test]
async fn cached_mode_serves_during_an_outage_within_max_stale_and_not_after() -> Result<()> {
    let redis = RedisServer::start().await?;
    let proxy = FaultProxy::start(redis.port()).await?;
    let dir = tempfile::tempdir()?;
    let max_stale = Duration::from_millis(1500);
    // n0: cached mode, n1: deny mode, both through the proxy.
    let mut d = Vec::new();
    let mut c = Vec::new();
    for i in 0..2 {
        let mut config = test_config(&redis, dir.path(), &format!("n{i}"));
        config.redis.url = proxy.url();
        if i == 0 {
            config.session.on_unavailable = SessionUnavailable::Cached;
            config.session.max_stale = max_stale;
        }
        let daemon = Daemon::start_ready(config).await?;
        wait_sessions_ready(&daemon).await?;
        c.push(daemon.client().await?);
        d.push(daemon);
    }
    let s = c[0]
        .session_create_raw("leo", b"l".to_vec(), SessionOptions::default())
        .await?
        .token;
    let revoked = c[0]
        .session_create_raw("leo", b"r".to_vec(), SessionOptions::default())
        .await?
        .token;
    for cl in &c {
        assert!(valid(cl, &s).await?);
        assert!(valid(cl, &revoked).await?);
    }
    assert!(c[1].session_revoke(&revoked).await?);
    wait_cursor(&d[0], last_revocation(&redis).await?).await?;

    let cut = Instant::now();
    proxy.block();
    proxy.cut_all();
    wait_sessions_unready(&d[0]).await?;
    wait_sessions_unready(&d[1]).await?;
    let s0 = c[0].session_get_raw(&s, true).await?;
    assert!(s0.is_some(), "cached mode serves a validated session");
    assert!(stat(&d[0], "session_served_stale") >= 1);
    match c[1].session_get_raw(&s, true).await {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::Unavailable), "{e}"),
        Ok(v) => bail!("deny mode answered {v:?} during the outage"),
    }
    match c[0].session_get_raw(&revoked, true).await {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::Unavailable), "{e}"),
        Ok(v) => bail!("a session revoked before the outage was served: {v:?}"),
    }
    // Past max_stale (counted from before the cut), the fallback ends.
    let end = cut + max_stale + Duration::from_millis(100);
    tokio::time::sleep_until(end.into()).await;
    match c[0].session_get_raw(&s, true).await {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::Unavailable), "{e}"),
        Ok(v) => bail!("served past max_stale: {v:?}"),
    }
    proxy.unblock();
    wait_sessions_ready(&d[0]).await?;
    assert!(valid(&c[0], &s).await?);
    assert!(!valid(&c[0], &revoked).await?);
    Ok(())
}

#[tokio::test]
async fn bad_session_requests_are_bad_request_and_unknown_tokens_not_found() -> Result<()> {
    let f = fleet(1).await?;
    let mut raw = RawConn::greeted(&f.d[0].socket).await?;
    let long_user = "u".repeat(5000);
    let cases: Vec<(&str, Value)> = vec![
        (
            "get without token",
            req(&[("id", 1.into()), ("op", "session.get".into())]),
        ),
        (
            "get with an integer token",
            req(&[
                ("id", 2.into()),
                ("op", "session.get".into()),
                ("token", 7.into()),
            ]),
        ),
        (
            "get with an empty token",
            req(&[
                ("id", 3.into()),
                ("op", "session.get".into()),
                ("token", "".into()),
            ]),
        ),
        (
            "get with touch as a string",
            req(&[
                ("id", 4.into()),
                ("op", "session.get".into()),
                ("token", "A".repeat(43).as_str().into()),
                ("touch", "yes".into()),
            ]),
        ),
        (
            "create without user",
            req(&[("id", 5.into()), ("op", "session.create".into())]),
        ),
        (
            "create with an overlong user",
            req(&[
                ("id", 6.into()),
                ("op", "session.create".into()),
                ("user", long_user.as_str().into()),
            ]),
        ),
        (
            "create with data as a string",
            req(&[
                ("id", 7.into()),
                ("op", "session.create".into()),
                ("user", "u".into()),
                ("data", "not bin".into()),
            ]),
        ),
        (
            "create with a zero idle ttl",
            req(&[
                ("id", 8.into()),
                ("op", "session.create".into()),
                ("user", "u".into()),
                ("idle_ttl_ms", 0.into()),
            ]),
        ),
        (
            "update without data",
            req(&[
                ("id", 9.into()),
                ("op", "session.update".into()),
                ("token", "A".repeat(43).as_str().into()),
            ]),
        ),
        (
            "revoke with neither token nor id",
            req(&[("id", 10.into()), ("op", "session.revoke".into())]),
        ),
        (
            "revoke with both",
            req(&[
                ("id", 11.into()),
                ("op", "session.revoke".into()),
                ("token", "a".into()),
                ("session_id", "b".into()),
            ]),
        ),
        (
            "revoke_user with an array",
            req(&[
                ("id", 12.into()),
                ("op", "session.revoke_user".into()),
                ("user", Value::Array(vec![])),
            ]),
        ),
        (
            "list with an overlong user",
            req(&[
                ("id", 13.into()),
                ("op", "session.list".into()),
                ("user", long_user.as_str().into()),
            ]),
        ),
        (
            "rotate without token",
            req(&[("id", 14.into()), ("op", "session.rotate".into())]),
        ),
    ];
    for (what, r) in &cases {
        raw.send(r).await?;
        let resp = raw.recv().await?;
        assert_eq!(
            err_code(&resp).as_deref(),
            Some("bad_request"),
            "{what}: {resp}"
        );
    }
    // The connection stayed open.
    raw.send(&req(&[("id", 99.into()), ("op", "ping".into())]))
        .await?;
    assert!(field(&raw.recv().await?, "ok").is_some());

    // Well-formed but unknown: not_found, or false, never a Redis error.
    let c = &f.c[0];
    for t in ["short", &"A".repeat(43), &"é".repeat(30)] {
        assert_eq!(c.session_get_raw(t, true).await?, None);
        assert_eq!(c.session_rotate(t).await?, None);
        assert!(!c.session_revoke(t).await?);
        assert!(!c.session_update_raw(t, b"x".to_vec()).await?);
    }
    assert!(!c.session_revoke_id("not-an-id").await?);
    match c
        .call::<Value>(shoal_client::Op::SessionGet {
            token: "B".repeat(43),
            touch: true,
        })
        .await
    {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::NotFound)),
        Ok(v) => bail!("unknown token answered {v}"),
    }
    Ok(())
}

#[tokio::test]
async fn a_configured_hash_key_stays_out_of_redis_and_must_match() -> Result<()> {
    const KEY: &str = "a fleet secret of at least 32 bytes, for tests";
    let f = fleet_with(3, |i, c| {
        c.session.token_hash_key = shoald::config::Secret(if i < 2 {
            KEY.into()
        } else {
            "another fleet's secret, also 32 bytes or more".into()
        });
    })
    .await?;
    assert!(!format!("{:?}", f.d[0].ctx.config).contains(KEY));
    let s = f.c[0]
        .session_create_raw("mia", Vec::new(), SessionOptions::default())
        .await?;
    assert!(valid(&f.c[1], &s.token).await?);
    // Same Redis, different key: the token names no session there.
    assert!(!valid(&f.c[2], &s.token).await?);
    let mut conn = f.redis.conn().await?;
    let exists: bool = redis::cmd("EXISTS")
        .arg("shoal:skey")
        .query_async(&mut conn)
        .await?;
    assert!(!exists, "a configured key is never stored in Redis");
    Ok(())
}

#[tokio::test]
async fn a_revocation_racing_a_cold_read_is_not_undone_by_its_fill() -> Result<()> {
    let redis = RedisServer::start().await?;
    let proxy = FaultProxy::start(redis.port()).await?;
    let dir = tempfile::tempdir()?;
    let mut config = test_config(&redis, dir.path(), "n0");
    config.redis.url = proxy.url();
    let a = Daemon::start_ready(config).await?;
    let b = Daemon::start_ready(test_config(&redis, dir.path(), "n1")).await?;
    wait_sessions_ready(&a).await?;
    wait_sessions_ready(&b).await?;
    let (ca, cb) = (a.client().await?, b.client().await?);
    const MARKER: &[u8] = b"race-marker-5c1d";
    let token = cb
        .session_create_raw("nina", MARKER.to_vec(), SessionOptions::default())
        .await?
        .token;
    // n0's read of the session is answered by Redis but held on its way back...
    proxy.hold_replies_matching(MARKER);
    let read = {
        let ca = ca.clone();
        let token = token.clone();
        tokio::spawn(async move { ca.session_get_raw(&token, false).await })
    };
    proxy.wait_held(1, WAIT).await?;
    // ...while the session is revoked and n0 applies the revocation.
    assert!(cb.session_revoke(&token).await?);
    wait_cursor(&a, last_revocation(&redis).await?).await?;
    let rejected = stat(&a, "session_fills_rejected");
    proxy.release();
    // The read itself happened before the revocation and may report the session;
    // keeping it would resurrect a revoked session on n0.
    let _ = read.await??;
    assert_eq!(stat(&a, "session_fills_rejected"), rejected + 1);
    assert!(!valid(&ca, &token).await?, "the late fill was kept");
    Ok(())
}

// ---- Issue 12: the staleness bound Δ and the session holes (9, 10, 11). ----

/// Δ of the bound tests: 50 ms heartbeat (the longest `XREAD BLOCK`), Δ = 150 ms,
/// and a long Redis deadline (600 ms), so that only the reader's proof of
/// delivery — not a timeout — can stop a stalled daemon from answering from its
/// local cache within Δ.
const DELTA: Duration = Duration::from_millis(150);

fn delta_config(c: &mut shoald::Config) {
    c.cache.heartbeat = Duration::from_millis(50);
    c.cache.max_staleness = DELTA;
    c.redis.timeout = Duration::from_millis(600);
}

/// What one `session.get` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Accepted,
    NotFound,
    Failed,
}

async fn outcome(c: &Client, token: &str) -> Outcome {
    match c.session_get_raw(token, false).await {
        Ok(Some(_)) => Outcome::Accepted,
        Ok(None) => Outcome::NotFound,
        Err(_) => Outcome::Failed,
    }
}

/// Asks every client for `token` every 10 ms until `until`, each request on its
/// own (a request that hangs does not delay the next); each sample is
/// (sent, outcome), per client.
async fn poll_all(
    clients: &[Client],
    token: &str,
    until: Instant,
) -> Result<Vec<Vec<(Instant, Outcome)>>> {
    let mut tasks: Vec<Vec<tokio::task::JoinHandle<(Instant, Outcome)>>> =
        clients.iter().map(|_| Vec::new()).collect();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    loop {
        tick.tick().await;
        let sent = Instant::now();
        if sent > until {
            break;
        }
        for (i, c) in clients.iter().enumerate() {
            let (c, token) = (c.clone(), token.to_string());
            tasks[i].push(tokio::spawn(
                async move { (sent, outcome(&c, &token).await) },
            ));
        }
    }
    let mut out = Vec::new();
    for per_client in tasks {
        let mut samples = Vec::new();
        for t in per_client {
            samples.push(t.await?);
        }
        out.push(samples);
    }
    Ok(out)
}

/// Every sample sent at or after `bound` must refuse; at least one was sent then.
fn assert_refused_after(
    samples: &[Vec<(Instant, Outcome)>],
    bound: Instant,
    what: &str,
) -> Result<()> {
    for (i, s) in samples.iter().enumerate() {
        let returned = bound.checked_sub(DELTA).unwrap_or(bound);
        let last_accepted = s
            .iter()
            .filter(|(_, o)| *o == Outcome::Accepted)
            .map(|(sent, _)| sent.saturating_duration_since(returned))
            .max();
        println!(
            "{what}: n{i}: {} requests, last accepted when asked {last_accepted:?} after the revocation returned (Δ = {DELTA:?})",
            s.len()
        );
        let late: Vec<_> = s.iter().filter(|(sent, _)| *sent >= bound).collect();
        if late.is_empty() {
            bail!("{what}: n{i} was never asked after the bound");
        }
        for (sent, o) in late {
            if *o == Outcome::Accepted {
                bail!(
                    "{what}: n{i} accepted the session when asked {:?} after the revocation returned (Δ = {DELTA:?})",
                    sent.duration_since(bound) + DELTA
                );
            }
        }
    }
    Ok(())
}

/// Waits until `d` answers `token` from its local cache (its proof is fresh).
async fn wait_local_hit(d: &Daemon, c: &Client, token: &str) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        let hits = stat(d, "session_local_hits");
        if !valid(c, token).await? {
            bail!("session not valid");
        }
        if stat(d, "session_local_hits") > hits {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the local session cache never answered");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn leak(s: &str) -> &'static [u8] {
    Box::leak(s.as_bytes().to_vec().into_boxed_slice())
}

#[tokio::test]
async fn no_daemon_accepts_a_session_more_than_delta_after_its_revocation() -> Result<()> {
    let redis = RedisServer::start().await?;
    // n0 reaches Redis through p0, which will black-hole every reply (reader and
    // data path); n1 through p1, which will hold only the reply carrying the
    // revocation (its reader stalls, its data path works); n2 directly.
    let p0 = FaultProxy::start(redis.port()).await?;
    let p1 = FaultProxy::start(redis.port()).await?;
    let dir = tempfile::tempdir()?;
    let mut d = Vec::new();
    let mut c = Vec::new();
    for (i, url) in [p0.url(), p1.url(), redis.url()].into_iter().enumerate() {
        let mut config = test_config(&redis, dir.path(), &format!("n{i}"));
        delta_config(&mut config);
        config.redis.url = url;
        let daemon = Daemon::start_ready(config).await?;
        wait_sessions_ready(&daemon).await?;
        c.push(daemon.client().await?);
        d.push(daemon);
    }
    for kind in ["revoke", "revoke_user", "rotate"] {
        let user = format!("delta-{kind}-user");
        let token = c[2]
            .session_create_raw(&user, b"d".to_vec(), SessionOptions::default())
            .await?
            .token;
        // Every daemon answers it from its local cache (trusted: a fresh proof)
        // when the stall begins.
        for (dm, cl) in d.iter().zip(&c) {
            wait_local_hit(dm, cl, &token).await?;
        }
        let listed = c[2].session_list(&user).await?;
        let id = listed.first().context("listed")?.session_id.clone();
        // The stream entry names the session (revoke, rotate) or the user.
        p1.hold_replies_matching(leak(if kind == "revoke_user" { &user } else { &id }));
        p0.hold_replies();
        let before = d[1].ctx.sessions.cursor();
        match kind {
            "revoke" => assert!(c[2].session_revoke(&token).await?),
            "revoke_user" => assert_eq!(c[2].session_revoke_user(&user).await?, 1),
            _ => assert!(c[2].session_rotate(&token).await?.is_some()),
        }
        let returned = Instant::now();
        let samples = poll_all(&c, &token, returned + DELTA + Duration::from_millis(400)).await?;
        assert_eq!(
            d[1].ctx.sessions.cursor(),
            before,
            "{kind}: n1's reader was stalled"
        );
        assert_refused_after(&samples, returned + DELTA, kind)?;
        p0.release();
        p1.release();
        let last = last_revocation(&redis).await?;
        for dm in &d {
            wait_sessions_ready(dm).await?;
            wait_cursor(dm, last).await?;
        }
        for (i, cl) in c.iter().enumerate() {
            assert!(
                !valid(cl, &token).await?,
                "{kind}: honoured on n{i} after recovery"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn flushall_while_the_reader_is_connected_is_noticed_within_delta() -> Result<()> {
    let f = fleet_with(3, |_, c| delta_config(c)).await?;
    let token = f.c[0]
        .session_create_raw("flo", b"f".to_vec(), SessionOptions::default())
        .await?
        .token;
    for c in &f.c {
        assert!(valid(c, &token).await?);
    }
    let mut conn = f.redis.conn().await?;
    let () = redis::cmd("FLUSHALL").query_async(&mut conn).await?;
    let returned = Instant::now();
    let samples = poll_all(&f.c, &token, returned + DELTA + Duration::from_millis(300)).await?;
    assert_refused_after(&samples, returned + DELTA, "FLUSHALL")?;
    for (i, d) in f.d.iter().enumerate() {
        assert!(
            stat(d, "session_flushes_redis_identity") >= 1,
            "n{i} did not flush"
        );
    }
    // The fleet still shares one hash key: a new session works everywhere.
    let fresh = f.c[1]
        .session_create_raw("flo", b"f".to_vec(), SessionOptions::default())
        .await?
        .token;
    for (i, c) in f.c.iter().enumerate() {
        assert!(valid(c, &fresh).await?, "new session unknown on n{i}");
    }
    Ok(())
}

/// Creates a session on every daemon and reads each on every daemon; true when
/// all of them are valid everywhere.
async fn fleet_agrees(clients: &[Client]) -> Result<bool> {
    for (i, origin) in clients.iter().enumerate() {
        let t = origin
            .session_create_raw(&format!("agree-{i}"), Vec::new(), SessionOptions::default())
            .await?
            .token;
        for c in clients {
            if !valid(c, &t).await? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Polls until the fleet agrees, returning how long that took; then checks it
/// keeps agreeing.
async fn converges(clients: &[Client], within: Duration) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if fleet_agrees(clients).await? {
            break;
        }
        if start.elapsed() > within {
            bail!("sessions created on one daemon still unknown on another after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = start.elapsed();
    for _ in 0..5 {
        assert!(fleet_agrees(clients).await?, "the fleet agreed, then not");
    }
    Ok(took)
}

#[tokio::test]
async fn fleet_hash_key_deleted_or_replaced_converges_within_the_bound() -> Result<()> {
    let mut f = fleet(3).await?;
    let bound = f.d[0].ctx.config.cache.max_staleness;
    assert!(fleet_agrees(&f.c).await?);
    let mut conn = f.redis.conn().await?;

    // Deleted (evicted, an operator) while three daemons run, then one of them
    // restarts: it must not make a key of its own that the others never see.
    let _: i64 = redis::cmd("DEL")
        .arg("shoal:skey")
        .query_async(&mut conn)
        .await?;
    let config = f.d[2].ctx.config.clone();
    if let Some(old) = f.d.pop() {
        old.stop().await?;
    }
    f.c.pop();
    let restarted = Daemon::start_ready(config).await?;
    wait_sessions_ready(&restarted).await?;
    f.c.push(restarted.client().await?);
    f.d.push(restarted);
    let took = converges(&f.c, bound).await?;
    println!("skey deleted + restart: the fleet agreed after {took:?} (bound {bound:?})");

    // Replaced by another value (what a daemon that found no key would create):
    // every daemon adopts the fleet's key and flushes what it hashed with its own.
    let flushes: Vec<u64> =
        f.d.iter()
            .map(|d| stat(d, "session_flushes_hash_key"))
            .collect();
    let () = redis::cmd("SET")
        .arg("shoal:skey")
        .arg(shoald::random_token(32))
        .query_async(&mut conn)
        .await?;
    let replaced = Instant::now();
    // Until every daemon has noticed, they may all still agree on the old key:
    // wait for each to adopt the new one (a flush of what it hashed with the old).
    loop {
        let adopted =
            f.d.iter()
                .zip(&flushes)
                .all(|(d, n)| stat(d, "session_flushes_hash_key") > *n);
        if adopted {
            break;
        }
        if replaced.elapsed() > bound {
            bail!("not every daemon adopted the replaced key within {bound:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = replaced.elapsed();
    for _ in 0..5 {
        assert!(
            fleet_agrees(&f.c).await?,
            "the fleet disagrees after adopting"
        );
    }
    println!("skey replaced: every daemon adopted it after {took:?} (bound {bound:?})");
    Ok(())
}

#[tokio::test]
async fn revoke_user_refuses_a_session_missing_from_the_user_index() -> Result<()> {
    let f = fleet(3).await?;
    // Three sessions of ivy, cached on n0 (creation) and n1; n2 never saw them.
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let t = f.c[0]
            .session_create_raw("ivy", b"i".to_vec(), SessionOptions::default())
            .await?
            .token;
        assert!(valid(&f.c[1], &t).await?);
        tokens.push(t);
    }
    // Each goes missing from the user index (an eviction, a stray ZREM).
    let ids: Vec<String> = f.c[0]
        .session_list("ivy")
        .await?
        .into_iter()
        .map(|e| e.session_id)
        .collect();
    assert_eq!(ids.len(), 3);
    let mut conn = f.redis.conn().await?;
    for id in &ids {
        let removed: i64 = redis::cmd("ZREM")
            .arg("shoal:su:ivy")
            .arg(id)
            .query_async(&mut conn)
            .await?;
        assert_eq!(removed, 1);
    }
    f.c[1].session_revoke_user("ivy").await?;
    all_caught_up(&f).await?;
    // On n2 every op is cold: Redis itself must refuse them.
    assert!(!f.c[2].session_update_raw(&tokens[0], b"x".to_vec()).await?);
    assert_eq!(f.c[2].session_rotate(&tokens[1]).await?, None);
    assert!(
        !valid(&f.c[2], &tokens[2]).await?,
        "cold read on another daemon"
    );
    for t in &tokens {
        for (i, c) in f.c.iter().enumerate() {
            assert!(!valid(c, t).await?, "revoked session honoured on n{i}");
        }
    }
    for id in &ids {
        let exists: bool = redis::cmd("EXISTS")
            .arg(format!("shoal:s:{id}"))
            .query_async(&mut conn)
            .await?;
        assert!(!exists, "a session refused by its epoch is deleted");
    }
    // Sessions created after the revocation are fine.
    let fresh = f.c[2]
        .session_create_raw("ivy", b"i".to_vec(), SessionOptions::default())
        .await?
        .token;
    for c in &f.c {
        assert!(valid(c, &fresh).await?);
    }
    assert!(f.c[0].session_update_raw(&fresh, b"y".to_vec()).await?);
    assert!(f.c[1].session_rotate(&fresh).await?.is_some());

    // The user's epoch outlives every session that recorded it, even one whose
    // absolute lifetime is longer than the configured one.
    let long = f.c[0]
        .session_create_raw(
            "ivo",
            Vec::new(),
            SessionOptions {
                idle_ttl: None,
                absolute_ttl: Some(Duration::from_secs(3 * 24 * 3600)),
            },
        )
        .await?;
    let expire_at: i64 = redis::cmd("PEXPIRETIME")
        .arg("shoal:se:ivo")
        .query_async(&mut conn)
        .await?;
    assert!(
        expire_at >= long.absolute_expires_at_ms as i64,
        "the epoch key expires at {expire_at}, the session at {}",
        long.absolute_expires_at_ms
    );
    let ivo_id = f.c[0].session_list("ivo").await?[0].session_id.clone();
    let _: i64 = redis::cmd("DEL")
        .arg("shoal:su:ivo")
        .query_async(&mut conn)
        .await?;
    f.c[0].session_revoke_user("ivo").await?;
    let expire_at: i64 = redis::cmd("PEXPIRETIME")
        .arg("shoal:se:ivo")
        .query_async(&mut conn)
        .await?;
    assert!(expire_at >= long.absolute_expires_at_ms as i64);
    all_caught_up(&f).await?;
    assert!(!valid(&f.c[2], &long.token).await?);
    assert!(
        !f.c[2].session_revoke_id(&ivo_id).await?,
        "deleted by the refused read"
    );
    Ok(())
}

#[tokio::test]
async fn a_dropped_get_releases_the_sliding_touch_flag() -> Result<()> {
    let redis = RedisServer::start().await?;
    let proxy = FaultProxy::start(redis.port()).await?;
    let dir = tempfile::tempdir()?;
    let mut config = test_config(&redis, dir.path(), "n0");
    config.redis.url = proxy.url();
    config.session.touch_fraction = 0.2;
    let d = Daemon::start_ready(config).await?;
    wait_sessions_ready(&d).await?;
    let c = d.client().await?;
    const MARKER: &[u8] = b"touch-marker-7f3a";
    let idle = Duration::from_secs(2);
    let created = c
        .session_create_raw(
            "tom",
            MARKER.to_vec(),
            SessionOptions {
                idle_ttl: Some(idle),
                absolute_ttl: Some(Duration::from_secs(60)),
            },
        )
        .await?;
    let idle_ms = idle.as_millis() as u64;
    let window = idle_ms / 5;
    // Let a fifth of the idle window pass: the next touching read refreshes it.
    until_redis_time(&redis, created.expires_at_ms - idle_ms + window + 10).await?;
    // That refresh hangs (its reply held), and the request is dropped mid-flight.
    proxy.hold_replies_matching(MARKER);
    let sessions = d.ctx.sessions.clone();
    let token = created.token.clone();
    let max_frame = d.ctx.max_frame;
    let request = tokio::spawn(async move {
        sessions
            .handle(
                1,
                shoal_client::Op::SessionGet { token, touch: true },
                max_frame,
            )
            .await
    });
    proxy.wait_held(1, WAIT).await?;
    let dropped_at = redis_now_ms(&redis).await?;
    request.abort();
    assert!(request.await.is_err_and(|e| e.is_cancelled()));
    proxy.release();
    // A window later, a touching read must refresh again: the idle deadline slides.
    until_redis_time(&redis, dropped_at + window + 10).await?;
    let touches = stat(&d, "session_touches");
    let asked = redis_now_ms(&redis).await?;
    let s = c
        .session_get_raw(&created.token, true)
        .await?
        .context("valid")?;
    assert!(
        s.expires_at_ms >= asked + idle_ms,
        "the idle deadline did not slide: expires at {}, asked at {asked}",
        s.expires_at_ms
    );
    assert_eq!(stat(&d, "session_touches"), touches + 1);
    Ok(())
}

/// How many sessions the big-user test gives one user (issue 13 §3).
const BIG_USER_SESSIONS: usize = 100_000;

/// Every EVAL/EVALSHA in Redis's slow log with its number of KEYS.
async fn scripts_in_slowlog(
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<Vec<(String, usize)>> {
    let log: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query_async(conn)
        .await?;
    let mut out = Vec::new();
    for entry in log {
        let redis::Value::Array(fields) = entry else {
            bail!("slowlog entry is not an array");
        };
        let Some(redis::Value::Array(args)) = fields.get(3) else {
            bail!("slowlog entry without arguments");
        };
        let text = |v: &redis::Value| match v {
            redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            redis::Value::SimpleString(s) => s.clone(),
            other => format!("{other:?}"),
        };
        let name = args.first().map(text).unwrap_or_default().to_uppercase();
        if name == "EVAL" || name == "EVALSHA" {
            let keys: usize = args.get(2).map(text).unwrap_or_default().parse()?;
            out.push((name, keys));
        }
    }
    Ok(out)
}

#[tokio::test]
async fn a_user_with_100k_sessions_is_listed_and_revoked_in_bounded_calls() -> Result<()> {
    let f = fleet(1).await?;
    let user = "whale";
    // Three sessions through the op (their tokens are known) ...
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let t = f.c[0]
            .session_create_raw(user, b"w".to_vec(), SessionOptions::default())
            .await?
            .token;
        tokens.push(t);
    }
    // ... and 100k written straight to Redis in the layout session_create.lua uses
    // (hash under shoal:s:<member>, member in shoal:su:<user> scored by its
    // absolute expiry, epoch 0).
    let now = redis_now_ms(&f.redis).await?;
    let abs_at = now + 3_600_000;
    let mut conn = f.redis.conn().await?;
    let started = Instant::now();
    for chunk in (0..BIG_USER_SESSIONS).collect::<Vec<_>>().chunks(10_000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            let member = format!("bulk{i:06}");
            pipe.cmd("HSET")
                .arg(format!("shoal:s:{member}"))
                .arg(&[
                    ("u", user.to_string()),
                    ("d", String::new()),
                    ("c", now.to_string()),
                    ("s", now.to_string()),
                    ("i", "3600000".to_string()),
                    ("a", abs_at.to_string()),
                    ("e", "0".to_string()),
                ])
                .ignore()
                .cmd("PEXPIREAT")
                .arg(format!("shoal:s:{member}"))
                .arg(abs_at)
                .ignore()
                .cmd("ZADD")
                .arg(format!("shoal:su:{user}"))
                .arg(abs_at)
                .arg(&member)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
    }
    println!(
        "{BIG_USER_SESSIONS} sessions written in {:?}",
        started.elapsed()
    );
    // From here on, every command that takes 100 µs or more lands in the slow log
    // with its arguments: every script call naming hundreds of keys does (a page
    // of 500 takes milliseconds), the commands a script runs inside (Redis 7
    // logs those too) mostly do not.
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(100)
        .arg("slowlog-max-len")
        .arg(100_000)
        .query_async::<()>(&mut conn)
        .await?;
    redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async::<()>(&mut conn)
        .await?;

    let t = Instant::now();
    let listed = f.c[0].session_list(user).await?;
    println!(
        "session.list of {} entries in {:?}",
        listed.len(),
        t.elapsed()
    );
    assert_eq!(listed.len(), 1000, "session.list is capped at 1000 entries");
    let t = Instant::now();
    let revoked = f.c[0].session_revoke_user(user).await?;
    let took = t.elapsed();
    println!("revoke_user of {revoked} sessions in {took:?}");
    assert_eq!(revoked, BIG_USER_SESSIONS as u64 + 3);

    let scripts = scripts_in_slowlog(&mut conn).await?;
    let most = scripts.iter().map(|(_, k)| *k).max().unwrap_or(0);
    let pages = scripts.iter().filter(|(_, k)| *k > 400).count();
    println!(
        "{} slow script calls ({pages} with over 400 KEYS), at most {most} KEYS in one",
        scripts.len()
    );
    assert!(
        pages >= BIG_USER_SESSIONS / 500 / 2,
        "the slow log saw the page calls"
    );
    assert!(
        most <= 501,
        "one script call named {most} keys (a page is at most 500 members + the index)"
    );

    for t in &tokens {
        assert!(!valid(&f.c[0], t).await?, "a revoked session is refused");
    }
    let index: bool = redis::cmd("EXISTS")
        .arg(format!("shoal:su:{user}"))
        .query_async(&mut conn)
        .await?;
    assert!(!index, "the user index is emptied");
    let mut left = 0usize;
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("shoal:s:*")
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut conn)
            .await?;
        left += keys.len();
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    assert_eq!(left, 0, "every session hash is deleted");
    assert!(f.c[0].session_list(user).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn revoke_user_pages_keep_sessions_newer_than_the_new_epoch() -> Result<()> {
    let f = fleet(1).await?;
    let user = "otto";
    let now = redis_now_ms(&f.redis).await?;
    let mut conn = f.redis.conn().await?;
    // 1000 sessions recorded before the revocation (epoch 0) and 700 that carry an
    // epoch far ahead, as a session created while the pages are being deleted
    // would: those rank first in the index (latest expiry), more than a page.
    let mut pipe = redis::pipe();
    for (i, (epoch, abs_at)) in (0..1000)
        .map(|_| (0, now + 3_600_000))
        .chain((0..700).map(|_| (now + 1_000_000_000, now + 7_200_000)))
        .enumerate()
    {
        let member = format!("m{i:04}");
        pipe.cmd("HSET")
            .arg(format!("shoal:s:{member}"))
            .arg(&[
                ("u", user.to_string()),
                ("d", String::new()),
                ("c", now.to_string()),
                ("s", now.to_string()),
                ("i", "3600000".to_string()),
                ("a", abs_at.to_string()),
                ("e", epoch.to_string()),
            ])
            .ignore()
            .cmd("ZADD")
            .arg(format!("shoal:su:{user}"))
            .arg(abs_at)
            .arg(&member)
            .ignore();
    }
    pipe.query_async::<()>(&mut conn).await?;
    assert_eq!(f.c[0].session_revoke_user(user).await?, 1000);
    let left: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("shoal:su:{user}"))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await?;
    assert_eq!(left.len(), 700, "the newer sessions keep their members");
    assert!(left.iter().all(|m| m.as_str() >= "m1000"), "{left:?}");
    let old: bool = redis::cmd("EXISTS")
        .arg("shoal:s:m0000")
        .query_async(&mut conn)
        .await?;
    assert!(!old);
    let kept: bool = redis::cmd("EXISTS")
        .arg("shoal:s:m1000")
        .query_async(&mut conn)
        .await?;
    assert!(kept);
    assert_eq!(f.c[0].session_list(user).await?.len(), 700);
    Ok(())
}
