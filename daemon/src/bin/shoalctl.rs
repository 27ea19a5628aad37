//! `shoalctl`: operator commands against a running fleet.
//!
//! `invalidate` and `doctor` talk to Redis directly (through the same scripts
//! the daemons use, or by inspecting it), so they work with no daemon on the
//! machine: an external writer, a deploy hook, a pre-flight check. When a daemon
//! is named (`--socket`), they ask it which Redis and prefix it uses
//! (`admin.info`) and act on those, refusing when an explicit `--redis-url`, a
//! `SHOAL_REDIS__URL` or the config file names another: never a silent success
//! against a Redis the daemon does not read. `stats`, `sessions`, `quotas` and
//! `override` ask the daemon over its socket, so they run the exact code a
//! client's call runs.
//!
//! Output is for people by default; `--json` prints one JSON document for
//! scripts. Exit status: 0 success, 1 failure (and `doctor` found problems),
//! 64 unusable configuration.
#![forbid(unsafe_code)]

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use shoal_client::proto::{
    ClearOverrideResult, Op, OverrideResult, QuotaUsageResult, RevokeTarget, RevokeUserResult,
    RevokedResult, SessionListEntry,
};
use shoald::ops::admin::human_duration;

#[derive(Debug, Parser)]
#[command(name = "shoalctl", version, about = "operate a shoal fleet")]
struct Cli {
    /// Configuration file (the daemon's), for redis.url, redis.prefix and socket.path.
    #[arg(long, short = 'c', env = "SHOAL_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// The daemon's socket (default: socket.path of the configuration). Naming
    /// a daemon makes `invalidate` and `doctor` use that daemon's Redis and prefix.
    #[arg(long, global = true, env = "SHOAL_SOCKET")]
    socket: Option<PathBuf>,
    /// redis.url (with credentials if Redis needs them).
    #[arg(long, global = true)]
    redis_url: Option<String>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Invalidate keys (or every key of tags) across the fleet.
    Invalidate {
        /// Treat the arguments as tags.
        #[arg(long)]
        tag: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Counters of the daemon on this host.
    Stats,
    /// List and revoke sessions.
    Sessions {
        #[command(subcommand)]
        cmd: SessionsCmd,
    },
    /// Quota usage per policy and tenant.
    Quotas(QuotasArgs),
    /// Set (or clear) a runtime override of one key's limit; every daemon picks it up.
    Override(OverrideArgs),
    /// Inspect the configured Redis and say what is unsafe for shoal (exit 1 on problems).
    Doctor,
}

#[derive(Debug, Subcommand)]
enum SessionsCmd {
    /// A user's sessions (ids, never tokens).
    List {
        #[arg(allow_hyphen_values = true)]
        user: String,
    },
    /// Revoke one session, by the id `sessions list` shows, or by token.
    Revoke {
        /// Session id from `sessions list` (base64url: it may start with `-`).
        #[arg(
            required_unless_present = "token",
            conflicts_with = "token",
            allow_hyphen_values = true
        )]
        session_id: Option<String>,
        /// Read the session token from standard input instead (a token on the
        /// command line would end up in shell history and the process list).
        #[arg(long)]
        token: bool,
    },
    /// Revoke every session of a user (log out everywhere).
    RevokeUser {
        #[arg(allow_hyphen_values = true)]
        user: String,
    },
}

#[derive(Debug, Args)]
struct QuotasArgs {
    /// Only this policy (default: every policy of the configuration).
    policy: Option<String>,
    /// Only keys starting with this.
    #[arg(long)]
    prefix: Option<String>,
    /// Most keys per policy.
    #[arg(long, default_value_t = 100)]
    max_keys: u64,
}

#[derive(Debug, Args)]
struct OverrideArgs {
    policy: String,
    #[arg(allow_hyphen_values = true)]
    key: String,
    /// The key's limit per window.
    #[arg(long, required_unless_present = "clear")]
    limit: Option<u64>,
    /// The key's burst (token bucket, GCRA).
    #[arg(long, conflicts_with = "clear")]
    burst: Option<u64>,
    /// Remove the runtime override (back to the configured numbers).
    #[arg(long, conflicts_with = "limit")]
    clear: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match shoald::Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shoalctl: {e}");
            return ExitCode::from(64);
        }
    };
    if let Some(url) = &cli.redis_url {
        config.redis.url = url.clone();
        if let Err(e) = config.validate() {
            eprintln!("shoalctl: {e}");
            return ExitCode::from(64);
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shoalctl: {e}");
            return ExitCode::from(70);
        }
    };
    let mut out = String::new();
    let result = rt.block_on(run(cli, config, &mut out));
    // What was produced is shown even when the command then failed.
    if let Err(e) = std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("shoalctl: writing the output: {e}");
            return ExitCode::from(1);
        }
    }
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shoalctl: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes on one line, each said once: library errors often
/// show their source in their own message too.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

async fn client(cli: &Cli, config: &shoald::Config) -> anyhow::Result<shoal_client::Client> {
    let path = cli.socket.as_ref().unwrap_or(&config.socket.path);
    match shoal_client::Client::connect(path).await {
        Ok(c) => Ok(c),
        Err(e) => {
            let cause = match &e {
                shoal_client::Error::Connect(io) => io.to_string(),
                other => other.to_string(),
            };
            bail!(
                "cannot reach shoald at {}: {cause} (is it running? name its socket with --socket PATH or SHOAL_SOCKET=PATH)",
                path.display()
            )
        }
    }
}

/// Where a Redis URL in force came from, when the user set one.
fn explicit(cli: &Cli, key: &str, env: &str, flag: Option<&str>) -> Option<String> {
    if let Some(f) = flag {
        return Some(f.to_string());
    }
    if std::env::var_os(env).is_some() {
        return Some(env.to_string());
    }
    let file = cli.config.as_ref()?;
    use figment::providers::Format as _;
    figment::Figment::from(figment::providers::Toml::file_exact(file))
        .contains(key)
        .then(|| file.display().to_string())
}

/// The configuration a Redis-direct command uses: with `--socket`, the named
/// daemon's Redis and prefix (refusing a different one given explicitly).
async fn aim(cli: &Cli, mut config: shoald::Config) -> anyhow::Result<shoald::Config> {
    let Some(socket) = &cli.socket else {
        return Ok(config);
    };
    let info = client(cli, &config)
        .await?
        .admin_info()
        .await
        .with_context(|| {
            format!(
                "asking shoald at {} which Redis it uses (admin.info; a daemon older than shoalctl does not answer it: give --redis-url instead of --socket)",
                socket.display()
            )
        })?;
    let ours = shoald::config::redis_address(&config.redis.url);
    match explicit(
        cli,
        "redis.url",
        "SHOAL_REDIS__URL",
        cli.redis_url.as_ref().map(|_| "--redis-url"),
    ) {
        Some(from) if ours != info.redis => bail!(
            "shoald at {} uses {} but {from} says {ours}: refusing to act on a Redis that daemon does not read (give one of them)",
            socket.display(),
            info.redis
        ),
        // Same address: keep the URL given, it may carry credentials.
        Some(_) => {}
        None => config.redis.url = info.redis.clone(),
    }
    if let Some(from) = explicit(cli, "redis.prefix", "SHOAL_REDIS__PREFIX", None) {
        if config.redis.prefix != info.prefix {
            bail!(
                "shoald at {} uses prefix {:?} but {from} says {:?}: refusing (give one of them)",
                socket.display(),
                info.prefix,
                config.redis.prefix
            );
        }
    }
    config.redis.prefix = info.prefix;
    Ok(config)
}

/// Appends a line to the command's output. Output is collected and written
/// once at the end, so `shoalctl ... | head` ends quietly on a closed pipe
/// instead of panicking in `println!`.
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

fn print_json<T: serde::Serialize>(out: &mut String, v: &T) -> anyhow::Result<()> {
    say!(out, "{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

async fn run(cli: Cli, config: shoald::Config, out: &mut String) -> anyhow::Result<ExitCode> {
    match &cli.cmd {
        Cmd::Invalidate { tag, names } => {
            let config = aim(&cli, config).await?;
            let store = shoald::store::Store::new(&config)?;
            // On a cluster, one change per bucket: the largest position.
            let changes = if *tag {
                store.cache_invalidate_tags(names).await?
            } else {
                store.cache_invalidate(names).await?
            };
            let seq = changes.iter().map(|(id, _)| *id).max().unwrap_or_default();
            let n: usize = changes.iter().map(|(_, keys)| keys.len()).sum();
            if cli.json {
                say!(
                    out,
                    "{}",
                    serde_json::json!({
                        "seq": seq.to_string(),
                        "keys": n,
                        "redis": store.address(),
                        "prefix": store.prefix(),
                    })
                );
            } else {
                say!(
                    out,
                    "invalidated {n} key(s) in {} (prefix {}) at log position {seq}",
                    store.address(),
                    store.prefix()
                );
            }
        }
        Cmd::Stats => {
            let client = client(&cli, &config).await?;
            let stats: std::collections::BTreeMap<String, u64> = client.call(Op::Stats).await?;
            if cli.json {
                print_json(out, &stats)?;
            } else {
                for (k, v) in stats {
                    say!(out, "{k:32} {v}");
                }
            }
        }
        Cmd::Sessions { cmd } => sessions(&cli, &config, cmd, out).await?,
        Cmd::Quotas(args) => quotas(&cli, &config, args, out).await?,
        Cmd::Override(args) => override_cmd(&cli, &config, args, out).await?,
        Cmd::Doctor => {
            let config = aim(&cli, config).await?;
            let report = shoald::ops::doctor::run(&config).await;
            if cli.json {
                print_json(out, &report)?;
            } else {
                out.push_str(&report.render_human());
            }
            if !report.ok {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Milliseconds since the epoch as a UTC timestamp (no time-zone database needed).
fn timestamp(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

async fn sessions(
    cli: &Cli,
    config: &shoald::Config,
    cmd: &SessionsCmd,
    out: &mut String,
) -> anyhow::Result<()> {
    let client = client(cli, config).await?;
    match cmd {
        SessionsCmd::List { user } => {
            let list: Vec<SessionListEntry> =
                client.call(Op::SessionList { user: user.clone() }).await?;
            if cli.json {
                return print_json(out, &list);
            }
            if list.is_empty() {
                say!(out, "{user} has no sessions");
                return Ok(());
            }
            say!(
                out,
                "{:43}  {:21}  {:21}  {:21}",
                "SESSION ID",
                "CREATED",
                "LAST SEEN",
                "EXPIRES"
            );
            for s in &list {
                say!(
                    out,
                    "{:43}  {:21}  {:21}  {:21}",
                    s.session_id,
                    timestamp(s.created_at_ms),
                    timestamp(s.last_seen_ms),
                    timestamp(s.expires_at_ms)
                );
            }
            say!(out, "{} session(s)", list.len());
        }
        SessionsCmd::Revoke { session_id, token } => {
            let target = if *token {
                let mut t = String::new();
                std::io::stdin()
                    .read_to_string(&mut t)
                    .context("reading the token from standard input")?;
                let t = t.trim();
                if t.is_empty() {
                    bail!("no token on standard input");
                }
                RevokeTarget::Token(t.to_string())
            } else {
                match session_id {
                    Some(id) => RevokeTarget::SessionId(id.clone()),
                    None => bail!("give a session id, or --token with the token on standard input"),
                }
            };
            let r: RevokedResult = client.call(Op::SessionRevoke { target }).await?;
            if cli.json {
                return print_json(out, &r);
            }
            say!(
                out,
                "{}",
                if r.revoked {
                    "revoked (every daemon drops it within milliseconds)"
                } else {
                    "no such session (already revoked or expired)"
                }
            );
        }
        SessionsCmd::RevokeUser { user } => {
            let r: RevokeUserResult = client
                .call(Op::SessionRevokeUser { user: user.clone() })
                .await?;
            if cli.json {
                return print_json(out, &r);
            }
            say!(out, "revoked {} session(s) of {user}", r.revoked);
        }
    }
    Ok(())
}

async fn quotas(
    cli: &Cli,
    config: &shoald::Config,
    args: &QuotasArgs,
    out: &mut String,
) -> anyhow::Result<()> {
    let policies: Vec<String> = match &args.policy {
        Some(p) => vec![p.clone()],
        None => config.ratelimit.policies.keys().cloned().collect(),
    };
    if policies.is_empty() {
        bail!("no rate-limit policies in the configuration; name one: shoalctl quotas POLICY");
    }
    let client = client(cli, config).await?;
    let mut all = Vec::new();
    for policy in policies {
        let u: QuotaUsageResult = client
            .call(Op::QuotaUsage {
                policy: policy.clone(),
                prefix: args.prefix.clone(),
                max_keys: Some(args.max_keys),
            })
            .await
            .with_context(|| format!("quota usage of policy {policy}"))?;
        all.push(u);
    }
    if cli.json {
        return print_json(out, &all);
    }
    for u in &all {
        say!(
            out,
            "{}  {}  {} per {}",
            u.policy,
            u.algorithm,
            u.limit,
            human_duration(u.window_ms)
        );
        if u.keys.is_empty() {
            say!(out, "  no tenant has state right now\n");
            continue;
        }
        say!(
            out,
            "  {:32} {:>15} {:>10} {:>12}  USAGE",
            "TENANT",
            "USED/LIMIT",
            "REMAINING",
            "RESETS IN"
        );
        for k in &u.keys {
            let ratio = if k.limit == 0 {
                1.0
            } else {
                (k.used as f64 / k.limit as f64).clamp(0.0, 1.0)
            };
            let filled = (ratio * 20.0).round() as usize;
            say!(
                out,
                "  {:32} {:>15} {:>10} {:>12}  [{}{}] {:>3.0}%",
                k.key,
                format!("{}/{}", k.used, k.limit),
                k.remaining,
                human_duration(k.reset_after_ms),
                "#".repeat(filled),
                ".".repeat(20 - filled),
                ratio * 100.0
            );
        }
        if u.truncated {
            say!(
                out,
                "  (more keys exist; narrow with --prefix or raise --max-keys)"
            );
        }
        say!(out,);
    }
    Ok(())
}

async fn override_cmd(
    cli: &Cli,
    config: &shoald::Config,
    args: &OverrideArgs,
    out: &mut String,
) -> anyhow::Result<()> {
    let client = client(cli, config).await?;
    if args.clear {
        let r: ClearOverrideResult = client
            .call(Op::RatelimitClearOverride {
                policy: args.policy.clone(),
                key: args.key.clone(),
            })
            .await?;
        if cli.json {
            return print_json(out, &r);
        }
        say!(
            out,
            "{}",
            if r.cleared {
                "override cleared: the key is back to its configured limit"
            } else {
                "the key had no runtime override"
            }
        );
        return Ok(());
    }
    let Some(limit) = args.limit else {
        bail!("--limit is required (or --clear)");
    };
    let r: OverrideResult = client
        .call(Op::RatelimitSetOverride {
            policy: args.policy.clone(),
            key: args.key.clone(),
            limit,
            burst: args.burst,
        })
        .await?;
    if cli.json {
        return print_json(out, &r);
    }
    say!(
        out,
        "{} override of {} in {}: limit {limit}{}",
        if r.replaced { "replaced the" } else { "set an" },
        args.key,
        args.policy,
        args.burst
            .map(|b| format!(", burst {b}"))
            .unwrap_or_default()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_are_utc() {
        assert_eq!(super::timestamp(0), "1970-01-01 00:00:00Z");
        assert_eq!(super::timestamp(1_700_000_000_000), "2023-11-14 22:13:20Z");
        assert_eq!(super::timestamp(951_782_400_000), "2000-02-29 00:00:00Z");
    }
}
