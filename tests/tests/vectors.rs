//! The protocol vectors of `tests/vectors/` replayed against a real `shoald`.
//!
//! Client authors (Python, Node, ...) replay the same files against their own
//! code; this test keeps the files true of the daemon. It also keeps the
//! protocol's three descriptions together: every op the parser accepts is
//! documented in PROTOCOL.md and exercised by a vector, and `values.json` is
//! what the Rust client's typed helpers really write.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Context, Result};
use shoal_tests::vectors::{self, Mode, TypedValue};

fn repo_file(rel: &str) -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&path).with_context(|| format!("reading {rel}"))
}

#[tokio::test]
async fn vectors_replay_against_a_real_daemon() -> Result<()> {
    let daemon = vectors::start_daemon().await?;
    let files = vectors::files()?;
    assert!(files.len() >= 10, "vector files missing: {files:?}");
    // Twice against the same daemon and Redis: a client author may replay the
    // files as often as they like (each starts from a state it sets up).
    for round in 1..=2 {
        for path in &files {
            let mut file = vectors::load(path)?;
            vectors::run(daemon.socket(), &mut file, Mode::Check)
                .await
                .with_context(|| format!("round {round}: {}", path.display()))?;
        }
    }
    Ok(())
}

/// Static rules of the format, so a hand edit cannot leave a file that some
/// replayer would read differently.
#[test]
fn vector_files_follow_the_format() -> Result<()> {
    for path in vectors::files()? {
        let name = path.display().to_string();
        let file = vectors::load(&path)?;
        assert!(!file.description.is_empty(), "{name}: no description");
        let mut captured = BTreeSet::new();
        for (i, step) in file.steps.iter().enumerate() {
            let at = format!("{name} step {}", i + 1);
            let request = vectors::from_hex(&step.request).context(at.clone())?;
            let response = vectors::decode_frame(&vectors::from_hex(&step.response)?)
                .with_context(|| format!("{at}: response"))?;
            if let Ok(req) = vectors::decode_frame(&request) {
                // A response answers its request's id, or 0 for an unusable frame.
                let want = vectors::at(&req, "id").and_then(|v| v.as_u64());
                let got = vectors::at(&response, "id").and_then(|v| v.as_u64());
                assert!(
                    got == want || got == Some(0),
                    "{at}: response id {got:?} for request id {want:?}"
                );
            }
            for var in &step.uses {
                assert!(captured.contains(var), "{at}: uses {var} before a capture");
            }
            for (var, path) in &step.capture {
                assert!(
                    vectors::at(&response, path).is_some_and(|v| v.is_str()),
                    "{at}: nothing to capture at {path}"
                );
                captured.insert(var.clone());
            }
            for path in step.vary.keys() {
                let concrete = path.replace('*', "0");
                assert!(
                    vectors::at(&response, &concrete).is_some(),
                    "{at}: vary path {path} is not in the recorded response"
                );
            }
            assert!(
                !step.closes || i + 1 == file.steps.len(),
                "{at}: a closing step must be the file's last"
            );
        }
    }
    Ok(())
}

/// The ops `parse_request` knows, read from its match arms.
fn parser_ops() -> Result<BTreeSet<String>> {
    let src = repo_file("client/src/proto/request/parse.rs")?;
    let ops: BTreeSet<String> = src
        .lines()
        .filter_map(|l| {
            let t = l.trim_start().strip_prefix('"')?;
            let (name, rest) = t.split_once('"')?;
            rest.trim_start()
                .starts_with("=>")
                .then(|| name.to_string())
        })
        .collect();
    if ops.len() < 20 {
        bail!("found only {ops:?} in request/parse.rs: has the parser changed shape?");
    }
    Ok(ops)
}

/// The ops PROTOCOL.md documents: one `### \`op\`` heading each.
fn documented_ops() -> Result<BTreeSet<String>> {
    Ok(repo_file("PROTOCOL.md")?
        .lines()
        .filter_map(|l| {
            let name = l.strip_prefix("### `")?.strip_suffix('`')?;
            Some(name.to_string())
        })
        .collect())
}

/// The ops the vectors send.
fn vector_ops() -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for path in vectors::files()? {
        for step in vectors::load(&path)?.steps {
            if let Ok(req) = vectors::decode_frame(&vectors::from_hex(&step.request)?) {
                if let Some(op) = vectors::at(&req, "op").and_then(|v| v.as_str()) {
                    out.insert(op.to_string());
                }
            }
        }
    }
    Ok(out)
}

#[test]
fn every_op_is_documented_and_has_a_vector() -> Result<()> {
    let parsed = parser_ops()?;
    let documented = documented_ops()?;
    let exercised = vector_ops()?;
    let undocumented: Vec<_> = parsed.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "ops the daemon accepts but PROTOCOL.md does not document (add a `### \\`op\\`` section): {undocumented:?}"
    );
    let phantom: Vec<_> = documented.difference(&parsed).collect();
    assert!(
        phantom.is_empty(),
        "ops PROTOCOL.md documents that the daemon does not accept: {phantom:?}"
    );
    let untested: Vec<_> = parsed.difference(&exercised).collect();
    assert!(
        untested.is_empty(),
        "ops without a vector (add steps in tests/examples/write_vectors.rs and record): {untested:?}"
    );
    Ok(())
}

#[test]
fn typed_values_file_is_what_the_rust_client_writes() -> Result<()> {
    let file: serde_json::Value = serde_json::from_str(&repo_file("tests/vectors/values.json")?)?;
    let recorded: Vec<TypedValue> = serde_json::from_value(file["values"].clone())?;
    // Every entry is checked against the real codec while the table is built.
    let table = vectors::typed_values()?;
    assert_eq!(
        recorded, table,
        "tests/vectors/values.json differs from the typed-value table: record it again"
    );
    Ok(())
}
