//! The session scripts (`lua/session_*.lua`) and the parsing of their answers.
//!
//! Every script is called through [`Store::invoke_script`] (the ones that
//! change sessions through [`Store::invoke_durable`], which waits for replicas
//! under Sentinel), so it runs under the `redis.timeout` deadline and its
//! failures are classified like every other Redis call. Every key a script touches is passed in KEYS.

use bytes::Bytes;
use redis::{Script, Value};

use super::keys::SessionKeys;
use crate::store::streamid::StreamId;
use crate::store::{Store, StoreError};

/// A session as a script reported it, with Redis's clock at that moment.
#[derive(Debug, Clone)]
pub struct Record {
    pub pos: StreamId,
    pub now_ms: u64,
    pub user: String,
    pub data: Bytes,
    pub created_at_ms: u64,
    pub last_seen_ms: u64,
    pub idle_ms: u64,
    pub absolute_expires_at_ms: u64,
    pub epoch: u64,
    /// Whether this call refreshed the idle expiry.
    pub touched: bool,
}

/// One `session.list` row.
#[derive(Debug, Clone)]
pub struct Listed {
    pub hash: String,
    pub created_at_ms: u64,
    pub last_seen_ms: u64,
    pub expires_at_ms: u64,
}

/// What `session_rotate.lua` answered.
#[derive(Debug)]
pub enum Rotated {
    Done { id: StreamId, record: Record },
    NotFound,
    UserChanged,
    HashTaken,
}

/// What `session_get.lua` answered.
#[derive(Debug)]
pub enum Got {
    /// No such session (unknown, expired, revoked, or refused by its user's epoch).
    Missing,
    /// The session belongs to this user: call again naming it.
    AskUser(String),
    Found(Record),
}

/// What `session_update.lua` answered.
#[derive(Debug)]
pub enum Updated {
    Missing,
    AskUser(String),
    Done(StreamId),
}

/// The revocation stream as `XINFO STREAM` describes it (`None` when missing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    pub length: u64,
    pub first: Option<StreamId>,
    pub last_generated: StreamId,
    pub max_deleted: StreamId,
    pub entries_added: u64,
}

/// What `session_check.lua` answered.
#[derive(Debug, Clone)]
pub struct Check {
    pub epoch: String,
    /// The fleet hash key in Redis (`None`: absent, or configured locally).
    pub hash_key: Option<String>,
    pub stream: Option<StreamInfo>,
}

/// Values that several calls pass along.
#[derive(Debug, Clone)]
pub struct Context {
    pub keys: SessionKeys,
    pub log_len: u64,
    pub node: String,
    pub touch_fraction: String,
    pub epoch_keep_ms: u64,
}

#[derive(Debug)]
pub struct Scripts {
    create: Script,
    get: Script,
    update: Script,
    revoke: Script,
    rotate: Script,
    revoke_user: Script,
    revoke_page: Script,
    list: Script,
    hash_key: Script,
    check: Script,
}

fn bad_shape(script: &str) -> StoreError {
    StoreError::Redis(format!("{script} returned an unexpected shape"))
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => as_string(other).and_then(|s| s.parse().ok()),
    }
}

fn as_pos(v: &Value) -> Option<StreamId> {
    as_string(v).and_then(|s| StreamId::parse(&s))
}

fn as_bytes(v: Value) -> Option<Bytes> {
    match v {
        Value::BulkString(b) => Some(Bytes::from(b)),
        Value::SimpleString(s) => Some(Bytes::from(s.into_bytes())),
        _ => None,
    }
}

/// Parses `{ 1, pos, now, user, data, created, last_seen, idle, abs_at, epoch, touched }`.
fn record(v: Vec<Value>, script: &str) -> Result<Record, StoreError> {
    let [_, pos, now, user, data, created, seen, idle, abs, epoch, touched] =
        <[Value; 11]>::try_from(v).map_err(|_| bad_shape(script))?;
    let parsed = (|| {
        Some(Record {
            pos: as_pos(&pos)?,
            now_ms: as_u64(&now)?,
            user: as_string(&user)?,
            data: as_bytes(data)?,
            created_at_ms: as_u64(&created)?,
            last_seen_ms: as_u64(&seen)?,
            idle_ms: as_u64(&idle)?,
            absolute_expires_at_ms: as_u64(&abs)?,
            epoch: as_u64(&epoch)?,
            touched: as_u64(&touched)? == 1,
        })
    })();
    parsed.ok_or_else(|| bad_shape(script))
}

fn status(v: &[Value]) -> Option<i64> {
    match v.first() {
        Some(Value::Int(i)) => Some(*i),
        _ => None,
    }
}

fn parse_check(v: Vec<Value>) -> Option<Check> {
    let [epoch, key, exists, length, first, last_gen, max_del, added] =
        <[Value; 8]>::try_from(v).ok()?;
    let key = as_string(&key)?;
    let stream = match as_u64(&exists)? {
        0 => None,
        _ => {
            let first = as_string(&first)?;
            Some(StreamInfo {
                length: as_u64(&length)?,
                first: if first.is_empty() {
                    None
                } else {
                    Some(StreamId::parse(&first)?)
                },
                last_generated: as_pos(&last_gen)?,
                max_deleted: as_pos(&max_del)?,
                entries_added: as_u64(&added)?,
            })
        }
    };
    Some(Check {
        epoch: as_string(&epoch)?,
        hash_key: (!key.is_empty()).then_some(key),
        stream,
    })
}

impl Scripts {
    pub fn load() -> Scripts {
        Scripts {
            create: Script::new(include_str!("../../../lua/session_create.lua")),
            get: Script::new(include_str!("../../../lua/session_get.lua")),
            update: Script::new(include_str!("../../../lua/session_update.lua")),
            revoke: Script::new(include_str!("../../../lua/session_revoke.lua")),
            rotate: Script::new(include_str!("../../../lua/session_rotate.lua")),
            revoke_user: Script::new(include_str!("../../../lua/session_revoke_user.lua")),
            revoke_page: Script::new(include_str!("../../../lua/session_revoke_page.lua")),
            list: Script::new(include_str!("../../../lua/session_list.lua")),
            hash_key: Script::new(include_str!("../../../lua/session_hash_key.lua")),
            check: Script::new(include_str!("../../../lua/session_check.lua")),
        }
    }

    /// Creates a session under `hash`; `None` if that hash is taken.
    #[allow(clippy::too_many_arguments)]
    pub async fn create(
        &self,
        store: &Store,
        cx: &Context,
        hash: &str,
        user: &str,
        data: &[u8],
        idle_ms: u64,
        absolute_ms: u64,
    ) -> Result<Option<Record>, StoreError> {
        let mut inv = self.create.prepare_invoke();
        inv.key(cx.keys.session(hash))
            .key(cx.keys.index(user))
            .key(cx.keys.epoch(user))
            .key(cx.keys.stream())
            .arg(user)
            .arg(data)
            .arg(idle_ms)
            .arg(absolute_ms)
            .arg(hash);
        let v: Vec<Value> = store.invoke_durable(&inv).await?;
        match status(&v) {
            Some(0) => Ok(None),
            Some(1) => record(v, "session_create").map(Some),
            _ => Err(bad_shape("session_create")),
        }
    }

    /// Reads a session (refreshing its idle expiry when `touch` and due), with
    /// the stream position the read saw (in the record). `user` is who the
    /// caller believes owns it: without it (or with the wrong one) the script
    /// answers [`Got::AskUser`] and changes nothing.
    pub async fn get(
        &self,
        store: &Store,
        cx: &Context,
        hash: &str,
        touch: bool,
        user: Option<&str>,
    ) -> Result<Got, StoreError> {
        let mut inv = self.get.prepare_invoke();
        inv.key(cx.keys.session(hash)).key(cx.keys.stream());
        if let Some(u) = user {
            inv.key(cx.keys.epoch(u));
        }
        inv.arg(if touch { "1" } else { "0" })
            .arg(&cx.touch_fraction);
        if let Some(u) = user {
            inv.arg(u);
        }
        let v: Vec<Value> = store.invoke_script(&inv).await?;
        match status(&v) {
            Some(0) => Ok(Got::Missing),
            Some(-1) => v
                .get(2)
                .and_then(as_string)
                .map(Got::AskUser)
                .ok_or_else(|| bad_shape("session_get")),
            Some(1) => record(v, "session_get").map(Got::Found),
            _ => Err(bad_shape("session_get")),
        }
    }

    /// Replaces a session's data; the stream id of the change, if it existed.
    /// `user` as for [`Scripts::get`].
    pub async fn update(
        &self,
        store: &Store,
        cx: &Context,
        hash: &str,
        data: &[u8],
        user: Option<&str>,
    ) -> Result<Updated, StoreError> {
        let mut inv = self.update.prepare_invoke();
        inv.key(cx.keys.session(hash)).key(cx.keys.stream());
        if let Some(u) = user {
            inv.key(cx.keys.epoch(u));
        }
        inv.arg(data).arg(hash).arg(cx.log_len).arg(&cx.node);
        if let Some(u) = user {
            inv.arg(u);
        }
        let v: Vec<Value> = store.invoke_durable(&inv).await?;
        match (status(&v), v.get(1)) {
            (Some(0), _) => Ok(Updated::Missing),
            (Some(-1), Some(u)) => as_string(u)
                .map(Updated::AskUser)
                .ok_or_else(|| bad_shape("session_update")),
            (Some(1), Some(id)) => as_pos(id)
                .map(Updated::Done)
                .ok_or_else(|| bad_shape("session_update")),
            _ => Err(bad_shape("session_update")),
        }
    }

    /// Deletes a session; the stream id and its user, if it existed.
    pub async fn revoke(
        &self,
        store: &Store,
        cx: &Context,
        hash: &str,
    ) -> Result<Option<(StreamId, String)>, StoreError> {
        let mut inv = self.revoke.prepare_invoke();
        inv.key(cx.keys.session(hash))
            .key(cx.keys.stream())
            .arg(hash)
            .arg(cx.log_len)
            .arg(&cx.node);
        let v: Vec<Value> = store.invoke_durable(&inv).await?;
        match (status(&v), v.get(1), v.get(2)) {
            (Some(0), _, _) => Ok(None),
            (Some(1), Some(id), Some(user)) => match (as_pos(id), as_string(user)) {
                (Some(id), Some(user)) => Ok(Some((id, user))),
                _ => Err(bad_shape("session_revoke")),
            },
            _ => Err(bad_shape("session_revoke")),
        }
    }

    /// Moves the session `old` to `new`, for `user` (as read by the caller).
    pub async fn rotate(
        &self,
        store: &Store,
        cx: &Context,
        old: &str,
        new: &str,
        user: &str,
    ) -> Result<Rotated, StoreError> {
        let mut inv = self.rotate.prepare_invoke();
        inv.key(cx.keys.session(old))
            .key(cx.keys.session(new))
            .key(cx.keys.index(user))
            .key(cx.keys.stream())
            .key(cx.keys.epoch(user))
            .arg(user)
            .arg(old)
            .arg(new)
            .arg(cx.log_len)
            .arg(&cx.node);
        let v: Vec<Value> = store.invoke_durable(&inv).await?;
        match status(&v) {
            Some(0) => Ok(Rotated::NotFound),
            Some(-1) => Ok(Rotated::UserChanged),
            Some(-2) => Ok(Rotated::HashTaken),
            Some(1) => {
                let record = record(v, "session_rotate")?;
                Ok(Rotated::Done {
                    id: record.pos,
                    record,
                })
            }
            _ => Err(bad_shape("session_rotate")),
        }
    }

    /// Revokes every session of `user` by raising its epoch (one small call,
    /// whatever the number of sessions): the stream id and the new epoch.
    pub async fn revoke_user(
        &self,
        store: &Store,
        cx: &Context,
        user: &str,
    ) -> Result<(StreamId, u64), StoreError> {
        let mut inv = self.revoke_user.prepare_invoke();
        inv.key(cx.keys.epoch(user))
            .key(cx.keys.stream())
            .arg(user)
            .arg(cx.log_len)
            .arg(&cx.node)
            .arg(cx.epoch_keep_ms);
        let v: Vec<Value> = store.invoke_durable(&inv).await?;
        match v.as_slice() {
            [id, epoch] => match (as_pos(id), as_u64(epoch)) {
                (Some(id), Some(e)) => Ok((id, e)),
                _ => Err(bad_shape("session_revoke_user")),
            },
            _ => Err(bad_shape("session_revoke_user")),
        }
    }

    /// Deletes the sessions among `members` (one page of `user`'s index) that
    /// recorded an epoch below `epoch`: (deleted, members kept in the index).
    pub async fn revoke_page(
        &self,
        store: &Store,
        cx: &Context,
        user: &str,
        epoch: u64,
        members: &[String],
    ) -> Result<(u64, u64), StoreError> {
        let mut inv = self.revoke_page.prepare_invoke();
        inv.key(cx.keys.index(user));
        for m in members {
            inv.key(cx.keys.session(m));
        }
        inv.arg(epoch);
        for m in members {
            inv.arg(m);
        }
        let v: Vec<Value> = store.invoke_durable(&inv).await?;
        match v.as_slice() {
            [deleted, kept] => match (as_u64(deleted), as_u64(kept)) {
                (Some(d), Some(k)) => Ok((d, k)),
                _ => Err(bad_shape("session_revoke_page")),
            },
            _ => Err(bad_shape("session_revoke_page")),
        }
    }

    /// The live sessions among `members` (cleaning the index of dead ones).
    pub async fn list(
        &self,
        store: &Store,
        cx: &Context,
        user: &str,
        members: &[String],
    ) -> Result<Vec<Listed>, StoreError> {
        let mut inv = self.list.prepare_invoke();
        inv.key(cx.keys.index(user));
        for m in members {
            inv.key(cx.keys.session(m));
        }
        for m in members {
            inv.arg(m);
        }
        let v: Vec<Value> = store.invoke_script(&inv).await?;
        if v.len() % 4 != 0 {
            return Err(bad_shape("session_list"));
        }
        let mut out = Vec::with_capacity(v.len() / 4);
        for row in v.chunks_exact(4) {
            let parsed = (|| {
                Some(Listed {
                    hash: as_string(&row[0])?,
                    created_at_ms: as_u64(&row[1])?,
                    last_seen_ms: as_u64(&row[2])?,
                    expires_at_ms: as_u64(&row[3])?,
                })
            })();
            out.push(parsed.ok_or_else(|| bad_shape("session_list"))?);
        }
        Ok(out)
    }

    /// What the revocation reader verifies after each read (`session_check.lua`),
    /// on its own connection and within `limit`. `fleet_key`: `None` when the
    /// key is configured locally (Redis's is then left alone), else the key this
    /// daemon uses (`""` if none yet), put back only if Redis has none.
    pub async fn check(
        &self,
        conn: &mut crate::store::conn::Conn,
        cx: &Context,
        epoch_key: &str,
        fleet_key: Option<&str>,
        limit: std::time::Duration,
    ) -> Result<Check, String> {
        let mut inv = self.check.prepare_invoke();
        inv.key(epoch_key)
            .key(cx.keys.hash_key())
            .key(cx.keys.stream())
            .arg(crate::random::random_token(16))
            .arg(if fleet_key.is_some() { "1" } else { "0" })
            .arg(fleet_key.unwrap_or(""));
        let v: Vec<Value> = match tokio::time::timeout(limit, inv.invoke_async(conn)).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(format!("session_check: {e}")),
            Err(_) => return Err(format!("session_check: no answer within {limit:?}")),
        };
        parse_check(v).ok_or_else(|| "session_check returned an unexpected shape".to_string())
    }

    /// The fleet's token hash key kept in Redis (created if missing).
    pub async fn hash_key(&self, store: &Store, cx: &Context) -> Result<String, StoreError> {
        let mut inv = self.hash_key.prepare_invoke();
        inv.key(cx.keys.hash_key())
            .arg(crate::random::random_token(32));
        store.invoke_script(&inv).await
    }
}
