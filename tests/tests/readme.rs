//! README.md's examples, run as written against a dev daemon (`shoald --dev`,
//! what `./scripts/dev` starts): each ```rust block of the README must appear
//! verbatim between the `README begin`/`README end` markers of a function in
//! this file, which the test then runs; the ```python external-writer block is
//! run by python3 (with the `redis` package, which scripts/test installs) with
//! `REDIS_URL` set as the dev banner says; the Python client block runs with
//! `python/` on the path, the ```js block with node/ as `shoal-client` (stubs
//! stand in for the application's own `app`, `db` and `load_row`).
//!
//! One test in this binary: it changes the working directory, so that the
//! README's `./shoal.sock` is the dev daemon's socket.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

type DynResult = std::result::Result<(), Box<dyn std::error::Error>>;

#[allow(unused_variables)]
#[rustfmt::skip]
async fn quick_start() -> DynResult {
    // README begin
    // ./shoal.sock is where ./scripts/dev listens; in production /run/shoal/shoal.sock.
    let shoal = shoal_client::Client::connect("./shoal.sock").await?;
    shoal.set("user:42", &("alice", 31), Some(std::time::Duration::from_secs(60))).await?;
    let user: Option<(String, u32)> = shoal.get("user:42").await?;
    // Cache-aside with one loader across the whole fleet (fill leases):
    let row = shoal
        .get_or_load("row:7", None, || async { Ok::<_, std::io::Error>(vec![1, 2, 3]) })
        .await?;
    // README end
    assert_eq!(user, Some(("alice".to_string(), 31)));
    assert_eq!(row, vec![1, 2, 3]);
    Ok(())
}

#[allow(unused_variables)]
#[rustfmt::skip]
async fn sessions_and_rate_limits(shoal: shoal_client::Client) -> DynResult {
    // README begin
    // Login: a 256-bit token for the cookie; Redis stores only its keyed hash.
    let created = shoal.session_create("user-42", &serde_json::json!({"role": "admin"}), Default::default()).await?;
    let cookie = shoal_client::SessionCookie::default().set_cookie(&created.token, created.absolute_expires_at_ms);
    // Every request: answered from the local cache, no Redis round trip.
    let session: Option<shoal_client::Session<serde_json::Value>> = shoal.session_get(&created.token).await?;
    // Logout everywhere: every replica refuses the user's sessions within milliseconds.
    shoal.session_revoke_user("user-42").await?;
    // 429s with Retry-After and the IETF RateLimit headers:
    let decision = shoal.check("api", "client-7").await?;
    if !decision.allowed { let headers = decision.headers(); }
    // README end
    assert!(session.is_some());
    assert!(decision.allowed);
    Ok(())
}

/// The fenced blocks of `lang` in `markdown`, as their lines.
fn blocks(markdown: &str, lang: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in markdown.lines() {
        match &mut current {
            None if line.trim_start().starts_with("```") => {
                let info = line.trim_start().trim_start_matches('`');
                if info.split(',').next() == Some(lang) {
                    current = Some(Vec::new());
                }
            }
            None => {}
            Some(b) if line.trim_start().starts_with("```") => {
                out.push(std::mem::take(b));
                current = None;
            }
            Some(b) => b.push(line.to_string()),
        }
    }
    out
}

/// The marked regions of this file, as trimmed lines.
fn marked_here() -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in include_str!("readme.rs").lines() {
        let t = line.trim();
        if t == "// README begin" {
            current = Some(Vec::new());
        } else if t == "// README end" {
            out.extend(current.take());
        } else if let Some(b) = &mut current {
            b.push(t.to_string());
        }
    }
    out
}

#[tokio::test]
async fn every_readme_example_runs_against_a_dev_daemon() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md"))?;

    // The Rust blocks are exactly the code this test runs.
    let rust = blocks(&readme, "rust");
    let here = marked_here();
    ensure!(
        rust.len() == 2 && here.len() == 2,
        "README has {} rust blocks",
        rust.len()
    );
    for (block, tested) in rust.iter().zip(&here) {
        let block: Vec<String> = block.iter().map(|l| l.trim().to_string()).collect();
        assert_eq!(
            &block, tested,
            "README.md's rust block differs from the tested code"
        );
    }

    let dir = tempfile::tempdir()?;
    let tmp = tempfile::tempdir()?;
    let d = shoal_tests::DevDaemon::start(dir.path(), tmp.path(), &["--admin-listen", ""])?;
    std::env::set_current_dir(dir.path())?;
    quick_start().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let shoal = shoal_client::Client::connect("./shoal.sock").await?;
    sessions_and_rate_limits(shoal.clone())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    // The Python blocks: the client (run in the dev daemon's directory, with
    // `python/` on the path and a stub for the application's loader), and the
    // external writer (from the repository root: it opens lua/...).
    let python = blocks(&readme, "python");
    ensure!(
        python.len() == 2,
        "README has {} python blocks",
        python.len()
    );
    let (client_py, writer_py) = if python[0].iter().any(|l| l.contains("import redis")) {
        (&python[1], &python[0])
    } else {
        (&python[0], &python[1])
    };
    let prelude = "def load_row(n):\n    return {\"id\": n}\n";
    let out = Command::new("python3")
        .arg("-c")
        .arg(format!("{prelude}{}", client_py.join("\n")))
        .current_dir(dir.path())
        .env("PYTHONPATH", root.join("python"))
        .output()
        .context("python3")?;
    ensure!(
        out.status.success(),
        "README's Python client snippet failed (scripts/test installs `msgpack`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The Node block, with `shoal-client` resolving to node/ (as after
    // `npm install ./node`), express from node/'s dev dependencies, and stubs for
    // the application's `app` and `db`.
    let js = blocks(&readme, "js");
    ensure!(js.len() == 1, "README has {} js blocks", js.len());
    let modules = tempfile::tempdir()?;
    std::os::unix::fs::symlink(root.join("node"), modules.path().join("shoal-client"))?;
    let node_path = format!(
        "{}:{}",
        modules.path().display(),
        root.join("node/node_modules").display()
    );
    let program = format!(
        "const express = require('express');\nconst app = express();\n\
         const db = {{ loadUser: async (id) => ({{ id }}) }};\n\
         (async () => {{\n{}\n}})().then(() => process.exit(0), (e) => {{ console.error(e); process.exit(1); }});\n",
        js[0].join("\n")
    );
    let out = Command::new("node")
        .arg("-e")
        .arg(program)
        .current_dir(dir.path())
        .env("NODE_PATH", node_path)
        .output()
        .context("node")?;
    ensure!(
        out.status.success(),
        "README's Node snippet failed (scripts/test runs `npm ci` in node/):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for k in ["k1", "k2"] {
        shoal.set(k, &1u32, None).await?;
        ensure!(shoal.get::<u32>(k).await?.is_some());
    }
    let out = Command::new("python3")
        .arg("-c")
        .arg(writer_py.join("\n"))
        .current_dir(&root)
        .env("REDIS_URL", &d.redis_url)
        .output()
        .context("python3")?;
    ensure!(
        out.status.success(),
        "README's python snippet failed (scripts/test installs the `redis` package: pip install redis):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    for k in ["k1", "k2"] {
        while shoal.get::<u32>(k).await?.is_some() {
            ensure!(Instant::now() < deadline, "the dev daemon still serves {k}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(())
}
