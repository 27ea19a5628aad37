//! The typed-value interop fixture: the exact bytes `to_value` (rmp-serde, named
//! fields) produces for a sample struct, recorded in
//! `node/test/fixtures/rmp-serde-profile.hex`. The Node client's tests check that
//! its MessagePack encoder produces the same bytes and decodes them to the same
//! value, so a value the Rust typed API writes is readable by Node and back. If
//! this test fails, rmp-serde's encoding changed and the other clients must be
//! checked before the fixture is regenerated (`SHOAL_WRITE_FIXTURE=1`).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Plan {
    Free,
    Team,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
    email: Option<String>,
    nickname: Option<String>,
    roles: Vec<String>,
    score: f64,
    active: bool,
    limits: BTreeMap<String, u32>,
    #[serde(with = "serde_bytes")]
    avatar: Vec<u8>,
    plan: Plan,
    created_at_ms: u64,
    offset: i32,
    pair: (String, u32),
}

fn sample() -> Profile {
    Profile {
        id: 42,
        name: "alice".into(),
        email: Some("alice@example.com".into()),
        nickname: None,
        roles: vec!["admin".into(), "ops".into()],
        score: 0.5,
        active: true,
        limits: BTreeMap::from([("api".to_string(), 100), ("burst".to_string(), 70000)]),
        avatar: vec![0, 1, 2, 255],
        plan: Plan::Team,
        created_at_ms: 1_700_000_000_123,
        offset: -7,
        pair: ("alice".into(), 31),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("fixture is hex"))
        .collect()
}

#[test]
fn rmp_serde_bytes_match_the_recorded_fixture() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../node/test/fixtures/rmp-serde-profile.hex"
    );
    let encoded = shoal_client::proto::to_value(&sample()).expect("encodes");
    if std::env::var_os("SHOAL_WRITE_FIXTURE").is_some() {
        std::fs::write(path, format!("{}\n", hex(&encoded))).expect("write fixture");
    }
    let recorded = std::fs::read_to_string(path).expect("fixture present");
    assert_eq!(hex(&encoded), recorded.trim(), "rmp-serde output changed");
    let back: Profile = shoal_client::proto::from_value(&unhex(recorded.trim())).expect("decodes");
    assert_eq!(back, sample());
}
