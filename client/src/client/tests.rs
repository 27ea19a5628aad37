//! Client tests against an in-process fake daemon on a tempdir Unix socket.
//!
//! The fake speaks the real framing and request parser from `proto`, so these
//! tests pin the client's connection handling (id matching under pipelining,
//! timeouts, disconnects, reconnect backoff, connection-level errors) and the
//! `get_or_load` lease protocol without Redis or the daemon. The fake offers no
//! shared-memory L1, so the clients here do not ask for it (`shm(false)`): each
//! test counts the connections it sees.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use super::*;
use crate::proto::{
    encode_err, encode_ok, parse_request, ErrorCode, FrameCodec, Limits, RatelimitDecision,
    Request, Source,
};
use crate::LoadError;

/// One accepted connection, seen from the fake daemon's side.
struct Peer {
    stream: UnixStream,
    buf: BytesMut,
    codec: FrameCodec,
    max_frame: usize,
}

impl Peer {
    async fn recv(&mut self) -> Option<Request> {
        loop {
            if let Some(body) = self.codec.decode_frame(&mut self.buf).unwrap() {
                return Some(parse_request(&body, &Limits::default()).unwrap());
            }
            if self.stream.read_buf(&mut self.buf).await.ok()? == 0 {
                return None;
            }
        }
    }

    async fn send(&mut self, frame: &[u8]) {
        let _ = self.stream.write_all(frame).await;
    }

    async fn ok<T: Serialize + ?Sized>(&mut self, id: u64, result: &T) {
        let frame = encode_ok(id, result, self.max_frame);
        self.send(&frame).await;
    }

    async fn handshake(&mut self) -> bool {
        let Some(req) = self.recv().await else {
            return false;
        };
        assert_eq!(req.id, 0);
        let Op::Hello { version, client } = req.op else {
            panic!("first request is not hello: {:?}", req.op);
        };
        assert_eq!(version, 1);
        assert!(client.unwrap().starts_with("shoal-client-rust/"));
        let hello = HelloResult {
            version: 1,
            server: "fake/0".into(),
            node: "node-a".into(),
            max_frame: self.max_frame as u64,
        };
        self.ok(0, &hello).await;
        true
    }

    /// Answers the ops the simple tests use; returns false at EOF.
    async fn serve_one(&mut self) -> bool {
        let Some(req) = self.recv().await else {
            return false;
        };
        self.answer_simple(req).await;
        true
    }

    async fn answer_simple(&mut self, req: Request) {
        match req.op {
            Op::Ping => self.ok(req.id, "pong").await,
            Op::CacheGet { key, .. } => {
                let r = GetResult {
                    hit: true,
                    value: Some(Bytes::from(key.into_bytes())),
                    from: Some(Source::L1),
                    ..GetResult::default()
                };
                self.ok(req.id, &r).await;
            }
            other => panic!("unexpected op {other:?}"),
        }
    }
}

/// A fake daemon: `handler(connection index, peer)` runs per accepted connection.
struct Fake {
    path: PathBuf,
    accepts: Arc<AtomicUsize>,
    task: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn fake<F, Fut>(max_frame: usize, handler: F) -> Fake
where
    F: Fn(usize, Peer) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shoal.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepts);
    let task = tokio::spawn(async move {
        // Owned by this task, so aborting it (dropping the `Fake`) hangs up on
        // every open connection too.
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let idx = counter.fetch_add(1, Ordering::SeqCst);
            let peer = Peer {
                stream,
                buf: BytesMut::new(),
                codec: FrameCodec::new(max_frame),
                max_frame,
            };
            conns.spawn(handler(idx, peer));
        }
    });
    Fake {
        path,
        accepts,
        task,
        _dir: dir,
    }
}

/// A well-behaved fake: handshake, then answer ping and cache.get.
fn simple_server() -> Fake {
    fake(1 << 20, |_, mut peer| async move {
        if peer.handshake().await {
            while peer.serve_one().await {}
        }
    })
}

#[tokio::test]
async fn connect_does_the_handshake() {
    let srv = simple_server();
    let client = Client::builder(&srv.path)
        .shm(false)
        .connect()
        .await
        .unwrap();
    let info = client.server_info();
    assert_eq!(info.node, "node-a");
    assert_eq!(info.max_frame, 1 << 20);
    client.ping().await.unwrap();
    assert!(format!("{client:?}").contains("node-a"));
}

#[tokio::test]
async fn connect_fails_when_no_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let err = Client::connect(dir.path().join("missing.sock"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect(_)), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn pipelined_responses_are_matched_by_id() {
    const N: usize = 64;
    let srv = fake(1 << 20, |_, mut peer| async move {
        if !peer.handshake().await {
            return;
        }
        loop {
            let mut batch = Vec::with_capacity(N);
            while batch.len() < N {
                match peer.recv().await {
                    Some(r) => batch.push(r),
                    None => return,
                }
            }
            // Answer in an order unrelated to the requests'.
            batch.shuffle(&mut rand::rng());
            batch.reverse();
            for req in batch {
                peer.answer_simple(req).await;
            }
        }
    });
    let client = Client::builder(&srv.path)
        .shm(false)
        .connect()
        .await
        .unwrap();
    let calls = (0..N).map(|i| {
        let client = client.clone();
        async move {
            let key = format!("key-{i}");
            let v = client.get_raw(&key).await.unwrap();
            assert_eq!(v.as_deref(), Some(key.as_bytes()));
        }
    });
    futures::future::join_all(calls).await;
    assert_eq!(client.pending_len(), 0);
    assert_eq!(srv.accepts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn timeout_removes_the_pending_entry_and_late_replies_are_dropped() {
    let srv = fake(1 << 20, |_, mut peer| async move {
        if !peer.handshake().await {
            return;
        }
        let mut late = None;
        while let Some(req) = peer.recv().await {
            if matches!(&req.op, Op::CacheGet { key, .. } if key == "slow") {
                late = Some(req);
                continue;
            }
            // Answer the abandoned call first: the client must discard it.
            if let Some(late) = late.take() {
                peer.answer_simple(late).await;
            }
            peer.answer_simple(req).await;
        }
    });
    let client = Client::builder(&srv.path)
        .shm(false)
        .timeout(Duration::from_millis(50))
        .connect()
        .await
        .unwrap();
    let err = client.get_raw("slow").await.unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(client.pending_len(), 0);
    let v = client.get_raw("fast").await.unwrap();
    assert_eq!(v.as_deref(), Some(&b"fast"[..]));
    assert_eq!(client.pending_len(), 0);
    assert_eq!(srv.accepts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn disconnect_fails_pending_calls_and_the_next_call_reconnects() {
    let srv = fake(1 << 20, |idx, mut peer| async move {
        if !peer.handshake().await {
            return;
        }
        if idx == 0 {
            // Take three requests, answer none, hang up.
            for _ in 0..3 {
                peer.recv().await;
            }
            return;
        }
        while peer.serve_one().await {}
    });
    let client = Client::builder(&srv.path)
        .shm(false)
        .connect()
        .await
        .unwrap();
    let results = futures::future::join_all((0..3).map(|_| client.ping())).await;
    for r in results {
        let err = r.unwrap_err();
        assert!(matches!(err, Error::ConnectionLost), "{err:?}");
        assert!(err.is_retryable());
    }
    client.ping().await.unwrap();
    assert_eq!(srv.accepts.load(Ordering::SeqCst), 2);
    assert_eq!(client.server_info().node, "node-a");
}

#[tokio::test]
async fn an_id_zero_error_fails_every_pending_call() {
    let srv = fake(1 << 20, |idx, mut peer| async move {
        if !peer.handshake().await {
            return;
        }
        if idx == 0 {
            peer.recv().await;
            peer.recv().await;
            peer.send(&encode_err(0, ErrorCode::FrameTooLarge, "frame too large"))
                .await;
            return;
        }
        while peer.serve_one().await {}
    });
    let client = Client::builder(&srv.path)
        .shm(false)
        .connect()
        .await
        .unwrap();
    let (a, b) = tokio::join!(client.ping(), client.get_raw("k"));
    for err in [a.unwrap_err(), b.unwrap_err()] {
        assert_eq!(err.code(), Some(ErrorCode::FrameTooLarge), "{err:?}");
        assert!(!err.is_retryable());
    }
    client.ping().await.unwrap();
    assert_eq!(srv.accepts.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn requests_above_max_frame_are_refused_before_sending() {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    let srv = fake(1024, move |_, mut peer| {
        let counter = Arc::clone(&counter);
        async move {
            if !peer.handshake().await {
                return;
            }
            while let Some(req) = peer.recv().await {
                counter.fetch_add(1, Ordering::SeqCst);
                peer.answer_simple(req).await;
            }
        }
    });
    let client = Client::builder(&srv.path)
        .shm(false)
        .connect()
        .await
        .unwrap();
    let err = client
        .set_raw("k", vec![0u8; 2000], None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge { max: 1024, .. }), "{err:?}");
    assert!(!err.is_retryable());
    client.ping().await.unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    assert_eq!(srv.accepts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn reconnects_share_one_attempt_and_back_off() {
    // The first connection works until its first request; every later one is
    // dropped before the handshake, so each reconnect attempt fails.
    let srv = fake(1 << 20, |idx, mut peer| async move {
        if idx == 0 && peer.handshake().await {
            peer.recv().await;
        }
    });
    let client = Client::builder(&srv.path)
        .shm(false)
        .reconnect_backoff(Duration::from_millis(200), Duration::from_secs(2))
        .connect()
        .await
        .unwrap();
    assert!(matches!(client.ping().await, Err(Error::ConnectionLost)));

    // A burst of callers makes a single attempt and all get its error.
    let results = futures::future::join_all((0..32).map(|_| client.ping())).await;
    for r in results {
        let err = r.unwrap_err();
        assert!(matches!(err, Error::Connect(_)), "{err:?}");
        assert!(err.is_retryable());
    }
    assert_eq!(srv.accepts.load(Ordering::SeqCst), 2);

    // Within the backoff window (at least 100 ms with jitter) calls fail at once
    // without touching the socket.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(50) {
        assert!(client.ping().await.unwrap_err().is_retryable());
        tokio::task::yield_now().await;
    }
    assert_eq!(srv.accepts.load(Ordering::SeqCst), 2);

    // After it, the next call tries again.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(client.ping().await.is_err());
    assert_eq!(srv.accepts.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn dropping_the_last_clone_closes_the_connection() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let srv = fake(1 << 20, move |_, mut peer| {
        let tx = Arc::clone(&tx);
        async move {
            if !peer.handshake().await {
                return;
            }
            while peer.serve_one().await {}
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
        }
    });
    let client = Client::builder(&srv.path)
        .shm(false)
        .connect()
        .await
        .unwrap();
    let clone = client.clone();
    clone.ping().await.unwrap();
    drop(client);
    clone.ping().await.unwrap();
    drop(clone);
    tokio::time::timeout(Duration::from_secs(2), rx)
        .await
        .expect("the daemon should see EOF once the client is dropped")
        .unwrap();
}

#[tokio::test]
async fn close_fails_in_flight_and_later_calls() {
    let srv = fake(1 << 20, |_, mut peer| async move {
        if !peer.handshake().await {
            return;
        }
        // Never answer.
        while peer.recv().await.is_some() {}
    });
    let client = Client::builder(&srv.path)
        .shm(false)
        .connect()
        .await
        .unwrap();
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { client.ping().await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    client.close();
    let err = in_flight.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Closed), "{err:?}");
    assert!(matches!(client.ping().await, Err(Error::Closed)));
}

// ---- a fake cache with leases, for the typed API and get_or_load ----

#[derive(Default)]
struct CacheState {
    values: HashMap<String, Bytes>,
    /// key -> lease token currently held
    leases: HashMap<String, String>,
    next_lease: u64,
    sets: usize,
    /// Every cache.get answers with this error instead, when set.
    fail_gets: Option<ErrorCode>,
    /// Every miss answers `wait_ms` instead of granting a lease, when set.
    never_grant: bool,
}

fn cache_server(state: Arc<Mutex<CacheState>>) -> Fake {
    fake(1 << 20, move |_, mut peer| {
        let state = Arc::clone(&state);
        async move {
            if !peer.handshake().await {
                return;
            }
            while let Some(req) = peer.recv().await {
                let frame = answer_cache(&mut state.lock().unwrap(), req);
                peer.send(&frame).await;
            }
        }
    })
}

fn cache_get(st: &mut CacheState, key: &str, lease: bool) -> GetResult {
    if let Some(v) = st.values.get(key) {
        return GetResult {
            hit: true,
            value: Some(v.clone()),
            from: Some(Source::L2),
            ttl_ms: Some(1000),
            ..GetResult::default()
        };
    }
    if !lease {
        return GetResult::default();
    }
    if st.never_grant || st.leases.contains_key(key) {
        return GetResult {
            wait_ms: Some(10),
            ..GetResult::default()
        };
    }
    st.next_lease += 1;
    let token = format!("lease-{}", st.next_lease);
    st.leases.insert(key.to_owned(), token.clone());
    GetResult {
        lease: Some(token),
        ..GetResult::default()
    }
}

fn answer_cache(st: &mut CacheState, req: Request) -> Vec<u8> {
    let max = 1 << 20;
    match req.op {
        Op::CacheGet { key, lease } => match st.fail_gets {
            Some(code) => encode_err(req.id, code, "injected"),
            None => encode_ok(req.id, &cache_get(st, &key, lease), max),
        },
        Op::CacheMget { keys } => {
            let rs: Vec<GetResult> = keys.iter().map(|k| cache_get(st, k, false)).collect();
            encode_ok(req.id, &rs, max)
        }
        Op::CacheSet {
            key,
            value,
            ttl_ms,
            lease,
            ..
        } => {
            assert_eq!(ttl_ms, Some(60_000));
            let stored = match lease {
                Some(tok) => st.leases.get(&key) == Some(&tok),
                None => true,
            };
            if stored {
                st.leases.remove(&key);
                st.values.insert(key, value);
                st.sets += 1;
            }
            encode_ok(req.id, &SetResult { stored }, max)
        }
        Op::RatelimitCheck { cost, .. } => {
            let d = RatelimitDecision {
                allowed: cost <= 5,
                limit: 5,
                remaining: 5u64.saturating_sub(cost),
                reset_after_ms: 1000,
                retry_after_ms: 0,
            };
            encode_ok(req.id, &d, max)
        }
        Op::Stats => {
            let m: std::collections::BTreeMap<&str, u64> = [("hits", 3)].into();
            encode_ok(req.id, &m, max)
        }
        other => encode_err(req.id, ErrorCode::UnknownOp, other.name()),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    name: String,
    admin: bool,
}

fn alice() -> User {
    User {
        name: "alice".into(),
        admin: true,
    }
}

const TTL: Option<Duration> = Some(Duration::from_secs(60));

#[tokio::test]
async fn typed_values_roundtrip() {
    let state = Arc::new(Mutex::new(CacheState::default()));
    let srv = cache_server(Arc::clone(&state));
    let client = Client::builder(&srv.path)
        .shm(false)
        .connect()
        .await
        .unwrap();

    client.set("user:1", &alice(), TTL).await.unwrap();
    assert_eq!(client.get::<User>("user:1").await.unwrap(), Some(alice()));
    assert_eq!(client.get::<User>("user:2").await.unwrap(), None);
    let many: Vec<Option<User>> = client.mget(["user:2", "user:1"]).await.unwrap();
    assert_eq!(many, vec![None, Some(alice())]);
    assert!(client
        .mget::<User, _>(Vec::<String>::new())
        .await
        .unwrap()
        .is_empty());

    // The wrong type is a codec error, not a miss.
    let err = client.get::<u64>("user:1").await.unwrap_err();
    assert!(matches!(err, Error::Codec(_)), "{err:?}");
    assert!(!err.is_retryable());

    // Ops without a dedicated method go through `call`.
    let d: RatelimitDecision = client
        .call(Op::RatelimitCheck {
            policy: "p".into(),
            key: "k".into(),
            cost: 2,
        })
        .await
        .unwrap();
    assert!(d.allowed);
    assert_eq!(d.remaining, 3);
    let stats = client.stats().await.unwrap();
    let hits = stats
        .as_map()
        .unwrap()
        .iter()
        .find(|(k, _)| k.as_str() == Some("hits"))
        .and_then(|(_, v)| v.as_u64());
    assert_eq!(hits, Some(3));
    let err = client
        .call::<rmpv::Value>(Op::SessionList { user: "u".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownOp));
}

#[tokio::test]
async fn get_or_load_runs_one_loader_for_the_whole_fleet() {
    let state = Arc::new(Mutex::new(CacheState::default()));
    let srv = cache_server(Arc::clone(&state));
    // Three "processes", each with its own connection, eight callers each.
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(
            Client::builder(&srv.path)
                .shm(false)
                .connect()
                .await
                .unwrap(),
        );
    }
    let loads = Arc::new(AtomicUsize::new(0));
    let calls = clients
        .iter()
        .flat_map(|c| std::iter::repeat_n(c, 8))
        .map(|client| {
            let loads = Arc::clone(&loads);
            async move {
                client
                    .get_or_load("user:1", TTL, || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        Ok::<_, std::io::Error>(alice())
                    })
                    .await
                    .unwrap()
            }
        });
    let users = futures::future::join_all(calls).await;
    assert_eq!(users.len(), 24);
    assert!(users.iter().all(|u| *u == alice()));
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert_eq!(state.lock().unwrap().sets, 1);

    // Now a plain hit: the loader is not called.
    let u: User = clients[0]
        .get_or_load("user:1", TTL, || async { Err::<User, _>("must not load") })
        .await
        .unwrap();
    assert_eq!(u, alice());
}

#[tokio::test]
async fn get_or_load_returns_the_value_when_the_fill_is_refused() {
    let state = Arc::new(Mutex::new(CacheState::default()));
    let srv = cache_server(Arc::clone(&state));
    let client = Client::builder(&srv.path)
        .shm(false)
        .connect()
        .await
        .unwrap();
    let st = Arc::clone(&state);
    let u: User = client
        .get_or_load("user:1", TTL, || async move {
            // An invalidation while loading cancels the lease.
            st.lock().unwrap().leases.clear();
            Ok::<_, std::io::Error>(alice())
        })
        .await
        .unwrap();
    assert_eq!(u, alice());
    assert_eq!(state.lock().unwrap().sets, 0);
}

#[tokio::test]
async fn get_or_load_degrades_to_the_loader_on_retryable_errors() {
    let state = Arc::new(Mutex::new(CacheState {
        fail_gets: Some(ErrorCode::Unavailable),
        ..CacheState::default()
    }));
    let srv = cache_server(Arc::clone(&state));
    let client = Client::builder(&srv.path)
        .shm(false)
        .connect()
        .await
        .unwrap();
    let u: User = client
        .get_or_load("user:1", TTL, || async { Ok::<_, std::io::Error>(alice()) })
        .await
        .unwrap();
    assert_eq!(u, alice());

    // The loader's own failure is reported as such.
    let err = client
        .get_or_load::<User, _, _, _>("user:1", TTL, || async { Err("db down") })
        .await
        .unwrap_err();
    assert!(matches!(err, LoadError::Load("db down")));

    // A non-retryable cache error is not hidden.
    state.lock().unwrap().fail_gets = Some(ErrorCode::BadRequest);
    let err = client
        .get_or_load("user:1", TTL, || async { Ok::<_, std::io::Error>(alice()) })
        .await
        .unwrap_err();
    assert!(matches!(&err, LoadError::Cache(e) if e.code() == Some(ErrorCode::BadRequest)));

    // With the daemon gone entirely, too.
    drop(srv);
    let u: User = client
        .get_or_load("user:1", TTL, || async { Ok::<_, std::io::Error>(alice()) })
        .await
        .unwrap();
    assert_eq!(u, alice());
}

#[tokio::test]
async fn get_or_load_stops_waiting_after_lease_wait_max() {
    let state = Arc::new(Mutex::new(CacheState {
        never_grant: true,
        ..CacheState::default()
    }));
    let srv = cache_server(Arc::clone(&state));
    let client = Client::builder(&srv.path)
        .shm(false)
        .lease_wait_max(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let start = Instant::now();
    let u: User = client
        .get_or_load("user:1", TTL, || async { Ok::<_, std::io::Error>(alice()) })
        .await
        .unwrap();
    let waited = start.elapsed();
    assert_eq!(u, alice());
    assert!(waited >= Duration::from_millis(100), "{waited:?}");
    assert!(waited < Duration::from_secs(1), "{waited:?}");
    // Not stored: the lease holder will fill it.
    assert_eq!(state.lock().unwrap().sets, 0);
}

#[test]
fn durations_round_up_to_whole_milliseconds() {
    assert_eq!(duration_ms(Duration::ZERO), 0);
    assert_eq!(duration_ms(Duration::from_nanos(1)), 1);
    assert_eq!(duration_ms(Duration::from_micros(999)), 1);
    assert_eq!(duration_ms(Duration::from_millis(1)), 1);
    assert_eq!(duration_ms(Duration::from_micros(1500)), 2);
    assert_eq!(duration_ms(Duration::from_secs(60)), 60_000);
    assert_eq!(duration_ms(Duration::MAX), u64::MAX);
}

#[test]
fn backoff_doubles_within_bounds() {
    let config = ClientConfig::new("/unused");
    for failures in 1..40 {
        let d = backoff(&config, failures);
        let base = Duration::from_millis(10)
            .saturating_mul(1 << (failures - 1).min(20))
            .min(Duration::from_secs(1));
        assert!(d >= base / 2 && d <= base, "{failures}: {d:?}");
    }
}

#[test]
fn client_and_its_futures_can_cross_threads() {
    fn send_sync<T: Send + Sync + 'static>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let client: Option<Client> = None;
    if let Some(client) = &client {
        send_sync(client);
        send(&client.get_raw("k"));
        send(&client.get_or_load("k", None, || async { Ok::<u32, std::io::Error>(1) }));
    }
}

// ---- Cancellation (issue 12, hole 7): a caller dropped at any point of a call
// never strands, corrupts or reorders other callers' frames. ----

/// A peer that, after the handshake, takes in the first `gate` bytes (proof that
/// a write has started), reports it, then reads nothing until `go`: the client's
/// socket buffer stays full, so its writes block mid-frame. Afterwards it decodes
/// every frame (a torn frame fails the decode), records `op key value-length`,
/// and answers.
struct Gated {
    srv: Fake,
    started: Arc<tokio::sync::Notify>,
    go: Arc<tokio::sync::Notify>,
    seen: Arc<Mutex<Vec<String>>>,
}

fn gated_server(gate: usize) -> Gated {
    let started = Arc::new(tokio::sync::Notify::new());
    let go = Arc::new(tokio::sync::Notify::new());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (s, g, r) = (Arc::clone(&started), Arc::clone(&go), Arc::clone(&seen));
    let srv = fake(8 << 20, move |_, mut peer| {
        let (started, go, seen) = (Arc::clone(&s), Arc::clone(&g), Arc::clone(&r));
        async move {
            if !peer.handshake().await {
                return;
            }
            while peer.buf.len() < gate {
                if peer.stream.read_buf(&mut peer.buf).await.unwrap_or(0) == 0 {
                    return;
                }
            }
            started.notify_one();
            go.notified().await;
            while let Some(req) = peer.recv().await {
                let line = match &req.op {
                    Op::CacheSet { key, value, .. } if value.len() > 64 => {
                        format!("set {key} <{}>", value.len())
                    }
                    Op::CacheSet { key, value, .. } => {
                        format!("set {key} {}", String::from_utf8_lossy(value))
                    }
                    Op::Ping => "ping".to_owned(),
                    Op::CacheGet { key, .. } => format!("get {key}"),
                    other => panic!("unexpected op {other:?}"),
                };
                seen.lock().unwrap().push(line);
                let frame = match req.op {
                    Op::CacheSet { .. } => {
                        encode_ok(req.id, &SetResult { stored: true }, peer.max_frame)
                    }
                    Op::Ping => encode_ok(req.id, "pong", peer.max_frame),
                    Op::CacheGet { key, .. } => {
                        let r = GetResult {
                            hit: true,
                            value: Some(Bytes::from(key.into_bytes())),
                            from: Some(Source::L1),
                            ..GetResult::default()
                        };
                        encode_ok(req.id, &r, peer.max_frame)
                    }
                    _ => unreachable!(),
                };
                peer.send(&frame).await;
            }
        }
    });
    Gated {
        srv,
        started,
        go,
        seen,
    }
}

/// Far above any Unix socket send buffer: its write cannot finish while the peer
/// does not read.
const BIG: usize = 4 << 20;

/// Polls (nothing to await) until the connection has `n` calls registered.
async fn wait_pending(client: &Client, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.pending_len() != n {
        assert!(
            Instant::now() < deadline,
            "pending calls stuck at {} (want {n})",
            client.pending_len()
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_dropped_mid_write_does_not_fail_the_others() {
    let g = gated_server(64 * 1024);
    let client = Client::builder(&g.srv.path)
        .shm(false)
        .connect()
        .await
        .unwrap();
    // A's 4 MiB frame is partly on the wire when A is dropped (a per-call
    // timeout or a dropped HTTP handler future drop it the same way).
    let a = tokio::spawn({
        let c = client.clone();
        async move { c.set_raw("big", vec![7u8; BIG], None).await }
    });
    g.started.notified().await;
    let b = tokio::spawn({
        let c = client.clone();
        async move { c.ping().await }
    });
    let c2 = tokio::spawn({
        let c = client.clone();
        async move { c.set_raw("k", &b"after"[..], None).await }
    });
    wait_pending(&client, 3).await;
    a.abort();
    assert!(a.await.unwrap_err().is_cancelled());
    g.go.notify_one();
    b.await.unwrap().unwrap();
    c2.await.unwrap().unwrap();
    // One connection throughout, and on it A's frame completed, then the others.
    assert_eq!(g.srv.accepts.load(Ordering::SeqCst), 1);
    let seen = g.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[0], format!("set big <{BIG}>"));
    assert!(seen.contains(&"ping".to_owned()), "{seen:?}");
    assert!(seen.contains(&"set k after".to_owned()), "{seen:?}");
    assert_eq!(client.pending_len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_dropped_before_it_was_written_is_never_written() {
    let g = gated_server(64 * 1024);
    let client = Client::builder(&g.srv.path)
        .shm(false)
        .connect()
        .await
        .unwrap();
    let p = tokio::spawn({
        let c = client.clone();
        async move { c.set_raw("big", vec![7u8; BIG], None).await }
    });
    g.started.notified().await;
    // set(k, v1) queues behind the blocked write, and its caller gives up.
    let x = tokio::spawn({
        let c = client.clone();
        async move { c.set_raw("k", &b"v1"[..], None).await }
    });
    wait_pending(&client, 2).await;
    x.abort();
    assert!(x.await.unwrap_err().is_cancelled());
    wait_pending(&client, 1).await;
    // The same client then writes v2; v1 must not land after it (here: at all).
    let y = tokio::spawn({
        let c = client.clone();
        async move { c.set_raw("k", &b"v2"[..], None).await }
    });
    wait_pending(&client, 2).await;
    g.go.notify_one();
    p.await.unwrap().unwrap();
    y.await.unwrap().unwrap();
    let seen = g.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![format!("set big <{BIG}>"), "set k v2".to_owned()],
        "the abandoned set(k, v1) reached the server"
    );
    assert_eq!(g.srv.accepts.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_set_never_lands_after_a_later_set() {
    // The per-call timeout variant: set(k, v1) times out while queued behind a
    // blocked write; set(k, v2) follows from the same client.
    let g = gated_server(64 * 1024);
    let client = Client::builder(&g.srv.path)
        .shm(false)
        .timeout(Duration::from_millis(300))
        .connect()
        .await
        .unwrap();
    let p = tokio::spawn({
        let c = client.clone();
        async move { c.set_raw("big", vec![7u8; BIG], None).await }
    });
    g.started.notified().await;
    let err = client.set_raw("k", &b"v1"[..], None).await.unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err:?}");
    // The big write timed out too (same timeout), yet its frame is completed.
    assert!(matches!(p.await.unwrap(), Err(Error::Timeout)));
    let y = tokio::spawn({
        let c = client.clone();
        async move { c.set_raw("k", &b"v2"[..], None).await }
    });
    wait_pending(&client, 1).await;
    g.go.notify_one();
    y.await.unwrap().unwrap();
    let seen = g.seen.lock().unwrap().clone();
    let v1 = seen.iter().position(|s| s == "set k v1");
    let v2 = seen.iter().position(|s| s == "set k v2");
    assert!(v2.is_some(), "{seen:?}");
    assert!(
        v1.is_none_or(|v1| v1 < v2.unwrap()),
        "v1 after v2: {seen:?}"
    );
    assert_eq!(seen[0], format!("set big <{BIG}>"));
    assert_eq!(g.srv.accepts.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_cancelled_at_random_under_congestion_leave_the_stream_intact() {
    // A peer that reads in small sips (the client's writes keep blocking) and
    // answers every set with whether the value has the length its key names.
    // Callers give up at random moments; every call that is not dropped must get
    // its own answer, on the one connection.
    let srv = fake(1 << 20, |_, mut peer| async move {
        if !peer.handshake().await {
            return;
        }
        let mut sip = vec![0u8; 4096];
        loop {
            while let Some(body) = peer.codec.decode_frame(&mut peer.buf).unwrap() {
                let req = parse_request(&body, &Limits::default()).unwrap();
                let Op::CacheSet { key, value, .. } = req.op else {
                    peer.answer_simple(req).await;
                    continue;
                };
                let want: usize = key.rsplit('-').next().unwrap().parse().unwrap();
                let r = SetResult {
                    stored: value.len() == want,
                };
                peer.ok(req.id, &r).await;
            }
            match peer.stream.read(&mut sip).await {
                Ok(0) | Err(_) => return,
                Ok(n) => peer.buf.extend_from_slice(&sip[..n]),
            }
            tokio::task::yield_now().await;
        }
    });
    let client = Client::builder(&srv.path)
        .shm(false)
        .connect()
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for t in 0..32u64 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let (mut answered, mut dropped) = (0u32, 0u32);
            for i in 0..40u64 {
                // Values of up to 32 KiB, so frames straddle socket writes.
                let len = rand::random_range(1..32 * 1024);
                let key = format!("{t}-{i}-{len}");
                let give_up = Duration::from_micros(rand::random_range(0..3000));
                let call = c.set_with(&key, vec![1u8; len], SetOptions::default());
                match tokio::time::timeout(give_up, call).await {
                    Ok(r) => {
                        let stored = r.expect("a call that was not dropped failed");
                        assert!(stored, "{key}: the peer saw a different value length");
                        answered += 1;
                    }
                    Err(_) => dropped += 1,
                }
            }
            (answered, dropped)
        }));
    }
    let (mut answered, mut dropped) = (0, 0);
    for t in tasks {
        let (a, d) = t.await.unwrap();
        answered += a;
        dropped += d;
    }
    assert!(
        dropped > 0 && answered > 0,
        "{answered} answered, {dropped} dropped"
    );
    // Still the first connection, and still in step.
    assert_eq!(srv.accepts.load(Ordering::SeqCst), 1);
    assert_eq!(
        client.get_raw("last").await.unwrap().as_deref(),
        Some(&b"last"[..])
    );
    assert_eq!(client.pending_len(), 0);
}
