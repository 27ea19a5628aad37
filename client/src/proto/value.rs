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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    //! The exact bytes the typed API writes, pinned: the Python client's
    //! `tests/test_values.py` reads this same hex (`RUST_PROFILE_HEX`) and
    //! writes `PYTHON_PROFILE_HEX`, which Rust must read back.

    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Role {
        Admin,
        Member { since: u32 },
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Profile {
        name: String,
        age: u32,
        admin: bool,
        score: f64,
        tags: Vec<String>,
        nick: Option<String>,
        #[serde(with = "serde_bytes")]
        avatar: Vec<u8>,
        prefs: BTreeMap<String, i64>,
        pos: (i32, i32),
        role: Role,
        other: Role,
    }

    fn profile() -> Profile {
        Profile {
            name: "alice".into(),
            age: 31,
            admin: false,
            score: 1.5,
            tags: vec!["a".into(), "b".into()],
            nick: None,
            avatar: vec![0, 1, 255],
            prefs: BTreeMap::from([("dark".into(), 1), ("lang".into(), -2)]),
            pos: (-1, 2),
            role: Role::Admin,
            other: Role::Member { since: 2020 },
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// What `to_value` writes for `profile()`.
    const RUST_PROFILE_HEX: &str = "8ba46e616d65a5616c696365a36167651fa561646d696ec2a573636f7265cb3ff8000000000000a47461677392a161a162a46e69636bc0a6617661746172c4030001ffa5707265667382a46461726b01a46c616e67fea3706f7392ff02a4726f6c65a541646d696ea56f7468657281a64d656d62657281a573696e6365cd07e4";

    /// What Python's `shoal.pack` writes for the same data as a dict built in
    /// another key order, without `nick`, with `score` as the int 2 and `pos` as
    /// a tuple.
    const PYTHON_PROFILE_HEX: &str = "8aa4726f6c65a541646d696ea56f7468657281a64d656d62657281a573696e6365cd07e4a3706f7392ff02a5707265667382a46c616e67fea46461726b01a6617661746172c4030001ffa47461677392a161a162a573636f726502a561646d696ec2a36167651fa46e616d65a5616c696365";

    #[test]
    fn typed_values_are_named_field_messagepack() {
        let bytes = to_value(&profile()).unwrap();
        assert_eq!(hex(&bytes), RUST_PROFILE_HEX);
        assert_eq!(from_value::<Profile>(&bytes).unwrap(), profile());
    }

    #[test]
    fn python_written_values_read_as_rust_types() {
        // Maps are matched by name, a missing Option is None, an int reads as f64.
        let p: Profile = from_value(&unhex(PYTHON_PROFILE_HEX)).unwrap();
        assert_eq!(
            p,
            Profile {
                score: 2.0,
                ..profile()
            }
        );
    }
}
