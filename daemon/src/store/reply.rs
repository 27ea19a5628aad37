//! Decoding the values Redis scripts reply with (positions, optional strings
//! and numbers), shared by the cache and log calls.

use redis::Value;

use crate::store::streamid::StreamId;

use super::StoreError;

pub(super) fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

pub(super) fn parse_pos(v: &Value) -> Result<StreamId, StoreError> {
    as_string(v)
        .and_then(|s| StreamId::parse(&s))
        .ok_or_else(|| StoreError::Redis(format!("expected a stream id, got {v:?}")))
}

pub(super) fn opt_string(v: Value) -> Result<Option<String>, StoreError> {
    match v {
        Value::Nil => Ok(None),
        other => as_string(&other)
            .map(Some)
            .ok_or_else(|| StoreError::Redis("expected a string".into())),
    }
}

pub(super) fn opt_u64(v: Value) -> Result<Option<u64>, StoreError> {
    match v {
        Value::Nil => Ok(None),
        Value::Int(i) => Ok(Some(i.max(0) as u64)),
        _ => Err(StoreError::Redis("expected an integer".into())),
    }
}
