//! The three clients on one fleet: a Rust program sets a typed value through
//! daemon A, a Python program reads it through daemon B with the Python typed
//! API, a Node program invalidates it through daemon C, and every daemon then
//! agrees the key is gone. Values written by one language's typed helpers must
//! read in the others (MessagePack, structs as maps keyed by field name).
//!
//! Python runs with `python/` on its path (needs `msgpack`, which scripts/test
//! installs); Node loads `node/` (its `dist/` is committed; `@msgpack/msgpack`
//! comes from `npm ci` in node/, which scripts/test runs first).
#![forbid(unsafe_code)]

use std::path::Path;
use std::time::Duration;
use tokio::process::Command;

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use shoal_tests::{test_config, Daemon, RedisServer};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct User {
    name: String,
    age: u32,
    tags: Vec<String>,
}

/// Runs a program without blocking the runtime the daemons live on.
async fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().await.with_context(|| what.to_string())?;
    ensure!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

#[tokio::test]
async fn rust_sets_python_reads_node_invalidates_every_daemon_agrees() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let mut daemons = Vec::new();
    for node in ["rust", "python", "node"] {
        daemons.push(Daemon::start_ready(test_config(&redis, dir.path(), node)).await?);
    }
    let rust = daemons[0].client().await?;
    let alice = User {
        name: "alice".into(),
        age: 31,
        tags: vec!["admin".into(), "beta".into()],
    };
    rust.set("user:42", &alice, None).await?;

    // Python, through daemon B, twice: the second read is B's L1.
    let py = format!(
        "import json, shoal\n\
         c = shoal.Client({sock:?})\n\
         v = c.get_value('user:42')\n\
         again = c.get_full('user:42')\n\
         print(json.dumps({{'value': v, 'from': again.source}}))\n",
        sock = daemons[1].socket.display().to_string()
    );
    let out = run(
        Command::new("python3")
            .arg("-c")
            .arg(py)
            .env("PYTHONPATH", root.join("python")),
        "python3 reading through daemon B",
    )
    .await?;
    let read: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(
        read["value"],
        serde_json::json!({"name": "alice", "age": 31, "tags": ["admin", "beta"]}),
        "Python's typed read of a Rust-written value"
    );
    assert_eq!(read["from"], "l1", "B's second read is an L1 hit");

    // Node, through daemon C.
    let js = format!(
        "const {{ Client }} = require({node:?});\n\
         (async () => {{\n\
           const c = await Client.connect({sock:?});\n\
           const user = await c.get('user:42');\n\
           const seq = await c.invalidate('user:42');\n\
           console.log(JSON.stringify({{ user, seq }}));\n\
         }})().then(() => process.exit(0), (e) => {{ console.error(e); process.exit(1); }});\n",
        node = root.join("node").display().to_string(),
        sock = daemons[2].socket.display().to_string()
    );
    let out = run(
        Command::new("node").arg("-e").arg(js),
        "node invalidating through daemon C",
    )
    .await?;
    let done: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(
        done["user"],
        serde_json::json!({"name": "alice", "age": 31, "tags": ["admin", "beta"]}),
        "Node's typed read of a Rust-written value"
    );
    let seq = done["seq"]
        .as_str()
        .context("invalidate returns the log id")?;

    // Every daemon has applied the change and agrees.
    for d in &daemons {
        d.wait_applied(seq, Duration::from_secs(5)).await?;
        let v: Option<User> = d.client().await?.get("user:42").await?;
        assert_eq!(v, None, "a daemon still serves the invalidated value");
    }

    // And back: a value Python writes reads in Rust.
    let py = format!(
        "import shoal\n\
         c = shoal.Client({sock:?})\n\
         c.set_value('user:7', {{'name': 'bob', 'age': 40, 'tags': []}})\n",
        sock = daemons[1].socket.display().to_string()
    );
    run(
        Command::new("python3")
            .arg("-c")
            .arg(py)
            .env("PYTHONPATH", root.join("python")),
        "python3 writing through daemon B",
    )
    .await?;
    let bob: Option<User> = rust.get("user:7").await?;
    assert_eq!(
        bob,
        Some(User {
            name: "bob".into(),
            age: 40,
            tags: vec![]
        })
    );
    Ok(())
}
