//! Checks of deploy/: the files an operator copies must work as written, so
//! each is checked by the tool that will read it or by running shoald the way
//! it says:
//! - the systemd unit: `systemd-analyze verify`, `systemd-analyze security`
//!   under an exposure threshold, and the hardening settings the issue names;
//!   the sysusers file with `systemd-sysusers --dry-run`;
//! - the Kubernetes manifest: parsed, its ConfigMap loaded as a shoald config,
//!   the sidecar's probes resolved to a port and routes, then shoald started
//!   with that config and each probe's route asked;
//! - the Containerfile: its build stage runs the commands deploy/README.md
//!   gives, copies what the build needs, and the final stage gets the binaries
//!   that build produces.
//!
//! The systemd tools are skipped (with a message) where the machine has none.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use serde_json::Value;
use shoal_tests::{http_get, workspace_bin, Daemon, RedisServer};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(rel: &str) -> Result<String> {
    std::fs::read_to_string(repo().join(rel)).with_context(|| format!("reading {rel}"))
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Loads a shoald configuration from TOML text, as `shoald --config` would.
fn load_config(toml: &str) -> Result<shoald::Config> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("shoal.toml");
    std::fs::write(&path, toml)?;
    Ok(shoald::Config::load(Some(&path))?)
}

// ---------------------------------------------------------------- systemd

/// `key=value` settings of a unit file, by section (repeated keys kept in order).
fn unit_settings(text: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut section = String::new();
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
        } else if let Some((k, v)) = line.split_once('=') {
            out.entry((section.clone(), k.trim().to_string()))
                .or_default()
                .push(v.trim().to_string());
        }
    }
    out
}

#[test]
fn systemd_unit_is_hardened_and_verifies() -> Result<()> {
    let text = read("deploy/systemd/shoald.service")?;
    let s = unit_settings(&text);
    let get = |k: &str| -> Option<&str> {
        s.get(&("Service".to_string(), k.to_string()))
            .and_then(|v| v.last())
            .map(String::as_str)
    };
    // What the issue asks for, by name.
    assert_eq!(get("User"), Some("shoal"), "a dedicated user");
    assert_eq!(get("NoNewPrivileges"), Some("yes"));
    assert_eq!(get("ProtectSystem"), Some("strict"));
    assert_eq!(get("KillSignal"), Some("SIGTERM"));
    assert_eq!(get("Restart"), Some("on-failure"));
    assert_eq!(
        get("RestartPreventExitStatus"),
        Some("64"),
        "config errors are not retried"
    );
    assert_eq!(get("CapabilityBoundingSet"), Some(""));
    // The runtime directory is where the default config puts the socket.
    let defaults = load_config(&read("config/shoal.toml")?)?;
    let socket_dir = defaults.socket.path.parent().context("socket dir")?;
    assert_eq!(
        Path::new("/run").join(get("RuntimeDirectory").context("RuntimeDirectory")?),
        socket_dir
    );
    // Stop timeout above the drain grace, so SIGTERM's drain can finish.
    let stop: Duration =
        humantime::parse_duration(get("TimeoutStopSec").context("TimeoutStopSec")?)?;
    assert!(
        stop > defaults.shutdown.grace,
        "{stop:?} vs grace {:?}",
        defaults.shutdown.grace
    );
    let exec = get("ExecStart").context("ExecStart")?;
    assert!(
        exec.starts_with("/usr/local/bin/shoald --config /etc/shoal/shoal.toml"),
        "{exec}"
    );
    assert_eq!(
        s.get(&("Install".into(), "WantedBy".into()))
            .map(|v| v[0].as_str()),
        Some("multi-user.target")
    );

    ensure!(
        have("systemd-analyze"),
        "systemd-analyze is missing (apt-get install systemd; scripts/test installs it)"
    );
    // verify wants ExecStart's binary to exist: point it at the one we built.
    let dir = tempfile::tempdir()?;
    let unit = dir.path().join("shoald.service");
    let shoald = workspace_bin("shoald")?;
    std::fs::write(
        &unit,
        text.replace("/usr/local/bin/shoald", &shoald.display().to_string()),
    )?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    assert!(
        !stderr.contains("shoald.service"),
        "systemd-analyze verify warns about the unit:\n{stderr}"
    );
    // Exposure 2.0 or less on systemd's 0-10 scale ("OK"; threshold is x10).
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
        .arg(&unit)
        .output()?;
    assert!(
        out.status.success(),
        "systemd-analyze security: exposure above 2.0\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

#[test]
fn sysusers_file_creates_the_shoal_user() -> Result<()> {
    let text = read("deploy/systemd/shoal.sysusers")?;
    if !have("systemd-sysusers") {
        eprintln!("systemd-sysusers not installed: sysusers file not checked");
        return Ok(());
    }
    let root = tempfile::tempdir()?;
    std::fs::create_dir_all(root.path().join("etc"))?;
    let mut child = Command::new("systemd-sysusers")
        .arg("--dry-run")
        .arg(format!("--root={}", root.path().display()))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    use std::io::Write as _;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("Creating user 'shoal'"), "{said}");
    Ok(())
}

// ---------------------------------------------------------------- Kubernetes

fn yaml_docs(text: &str) -> Result<Vec<Value>> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).context("YAML document"))
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .with_context(|| format!("no {kind} in the manifest"))
}

fn str_of<'a>(v: &'a Value, what: &str) -> Result<&'a str> {
    v.as_str()
        .with_context(|| format!("{what} is not a string: {v}"))
}

#[tokio::test]
async fn kubernetes_sidecar_probes_hit_real_routes() -> Result<()> {
    let docs = yaml_docs(&read("deploy/kubernetes/shoald-sidecar.yaml")?)?;
    ensure!(docs.len() >= 2, "expected a ConfigMap and a Deployment");
    for d in &docs {
        ensure!(d["apiVersion"].is_string() && d["kind"].is_string(), "{d}");
    }
    let cm = kind(&docs, "ConfigMap")?;
    let deploy = kind(&docs, "Deployment")?;
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(
        deploy["spec"]["selector"]["matchLabels"], deploy["spec"]["template"]["metadata"]["labels"],
        "the selector must match the pod labels"
    );

    // shoald is a native sidecar: an init container that keeps running.
    let sidecar = pod["initContainers"]
        .as_array()
        .context("initContainers")?
        .iter()
        .find(|c| c["name"] == "shoald")
        .context("no shoald init container")?;
    assert_eq!(sidecar["restartPolicy"], "Always", "native sidecar");
    let app = &pod["containers"][0];
    ensure!(app.is_object(), "no application container");

    // Its config: the ConfigMap key the --config flag names, a valid config.
    let args: Vec<&str> = sidecar["args"]
        .as_array()
        .context("args")?
        .iter()
        .map(|a| a.as_str().unwrap_or(""))
        .collect();
    let config_path = args
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| Path::new(w[1]))
        .context("--config")?;
    let mount_of = |c: &Value, volume: &str| -> Option<String> {
        c["volumeMounts"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == volume)
            .and_then(|m| m["mountPath"].as_str().map(str::to_string))
    };
    let config_volume = pod["volumes"]
        .as_array()
        .context("volumes")?
        .iter()
        .find(|v| v["configMap"]["name"] == cm["metadata"]["name"])
        .context("the ConfigMap is not mounted")?;
    let config_mount = mount_of(sidecar, str_of(&config_volume["name"], "volume name")?)
        .context("config volume not mounted in shoald")?;
    assert_eq!(config_path.parent(), Some(Path::new(&config_mount)));
    let key = config_path
        .file_name()
        .and_then(|f| f.to_str())
        .context("file")?;
    let toml = str_of(&cm["data"][key], "ConfigMap data")?;
    let config =
        load_config(toml).context("the ConfigMap's shoal.toml is not a valid shoald config")?;

    // The admin port: listening beyond loopback (the kubelet probes the pod IP).
    let listen: std::net::SocketAddr = config.admin.listen.parse()?;
    assert!(
        !listen.ip().is_loopback(),
        "probes cannot reach a loopback admin port"
    );
    let ports = sidecar["ports"].as_array().context("ports")?;
    let resolve = |port: &Value| -> Result<u64> {
        match port {
            Value::Number(n) => n.as_u64().context("port"),
            Value::String(name) => ports
                .iter()
                .find(|p| p["name"] == name.as_str())
                .and_then(|p| p["containerPort"].as_u64())
                .with_context(|| format!("no container port named {name}")),
            other => bail!("bad probe port {other}"),
        }
    };
    let mut probes = BTreeMap::new();
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let get = &sidecar[probe]["httpGet"];
        ensure!(get.is_object(), "{probe} is not an httpGet probe");
        assert_eq!(
            resolve(&get["port"])?,
            u64::from(listen.port()),
            "{probe} port"
        );
        probes.insert(probe, str_of(&get["path"], "probe path")?.to_string());
    }
    assert_eq!(
        probes["livenessProbe"], "/healthz",
        "liveness must not depend on Redis"
    );
    assert_eq!(probes["readinessProbe"], "/readyz");

    // The socket: its directory is a shared emptyDir in both containers, and
    // the app is told where it is.
    let socket_dir = config.socket.path.parent().context("socket dir")?;
    let socket_volume = pod["volumes"]
        .as_array()
        .context("volumes")?
        .iter()
        .find(|v| {
            v["emptyDir"].is_object()
                && mount_of(sidecar, v["name"].as_str().unwrap_or("")).as_deref()
                    == socket_dir.to_str()
        })
        .context("the socket directory is not an emptyDir mounted in shoald")?;
    let socket_volume_name = str_of(&socket_volume["name"], "volume name")?;
    assert_eq!(
        mount_of(app, socket_volume_name).as_deref(),
        socket_dir.to_str(),
        "the app must mount the socket directory"
    );
    let app_socket = app["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == "SHOAL_SOCKET")
        .and_then(|e| e["value"].as_str());
    assert_eq!(
        app_socket.map(Path::new),
        Some(config.socket.path.as_path())
    );

    // Hardening and shutdown.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        sidecar["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(sidecar["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(sidecar["securityContext"]["capabilities"]["drop"][0], "ALL");
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .context("terminationGracePeriodSeconds")?;
    assert!(Duration::from_secs(grace) > config.shutdown.grace);
    if let Ok(np) = kind(&docs, "NetworkPolicy") {
        let allowed: Vec<u64> = np["spec"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r["ports"].as_array().into_iter().flatten())
            .filter_map(|p| p["port"].as_u64())
            .collect();
        assert!(
            allowed.contains(&u64::from(listen.port())),
            "the policy blocks the admin port"
        );
    }

    // Finally, shoald with this very config (Redis, socket and port swapped for
    // the test's) answers every probe's route with 200 once ready.
    let redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let mut run = config.clone();
    run.redis.url = redis.url();
    run.socket.path = dir.path().join("shoal.sock");
    run.admin.listen = "127.0.0.1:0".into();
    let d = Daemon::start_ready(run).await?;
    let addr = d.admin_addr(Duration::from_secs(5)).await?;
    for (probe, path) in &probes {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = http_get(addr, path, &[]).await?;
            if r.status == 200 {
                break;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "{probe} {path}: {} {}",
                r.status,
                r.text().unwrap_or("")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    d.stop().await
}

// ---------------------------------------------------------------- Containerfile

/// One instruction of a Containerfile, continuation lines joined.
#[derive(Debug)]
struct Instruction {
    op: String,
    args: String,
}

/// Stages of a Containerfile: (name, instructions). Comments and blank lines
/// are dropped; `\` continues a line.
fn stages(text: &str) -> Vec<(String, Vec<Instruction>)> {
    let mut logical = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head.trim());
            cur.push(' ');
        } else {
            cur.push_str(t);
            logical.push(std::mem::take(&mut cur));
        }
    }
    let mut out: Vec<(String, Vec<Instruction>)> = Vec::new();
    for l in logical {
        let (op, args) = l.split_once(' ').unwrap_or((&l, ""));
        let op = op.to_ascii_uppercase();
        if op == "FROM" {
            let name = args
                .split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .find(|w| w[0].eq_ignore_ascii_case("AS"))
                .map(|w| w[1].to_string())
                .unwrap_or_else(|| format!("stage{}", out.len()));
            out.push((name, Vec::new()));
        }
        if let Some((_, ins)) = out.last_mut() {
            ins.push(Instruction {
                op,
                args: args.trim().to_string(),
            });
        }
    }
    out
}

/// Shell command lines in a Markdown file's ```sh blocks, comments removed.
fn readme_commands(md: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in md.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            inside = !inside && t.trim_start_matches('`').starts_with("sh");
            continue;
        }
        if inside {
            let cmd = t.split(" #").next().unwrap_or("").trim();
            if !cmd.is_empty() {
                out.push(cmd.to_string());
            }
        }
    }
    out
}

#[test]
fn containerfile_builds_what_the_readme_says() -> Result<()> {
    let stages = stages(&read("deploy/Containerfile")?);
    ensure!(
        stages.len() == 2,
        "a build stage and a runtime stage: {stages:?}"
    );
    let (build_name, build) = &stages[0];
    let (_, runtime) = &stages[1];

    // The build stage runs exactly the README's build commands.
    let readme = readme_commands(&read("deploy/README.md")?);
    let runs: Vec<&str> = build
        .iter()
        .filter(|i| i.op == "RUN")
        .map(|i| i.args.as_str())
        .collect();
    ensure!(!runs.is_empty(), "the build stage builds nothing");
    for run in &runs {
        assert!(
            readme.iter().any(|c| c == run),
            "the build stage runs `{run}`, which deploy/README.md does not give; README commands: {readme:#?}"
        );
    }
    let build_cmd = runs
        .iter()
        .find(|r| r.starts_with("cargo build"))
        .context("no cargo build in the build stage")?;
    assert!(
        build_cmd.contains("--release") && build_cmd.contains("--locked"),
        "{build_cmd}"
    );

    // It copies what `cargo build --locked` needs: every workspace member, the
    // lock file, and the Lua scripts the daemon embeds.
    let workdir = build
        .iter()
        .rev()
        .find(|i| i.op == "WORKDIR")
        .map(|i| i.args.clone())
        .context("WORKDIR")?;
    let mut copied = Vec::new();
    for i in build.iter().filter(|i| i.op == "COPY") {
        let parts: Vec<&str> = i.args.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(
                repo().join(src).exists(),
                "COPY of {src}, which does not exist"
            );
            copied.push(src.to_string());
        }
    }
    let cargo = read("Cargo.toml")?;
    let members_line = cargo
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .context("workspace members")?;
    for member in members_line.split('"').skip(1).step_by(2) {
        assert!(
            copied.iter().any(|c| c == member),
            "workspace member {member} is not copied"
        );
    }
    for needed in ["Cargo.lock", "lua"] {
        assert!(copied.iter().any(|c| c == needed), "{needed} is not copied");
    }

    // The runtime stage takes the binaries that build produces.
    let daemon_manifest = read("daemon/Cargo.toml")?;
    let bins: Vec<&str> = daemon_manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|b| b.lines().find(|l| l.trim_start().starts_with("name")))
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    assert_eq!(bins, ["shoald", "shoalctl"]);
    let from_build: Vec<&Instruction> = runtime
        .iter()
        .filter(|i| i.op == "COPY" && i.args.starts_with(&format!("--from={build_name}")))
        .collect();
    ensure!(
        !from_build.is_empty(),
        "nothing copied from the build stage"
    );
    let mut dest = None;
    for i in &from_build {
        let parts: Vec<&str> = i.args.split_whitespace().skip(1).collect();
        for src in &parts[..parts.len() - 1] {
            let bin = src
                .strip_prefix(&format!("{workdir}/target/release/"))
                .with_context(|| format!("{src} is not a release binary of {workdir}"))?;
            assert!(bins.contains(&bin), "{bin} is not a binary of shoald");
        }
        dest = parts.last().map(|d| d.to_string());
    }
    let dest = dest.context("COPY destination")?;
    for bin in &bins {
        assert!(
            from_build
                .iter()
                .any(|i| i.args.contains(&format!("/target/release/{bin}"))),
            "{bin} is not in the image"
        );
    }

    // It runs unprivileged, starts shoald with the config it ships.
    let user = runtime
        .iter()
        .rev()
        .find(|i| i.op == "USER")
        .context("USER")?;
    let uid = user.args.split(':').next().unwrap_or("");
    assert!(uid != "0" && uid != "root", "the image runs as root");
    let entry = runtime
        .iter()
        .rev()
        .find(|i| i.op == "ENTRYPOINT")
        .context("ENTRYPOINT")?;
    let entry: Vec<String> = serde_json::from_str(&entry.args)?;
    assert_eq!(Path::new(&entry[0]), Path::new(&dest).join("shoald"));
    let cmd = runtime
        .iter()
        .rev()
        .find(|i| i.op == "CMD")
        .context("CMD")?;
    let cmd: Vec<String> = serde_json::from_str(&cmd.args)?;
    assert_eq!(cmd[0], "--config");
    let shipped = runtime
        .iter()
        .find(|i| i.op == "COPY" && i.args.split_whitespace().last() == Some(cmd[1].as_str()))
        .with_context(|| format!("{} is not copied into the image", cmd[1]))?;
    let src = shipped.args.split_whitespace().next().unwrap_or("");
    let image_config = load_config(&read(src)?)?;
    // The socket directory exists and belongs to the runtime user.
    let socket_dir = image_config
        .socket
        .path
        .parent()
        .context("socket dir")?
        .display()
        .to_string();
    assert!(
        runtime
            .iter()
            .any(|i| i.op == "RUN" && i.args.contains(&socket_dir) && i.args.contains(uid)),
        "the image does not create {socket_dir} for user {uid}"
    );
    let port = image_config.admin.listen.rsplit(':').next().unwrap_or("");
    assert!(
        runtime
            .iter()
            .any(|i| i.op == "EXPOSE" && i.args.split_whitespace().any(|p| p == port)),
        "the admin port {port} is not exposed"
    );
    Ok(())
}

#[test]
fn the_checkers_catch_drift() {
    // A build stage command the README does not give is caught.
    let s = stages("FROM rust AS build\nRUN cargo build \\\n  --release\nFROM debian\n");
    assert_eq!(s[0].1[1].args, "cargo build --release");
    let md = "```sh\ncargo build --release   # the binaries\n```\n```text\nnot a command\n```\n";
    assert_eq!(readme_commands(md), ["cargo build --release"]);
    let u = unit_settings("[Service]\n# c\nUser=shoal\nSystemCallFilter=a\nSystemCallFilter=~b\n");
    assert_eq!(
        u[&("Service".into(), "SystemCallFilter".into())],
        ["a", "~b"]
    );
}
