//! Protocol test vectors (`tests/vectors/*.json`): the file format, a replayer
//! that checks a daemon's answers against them, and the recorder that writes
//! them.
//!
//! A vector file is one connection: a list of steps, each the exact bytes of a
//! request frame and the response frame shoald gave, with the fields that differ
//! from run to run (tokens, timestamps, `node`, log ids) named in `vary`. The
//! format is meant for every client author, not only Rust: `tests/vectors/README.md`
//! specifies it, and a replayer in any language is a page of code. The Rust test
//! `tests/tests/vectors.rs` replays every file against a real `shoald` process;
//! `cargo run -p shoal-tests --example write_vectors` records them again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use rmpv::Value;
use serde::{Deserialize, Serialize};

use crate::raw::RawConn;
use crate::{workspace_bin, DaemonProcess, RedisServer};

/// One vector file: one connection, its steps in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VectorFile {
    /// What the file shows.
    pub description: String,
    pub steps: Vec<Step>,
}

/// One request and the response it gets.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Step {
    /// What the step shows (for people; replayers ignore it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
    /// The exact bytes to write, length prefix included, as lowercase hex. Not
    /// always a well-formed frame: that is the point of some vectors.
    pub request: String,
    /// Variables (captured by earlier steps) this request uses: before sending,
    /// decode the body, replace every string equal to `${NAME}` with the
    /// captured value, encode and frame it again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uses: Vec<String>,
    /// The request decoded, for people (replayers ignore it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request_text: String,
    /// The response frame shoald sent when the vector was recorded (length
    /// prefix included), as lowercase hex.
    #[serde(default)]
    pub response: String,
    /// The response decoded, for people (replayers ignore it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub response_text: String,
    /// Paths of the response whose values vary, and what is checked instead.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vary: BTreeMap<String, serde_json::Value>,
    /// Variables to take from the response: name -> path (the value must be a
    /// string).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capture: BTreeMap<String, String>,
    /// The server closes the connection after this response.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub closes: bool,
}

/// The directory of the vector files.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

/// Every vector file, sorted by name (the replay order).
pub fn files() -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter(|p| p.file_name().is_some_and(|n| n != "values.json"))
        .collect();
    out.sort();
    Ok(out)
}

pub fn load(path: &Path) -> Result<VectorFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// A private Redis and a `shoald` process configured for the vectors, ready.
#[derive(Debug)]
pub struct VectorDaemon {
    pub daemon: DaemonProcess,
    _work: tempfile::TempDir,
    _redis: RedisServer,
}

impl VectorDaemon {
    pub fn socket(&self) -> &Path {
        &self.daemon.socket
    }
}

/// Starts `shoald` exactly as the vectors README tells any replayer to
/// (`--config tests/vectors/shoal.toml --socket ... --redis-url ...`) against a
/// private Redis, and waits until it reports ready.
pub async fn start_daemon() -> Result<VectorDaemon> {
    let redis = RedisServer::start().await?;
    let work = tempfile::tempdir()?;
    let child = Command::new(workspace_bin("shoald")?)
        .arg("--config")
        .arg(dir().join("shoal.toml"))
        .arg("--socket")
        .arg(work.path().join("vectors.sock"))
        .arg("--redis-url")
        .arg(redis.url())
        .arg("--node-id")
        .arg("vectors")
        .env("SHOAL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting shoald")?;
    let mut daemon = DaemonProcess {
        child,
        socket: work.path().join("vectors.sock"),
    };
    daemon
        .wait_ready(std::time::Duration::from_secs(20))
        .await?;
    Ok(VectorDaemon {
        daemon,
        _work: work,
        _redis: redis,
    })
}

// ---- hex ----

pub fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn from_hex(s: &str) -> Result<Vec<u8>> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if s.len() % 2 != 0 {
        bail!("odd number of hex digits");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).context("not hex"))
        .collect()
}

// ---- values ----

/// Decodes one frame (prefix included) into its MessagePack value.
pub fn decode_frame(frame: &[u8]) -> Result<Value> {
    let Some((len, body)) = frame.split_first_chunk::<4>() else {
        bail!("frame shorter than its prefix");
    };
    if u32::from_be_bytes(*len) as usize != body.len() {
        bail!(
            "prefix says {} bytes, body has {}",
            u32::from_be_bytes(*len),
            body.len()
        );
    }
    let mut rd = body;
    let v = rmpv::decode::read_value(&mut rd)?;
    if !rd.is_empty() {
        bail!("trailing bytes after the value");
    }
    Ok(v)
}

/// A value in a compact diagnostic notation: maps and arrays as JSON, `nil`,
/// bin as `h'0a0b'`, long strings and bins shortened.
pub fn render(v: &Value) -> String {
    fn short(s: &str) -> String {
        if s.len() <= 80 {
            return format!("{s:?}");
        }
        let mut end = 40;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{:?}…({} bytes)", &s[..end], s.len())
    }
    match v {
        Value::Nil => "nil".into(),
        Value::Boolean(b) => b.to_string(),
        Value::Integer(i) => i.to_string(),
        Value::F32(f) => format!("{f}f32"),
        Value::F64(f) => format!("{f}"),
        Value::String(s) => match s.as_str() {
            Some(s) => short(s),
            None => format!("<invalid utf-8 {}>", to_hex(s.as_bytes())),
        },
        Value::Binary(b) if b.len() > 40 => {
            format!("h'{}…'({} bytes)", to_hex(&b[..20]), b.len())
        }
        Value::Binary(b) => format!("h'{}'", to_hex(b)),
        Value::Array(a) => format!("[{}]", a.iter().map(render).collect::<Vec<_>>().join(", ")),
        Value::Map(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}: {}", render(k), render(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Ext(t, d) => format!("ext({t}, h'{}')", to_hex(d)),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Nil => "nil",
        Value::Boolean(_) => "bool",
        Value::Integer(_) => "int",
        Value::F32(_) | Value::F64(_) => "float",
        Value::String(_) => "str",
        Value::Binary(_) => "bin",
        Value::Array(_) => "array",
        Value::Map(_) => "map",
        Value::Ext(..) => "ext",
    }
}

/// A JSON value against a MessagePack value: null/nil, bools, integers, strings.
fn json_eq(j: &serde_json::Value, v: &Value) -> bool {
    match (j, v) {
        (serde_json::Value::Null, Value::Nil) => true,
        (serde_json::Value::Bool(a), Value::Boolean(b)) => a == b,
        (serde_json::Value::Number(n), Value::Integer(i)) => {
            n.as_u64().is_some_and(|n| i.as_u64() == Some(n))
                || n.as_i64().is_some_and(|n| i.as_i64() == Some(n))
        }
        (serde_json::Value::String(a), Value::String(b)) => b.as_str() == Some(a.as_str()),
        _ => false,
    }
}

/// Whether a rule path (`ok.keys.*.reset_after_ms`) names this position.
fn path_matches(rule: &str, path: &[String]) -> bool {
    let parts: Vec<&str> = rule.split('.').collect();
    parts.len() == path.len()
        && parts
            .iter()
            .zip(path)
            .all(|(r, p)| *r == p || (*r == "*" && p.parse::<usize>().is_ok()))
}

/// Checks `actual` against a `vary` rule; `expected` is the recorded value.
fn apply_rule(rule: &serde_json::Value, expected: &Value, actual: &Value) -> Result<(), String> {
    match rule {
        serde_json::Value::String(s) if s == "any" => Ok(()),
        serde_json::Value::String(s) if s == "type" => {
            if kind(expected) == kind(actual) {
                Ok(())
            } else {
                Err(format!(
                    "a {} (as recorded), got {}",
                    kind(expected),
                    render(actual)
                ))
            }
        }
        serde_json::Value::Object(o) if o.contains_key("one_of") => {
            let options = o["one_of"].as_array().cloned().unwrap_or_default();
            if options.iter().any(|j| json_eq(j, actual)) {
                Ok(())
            } else {
                Err(format!("one of {}, got {}", o["one_of"], render(actual)))
            }
        }
        serde_json::Value::Object(o) if o.contains_key("min") || o.contains_key("max") => {
            let n = actual
                .as_u64()
                .ok_or_else(|| format!("an unsigned integer, got {}", render(actual)))?;
            let min = o.get("min").and_then(|v| v.as_u64()).unwrap_or(0);
            let max = o.get("max").and_then(|v| v.as_u64()).unwrap_or(u64::MAX);
            if (min..=max).contains(&n) {
                Ok(())
            } else {
                Err(format!("between {min} and {max}, got {n}"))
            }
        }
        other => Err(format!("unknown vary rule {other}")),
    }
}

/// Compares a response with the recorded one under the `vary` rules; returns
/// every difference as `path: what`.
pub fn compare(
    expected: &Value,
    actual: &Value,
    vary: &BTreeMap<String, serde_json::Value>,
) -> Vec<String> {
    fn walk(
        e: &Value,
        a: &Value,
        path: &mut Vec<String>,
        vary: &BTreeMap<String, serde_json::Value>,
        out: &mut Vec<String>,
    ) {
        fn at_path(path: &[String]) -> String {
            if path.is_empty() {
                "(root)".to_string()
            } else {
                path.join(".")
            }
        }
        if let Some((_, rule)) = vary.iter().find(|(r, _)| path_matches(r, path)) {
            if let Err(why) = apply_rule(rule, e, a) {
                out.push(format!("{}: expected {why}", at_path(path)));
            }
            return;
        }
        match (e, a) {
            (Value::Map(em), Value::Map(am)) => {
                let key = |k: &Value| k.as_str().map(str::to_string).unwrap_or_else(|| render(k));
                for (k, ev) in em {
                    let name = key(k);
                    match am.iter().find(|(ak, _)| key(ak) == name) {
                        Some((_, av)) => {
                            path.push(name);
                            walk(ev, av, path, vary, out);
                            path.pop();
                        }
                        None => out.push(format!("{}: missing field `{name}`", at_path(path))),
                    }
                }
                for (k, _) in am {
                    let name = key(k);
                    if !em.iter().any(|(ek, _)| key(ek) == name) {
                        out.push(format!("{}: unexpected field `{name}`", at_path(path)));
                    }
                }
            }
            (Value::Array(ea), Value::Array(aa)) => {
                if ea.len() != aa.len() {
                    out.push(format!(
                        "{}: expected {} items, got {}",
                        at_path(path),
                        ea.len(),
                        aa.len()
                    ));
                    return;
                }
                for (i, (ev, av)) in ea.iter().zip(aa).enumerate() {
                    path.push(i.to_string());
                    walk(ev, av, path, vary, out);
                    path.pop();
                }
            }
            _ if e == a => {}
            _ => out.push(format!(
                "{}: expected {}, got {}",
                at_path(path),
                render(e),
                render(a)
            )),
        }
    }
    let mut out = Vec::new();
    walk(expected, actual, &mut Vec::new(), vary, &mut out);
    out
}

/// The value at a dotted path (`ok.token`, `ok.0.session_id`).
pub fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, part| match v {
        Value::Map(m) => m
            .iter()
            .find(|(k, _)| k.as_str() == Some(part))
            .map(|(_, v)| v),
        Value::Array(a) => a.get(part.parse::<usize>().ok()?),
        _ => None,
    })
}

/// Replaces every string `${NAME}` in a request with the captured value.
fn substitute(v: &mut Value, vars: &BTreeMap<String, String>) -> Result<()> {
    match v {
        Value::String(s) => {
            if let Some(name) = s
                .as_str()
                .and_then(|s| s.strip_prefix("${"))
                .and_then(|s| s.strip_suffix('}'))
            {
                let value = vars
                    .get(name)
                    .with_context(|| format!("variable {name} was never captured"))?;
                *v = Value::from(value.as_str());
            }
        }
        Value::Array(a) => a.iter_mut().try_for_each(|x| substitute(x, vars))?,
        Value::Map(m) => m.iter_mut().try_for_each(|(_, x)| substitute(x, vars))?,
        _ => {}
    }
    Ok(())
}

/// Whether a run checks the recorded responses or records new ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Check,
    Record,
}

/// Runs one file on a fresh connection. In `Check` mode every response must
/// match its recording; in `Record` mode the responses (and the texts) are
/// written into `file`, and the `vary` rules are checked against them.
pub async fn run(socket: &Path, file: &mut VectorFile, mode: Mode) -> Result<()> {
    let mut conn = RawConn::connect(socket).await?;
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    for (i, step) in file.steps.iter_mut().enumerate() {
        let label = format!("step {} ({})", i + 1, step_label(step));
        let ctx = || label.clone();
        let mut bytes = from_hex(&step.request).with_context(ctx)?;
        if !step.uses.is_empty() {
            let mut v = decode_frame(&bytes).with_context(ctx)?;
            substitute(&mut v, &vars).with_context(ctx)?;
            bytes = crate::raw::frame(&crate::raw::body(&v));
        }
        if mode == Mode::Record {
            step.request_text = match decode_frame(&bytes) {
                Ok(v) => render(&v),
                Err(_) => format!("raw bytes {}", to_hex(&bytes[..bytes.len().min(16)])),
            };
        }
        conn.send_bytes(&bytes).await.with_context(ctx)?;
        let actual = recv_frame(&mut conn).await.with_context(ctx)?;
        let actual_value = decode_frame(&actual).with_context(ctx)?;
        let expected = match mode {
            Mode::Check => {
                decode_frame(&from_hex(&step.response).with_context(ctx)?).with_context(ctx)?
            }
            Mode::Record => {
                step.response = to_hex(&actual);
                step.response_text = render(&actual_value);
                actual_value.clone()
            }
        };
        let diffs = compare(&expected, &actual_value, &step.vary);
        if !diffs.is_empty() {
            bail!(
                "{}: response differs from the vector:\n  {}\n  got: {}",
                ctx(),
                diffs.join("\n  "),
                render(&actual_value)
            );
        }
        for (name, path) in &step.capture {
            let v = at(&actual_value, path)
                .and_then(Value::as_str)
                .with_context(|| format!("{}: no string at {path} to capture", ctx()))?;
            vars.insert(name.clone(), v.to_string());
        }
        if step.closes && !conn.closed().await {
            bail!("{}: the server did not close the connection", ctx());
        }
    }
    Ok(())
}

fn step_label(step: &Step) -> String {
    if step.note.is_empty() {
        step.request_text.chars().take(60).collect()
    } else {
        step.note.clone()
    }
}

/// Reads one whole frame, prefix included (5 s deadline).
async fn recv_frame(conn: &mut RawConn) -> Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let mut len = [0u8; 4];
        conn.stream
            .read_exact(&mut len)
            .await
            .context("no response (connection closed)")?;
        let mut frame = len.to_vec();
        frame.resize(4 + u32::from_be_bytes(len) as usize, 0);
        conn.stream.read_exact(&mut frame[4..]).await?;
        Ok::<_, anyhow::Error>(frame)
    })
    .await
    .context("no response within 5s")?
}

// ---- typed values (`values.json`) ----

/// One typed value and its bytes: what `shoal_client`'s typed helpers
/// (`set`/`get`, `session_create`/`session_get`, `get_or_load`) put inside a
/// `bin` — `rmp_serde::to_vec_named` — so other languages can read and write them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypedValue {
    pub name: String,
    /// The Rust value, as source text.
    pub rust: String,
    /// `both`: the Rust client writes exactly `hex` and reads it back.
    /// `read`: the Rust client reads `hex` (as another language may write it)
    /// into the value in `rust`.
    pub direction: String,
    pub hex: String,
    /// The same value as JSON text, where JSON can say it (not for bin). Text,
    /// so that maps keep their order: encoding it with Python's `msgpack.packb`
    /// gives `hex` for every `both` entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// Types the typed-value table uses.
pub mod typed {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct User {
        pub name: String,
        pub age: u32,
        pub admin: bool,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Profile {
        pub name: String,
        pub nick: Option<String>,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Score {
        pub name: String,
        pub score: f64,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub enum Role {
        Admin,
        Custom(String),
    }
}

fn typed_json_check(name: &str, bytes: &[u8], json: Option<&str>) -> Result<()> {
    if let Some(text) = json {
        let j: serde_json::Value =
            serde_json::from_str(text).with_context(|| format!("{name}: json"))?;
        let got: serde_json::Value = shoal_client::proto::from_value(bytes)
            .with_context(|| format!("{name}: decoding as JSON"))?;
        if got != j {
            bail!("{name}: the bytes decode to {got}, not {j}");
        }
    }
    Ok(())
}

fn both<T>(name: &str, rust: &str, v: T, json: Option<&str>, note: &str) -> Result<TypedValue>
where
    T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = shoal_client::proto::to_value(&v)?;
    let back: T = shoal_client::proto::from_value(&bytes)?;
    if back != v {
        bail!("{name}: {back:?} read back, {v:?} written");
    }
    typed_json_check(name, &bytes, json)?;
    Ok(TypedValue {
        name: name.into(),
        rust: rust.into(),
        direction: "both".into(),
        hex: to_hex(&bytes),
        json: json.map(str::to_string),
        note: note.into(),
    })
}

fn read<T>(
    name: &str,
    rust: &str,
    hex: &str,
    v: T,
    json: Option<&str>,
    note: &str,
) -> Result<TypedValue>
where
    T: serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = from_hex(hex)?;
    let got: T = shoal_client::proto::from_value(&bytes)
        .with_context(|| format!("{name}: the Rust client cannot read {hex}"))?;
    if got != v {
        bail!("{name}: read {got:?}, expected {v:?}");
    }
    typed_json_check(name, &bytes, json)?;
    Ok(TypedValue {
        name: name.into(),
        rust: rust.into(),
        direction: "read".into(),
        hex: hex.into(),
        json: json.map(str::to_string),
        note: note.into(),
    })
}

/// The typed-value table, each entry checked against the Rust client's codec
/// as it is built (an error names the entry that no longer holds).
pub fn typed_values() -> Result<Vec<TypedValue>> {
    use serde_json::json;
    use typed::*;
    let user = User {
        name: "alice".into(),
        age: 31,
        admin: true,
    };
    Ok(vec![
        both(
            "tuple",
            r#"("alice", 31u32)"#,
            ("alice".to_string(), 31u32),
            Some(r#"["alice", 31]"#),
            "tuples and tuple structs are arrays",
        )?,
        both(
            "struct",
            r#"User { name: "alice", age: 31, admin: true }"#,
            user.clone(),
            Some(r#"{"name": "alice", "age": 31, "admin": true}"#),
            "a struct is a map keyed by field name (str), in declaration order",
        )?,
        both(
            "struct with None",
            r#"Profile { name: "bob", nick: None }"#,
            Profile {
                name: "bob".into(),
                nick: None,
            },
            Some(r#"{"name": "bob", "nick": null}"#),
            "None is nil and the field is present",
        )?,
        both(
            "Option Some",
            "Some(5u8)",
            Some(5u8),
            Some(r#"5"#),
            "Some(x) is x itself",
        )?,
        both(
            "Vec<u8>",
            "vec![1u8, 2, 3]",
            vec![1u8, 2, 3],
            Some(r#"[1, 2, 3]"#),
            "a Vec<u8> is an array of integers, not bin",
        )?,
        both(
            "bytes",
            r#"bytes::Bytes::from_static(b"\x01\x02\x03") (or serde_bytes)"#,
            bytes::Bytes::from_static(b"\x01\x02\x03"),
            None,
            "bytes::Bytes, serde_bytes::ByteBuf: bin (Python bytes, Node Uint8Array)",
        )?,
        both(
            "string",
            r#""héllo""#,
            "héllo".to_string(),
            Some(r#""héllo""#),
            "str, UTF-8",
        )?,
        both(
            "negative integer",
            "-3i64",
            -3i64,
            Some(r#"-3"#),
            "integers take the smallest encoding that holds them",
        )?,
        both("integer 300", "300u64", 300u64, Some("300"), "")?,
        both(
            "float",
            "1.5f64",
            1.5f64,
            Some(r#"1.5"#),
            "f64 is float 64, f32 float 32",
        )?,
        both(
            "integral float",
            "2.0f64",
            2.0f64,
            Some(r#"2.0"#),
            "Python writes 2.0 the same way; JavaScript has no integral floats and writes 2 (see the read entry)",
        )?,
        both(
            "unit enum variant",
            "Role::Admin",
            Role::Admin,
            Some(r#""Admin""#),
            "the variant name as str",
        )?,
        both(
            "newtype enum variant",
            r#"Role::Custom("ops".into())"#,
            Role::Custom("ops".into()),
            Some(r#"{"Custom": "ops"}"#),
            "a map of one entry: variant name -> value",
        )?,
        both(
            "map",
            r#"BTreeMap::from([("a", 1u32), ("b", 2)])"#,
            std::collections::BTreeMap::from([("a".to_string(), 1u32), ("b".to_string(), 2)]),
            Some(r#"{"a": 1, "b": 2}"#),
            "",
        )?,
        both(
            "serde_json::Value",
            r#"serde_json::json!({"role": "admin", "id": 7})"#,
            json!({"role": "admin", "id": 7}),
            Some(r#"{"id": 7, "role": "admin"}"#),
            "serde_json objects are written with sorted keys (no preserve_order feature); the README's session data",
        )?,
        read(
            "struct from another key order, integer for a float",
            r#"Score { name: "a", score: 2.0 }"#,
            "82a573636f726502a46e616d65a161",
            Score {
                name: "a".into(),
                score: 2.0,
            },
            Some(r#"{"score": 2, "name": "a"}"#),
            "fields are matched by name; an integer reads as a float (what Node writes for 2.0)",
        )?,
        read(
            "struct from an array",
            r#"User { name: "alice", age: 31, admin: true }"#,
            "93a5616c6963651fc3",
            user.clone(),
            Some(r#"["alice", 31, true]"#),
            "an array fills the fields in declaration order",
        )?,
        read(
            "struct with a missing Option field",
            r#"Profile { name: "bob", nick: None }"#,
            "81a46e616d65a3626f62",
            Profile {
                name: "bob".into(),
                nick: None,
            },
            Some(r#"{"name": "bob"}"#),
            "an absent Option field reads as None",
        )?,
        read(
            "struct with an unknown field",
            r#"Profile { name: "bob", nick: None }"#,
            "82a46e616d65a3626f62a5657874726101",
            Profile {
                name: "bob".into(),
                nick: None,
            },
            Some(r#"{"name": "bob", "extra": 1}"#),
            "unknown fields are ignored",
        )?,
    ])
}
