//! The daemon's source stays readable (issue #14): no two files import each
//! other around a loop, at most 10 % of the import arrows point up the layers,
//! and no file is much over 600 lines outside its tests. `scripts/imports`
//! measures all three; this test holds it to them.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// "~600 lines": a file may pass 600 a little, never this.
const MAX_LINES: usize = 650;

#[tokio::test]
async fn daemon_sources_have_no_circles_few_up_arrows_and_no_huge_file() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = tokio::process::Command::new("python3")
        .arg(root.join("scripts/imports"))
        .arg(root.join("daemon/src"))
        .output()
        .await
        .context("running scripts/imports (python3; scripts/test installs it)")?;
    let text = String::from_utf8(out.stdout)?;
    if !out.status.success() {
        bail!(
            "scripts/imports failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut arrows = None;
    let mut circles = None;
    let mut too_big = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("files: ") {
            // files: N  arrows: A  up: U (P %)
            let num = |key: &str| -> Option<usize> {
                rest.split(key)
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            };
            arrows = num("arrows: ").zip(num("up: "));
        } else if let Some(n) = line.strip_prefix("circles: ") {
            circles = n.trim().parse::<usize>().ok();
        } else if let Some(rest) = line.strip_prefix("over 600 lines outside tests: ") {
            let n: usize = rest
                .rsplit('(')
                .next()
                .and_then(|s| s.trim_end_matches(')').parse().ok())
                .context("a size")?;
            if n > MAX_LINES {
                too_big.push(rest.to_string());
            }
        }
    }
    let (arrows, up) = arrows.context("no arrow count in scripts/imports' output")?;
    assert_eq!(circles, Some(0), "import circles:\n{text}");
    assert!(
        up * 10 <= arrows,
        "{up} of {arrows} import arrows point up the layers (at most 10 %):\n{text}"
    );
    assert!(
        too_big.is_empty(),
        "files over {MAX_LINES} lines outside tests: {too_big:?}"
    );
    Ok(())
}

/// The script sees what it claims to: a circle and an upward import made on
/// purpose in a scratch tree are reported.
#[tokio::test]
async fn the_measure_finds_a_circle_and_an_upward_import() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir()?;
    let src = dir.path();
    std::fs::create_dir_all(src.join("store"))?;
    std::fs::write(
        src.join("lib.rs"),
        "pub mod config;\npub mod store;\npub struct Ctx;\n",
    )?;
    // store (Redis) reaches up to lib.rs's Ctx, and config and store import each other
    std::fs::write(
        src.join("store/mod.rs"),
        "//! s\nuse crate::Ctx;\nuse crate::config::Config;\npub struct Store;\n",
    )?;
    std::fs::write(
        src.join("config.rs"),
        "//! c\nuse crate::store::Store;\npub struct Config;\n",
    )?;
    let out = tokio::process::Command::new("python3")
        .arg(root.join("scripts/imports"))
        .arg("-v")
        .arg(src)
        .output()
        .await?;
    let text = String::from_utf8(out.stdout)?;
    assert!(text.contains("up: store/mod.rs -> lib.rs"), "{text}");
    assert!(text.contains("circles: 1"), "{text}");
    Ok(())
}
