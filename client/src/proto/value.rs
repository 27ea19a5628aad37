//! Typed cache values: serde types stored as MessagePack `bin` payloads.
//!
//! The daemon never looks inside values; only clients that use the typed API do.
//! Named-field encoding keeps values readable by the Python and Node clients.

use serde::{de::DeserializeOwned, Serialize};

use super::ProtoError;

/// Encodes a serde value as the bytes of a cache value.
pub fn to_value<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, ProtoError> {
    rmp_serde::to_vec_named(v).map_err(|e| ProtoError::Encode(e.to_string()))
}

/// Decodes the bytes of a cache value into a serde value.
pub fn from_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtoError> {
    rmp_serde::from_slice(bytes).map_err(|e| ProtoError::Decode(e.to_string()))
}
