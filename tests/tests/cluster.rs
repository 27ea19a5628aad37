//! Redis Cluster (issue #16), as far as this version goes: the harness builds a
//! real 3-primary, 3-replica cluster (`redis-cli --cluster create`);
//! `shoalctl doctor` describes it and says shoald cannot use it yet, and shoald
//! refuses `[redis.cluster]` with exit code 64 instead of misbehaving on it.

use anyhow::{Context, Result};

/// Runs a workspace binary with `args` (without the test's `SHOAL_*` variables).
async fn run_bin(name: &str, args: &[&str]) -> Result<(i32, String, String)> {
    let mut cmd = tokio::process::Command::new(shoal_tests::workspace_bin(name)?);
    cmd.args(args).stdin(std::process::Stdio::null());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SHOAL_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().await?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

#[tokio::test]
async fn doctor_describes_a_cluster_and_says_shoald_cannot_use_it_yet() -> Result<()> {
    let cluster = shoal_tests::cluster::ClusterSet::start().await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("shoal.toml");
    let urls: Vec<String> = cluster.urls()[..3]
        .iter()
        .map(|u| format!("{u:?}"))
        .collect();
    std::fs::write(
        &file,
        format!("[redis.cluster]\nurls = [{}]\n", urls.join(", ")),
    )?;
    let path = file.to_str().context("utf-8 path")?;
    let (code, out, err) = run_bin("shoalctl", &["--config", path, "doctor", "--json"]).await?;
    let report: serde_json::Value = serde_json::from_str(&out).with_context(|| err.clone())?;
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["topology"], "cluster", "{report:#}");
    assert_eq!(report["facts"]["cluster_state"], "ok", "{report:#}");
    assert_eq!(report["facts"]["cluster_size"], "3", "{report:#}");
    let cluster_findings: Vec<&serde_json::Value> = report["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["check"] == "cluster")
        .collect();
    assert!(
        cluster_findings.iter().any(|f| f["severity"] == "ok"),
        "{report:#}"
    );
    assert!(
        cluster_findings.iter().any(|f| f["severity"] == "problem"
            && f["message"]
                .as_str()
                .is_some_and(|m| m.contains("issue #16"))),
        "{report:#}"
    );
    assert!(
        finding_of(&report, "replicas").is_null(),
        "every primary has a replica: {report:#}"
    );

    // shoald itself refuses the same file.
    let (code, _, err) = run_bin("shoald", &["--config", path]).await?;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("not supported"), "{err}");
    Ok(())
}

fn finding_of(report: &serde_json::Value, check: &str) -> serde_json::Value {
    report["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["check"] == check)
        .cloned()
        .unwrap_or_default()
}
