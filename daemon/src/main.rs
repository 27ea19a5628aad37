//! `shoald`: load configuration, bind the socket, run until SIGTERM/SIGINT.
//!
//! Kept thin on purpose: everything testable lives in the library, and tests call
//! the same [`shoald::run`] this binary does.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use figment::providers::{Format, Serialized, Toml};
use tokio_util::sync::CancellationToken;

/// Flags override the file and the environment.
#[derive(Debug, Parser)]
#[command(
    name = "shoald",
    version,
    about = "shoal daemon: coherent cache, sessions and rate limits beside every replica"
)]
struct Args {
    /// TOML configuration file.
    #[arg(long, short = 'c', env = "SHOAL_CONFIG")]
    config: Option<PathBuf>,
    /// Development mode: start a private redis-server when `redis.url` is not
    /// configured, and serve on ./shoal.sock unless `socket.path` is set.
    #[arg(long)]
    dev: bool,
    /// Print the effective configuration (TOML) and exit.
    #[arg(long)]
    print_config: bool,
    /// `socket.path`
    #[arg(long)]
    socket: Option<PathBuf>,
    /// `redis.url`
    #[arg(long)]
    redis_url: Option<String>,
    /// `node.id`
    #[arg(long)]
    node_id: Option<String>,
    /// `admin.listen`
    #[arg(long)]
    admin_listen: Option<String>,
}

const EX_USAGE: u8 = 64;
const EX_UNAVAILABLE: u8 = 69;
const EX_SOFTWARE: u8 = 70;

fn main() -> ExitCode {
    let args = Args::parse();
    let mut fig = match shoald::Config::figment(args.config.as_deref()) {
        Ok(f) => f,
        Err(e) => return usage(e),
    };
    for (key, value) in [
        (
            "socket.path",
            args.socket.as_ref().map(|p| p.display().to_string()),
        ),
        ("redis.url", args.redis_url.clone()),
        ("node.id", args.node_id.clone()),
        ("admin.listen", args.admin_listen.clone()),
    ] {
        if let Some(v) = value {
            fig = fig.merge(Serialized::default(key, v));
        }
    }
    // --dev starts a private Redis only when nobody configured one.
    let dev_redis_wanted = args.dev && !configured(&args, "redis.url", "SHOAL_REDIS__URL");
    if args.dev {
        // Under everything the user set: only what is missing is added.
        fig = fig.join(Toml::string(shoald::ops::dev::OVERLAY));
        if !configured(&args, "socket.path", "SHOAL_SOCKET__PATH") {
            fig = fig.merge(Serialized::default("socket.path", "./shoal.sock"));
        }
    }
    let mut config = match shoald::Config::from_figment(fig, args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return usage(e),
    };
    // A Sentinel or Cluster configuration names its own Redis.
    let dev_redis_wanted =
        dev_redis_wanted && config.redis.topology() == shoald::config::Topology::Standalone;
    if args.print_config {
        let mut shown = config.redacted();
        if dev_redis_wanted {
            shown.redis.url = DEV_REDIS_SHOWN.into();
        }
        match toml::to_string(&shown) {
            Ok(s) => {
                print!("{s}");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("shoald: cannot print the configuration: {e}");
                return ExitCode::from(EX_SOFTWARE);
            }
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shoald: cannot start the runtime: {e}");
            return ExitCode::from(EX_SOFTWARE);
        }
    };
    // In the runtime's context (the gRPC exporter spawns its connection task
    // there) but not inside `block_on` (the HTTP exporter's blocking client
    // must not be created on a runtime thread).
    let entered = runtime.enter();
    let telemetry = shoald::ops::telemetry::init(&config);
    drop(entered);
    let telemetry = match telemetry {
        Ok(t) => t,
        Err(e) => {
            eprintln!("shoald: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let dev = args.dev;
    let code = runtime.block_on(async move {
        // First: a signal during start-up must still stop what was started.
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        let dev_redis = if dev_redis_wanted {
            match shoald::ops::dev::DevRedis::start().await {
                Ok(r) => {
                    config.redis.url = r.url();
                    tracing::info!(
                        redis = %config.redis.url,
                        pid = r.pid(),
                        dir = %r.dir().display(),
                        "dev mode: started a private redis-server"
                    );
                    Some(r)
                }
                Err(e) => {
                    eprintln!("shoald: --dev could not start redis-server: {e}");
                    return ExitCode::from(EX_UNAVAILABLE);
                }
            }
        } else {
            None
        };
        let mode = match config.socket_mode() {
            Ok(m) => m,
            Err(e) => return usage(e),
        };
        let listener = match shoald::bind(&config.socket.path, mode).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("shoald: {e}");
                return ExitCode::from(EX_UNAVAILABLE);
            }
        };
        let ctx = match shoald::Ctx::new(config) {
            Ok(c) => std::sync::Arc::new(c),
            Err(e) => {
                eprintln!("shoald: {}", shoald::RunError::from(e));
                return ExitCode::from(EX_SOFTWARE);
            }
        };
        if dev {
            tokio::spawn(dev_banner(
                ctx.clone(),
                dev_redis.as_ref().map(|r| (r.pid(), r.dir().to_path_buf())),
            ));
        }
        let code = match shoald::run_with(listener, ctx, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shoald: {e}");
                ExitCode::from(EX_SOFTWARE)
            }
        };
        drop(dev_redis);
        code
    });
    // Flush buffered spans while the runtime (and gRPC's task on it) still runs.
    telemetry.shutdown();
    code
}

/// `redis.url` as `--dev --print-config` shows it when shoald will start its own.
const DEV_REDIS_SHOWN: &str =
    "(dev) a private redis-server on 127.0.0.1, port chosen at start, removed at exit";

/// What a new user needs once the dev daemon listens: where it is, and
/// commands to paste that reach this daemon and its Redis.
async fn dev_banner(ctx: std::sync::Arc<shoald::Ctx>, redis: Option<(u32, PathBuf)>) {
    let admin = if ctx.config.admin.listen.trim().is_empty() {
        "disabled (admin.listen is empty)".to_string()
    } else {
        let mut rx = ctx.admin_addr.subscribe();
        let addr = match rx.wait_for(|a| a.is_some()).await {
            Ok(a) => *a,
            Err(_) => return,
        };
        match addr {
            Some(a) => format!("http://{a}/  (/healthz /readyz /metrics /quotas)"),
            None => return,
        }
    };
    let socket = std::path::absolute(&ctx.config.socket.path)
        .unwrap_or_else(|_| ctx.config.socket.path.clone());
    let url = ctx.config.redis.url.clone();
    let redis_line = match &redis {
        Some((pid, dir)) => format!(
            "{url}  (private redis-server, pid {pid}, data in {}; both go when shoald exits)",
            dir.display()
        ),
        None => shoald::config::redact_url(&url),
    };
    let ctl = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("shoalctl")))
        .filter(|p| p.exists())
        .map_or_else(|| "shoalctl".to_string(), |p| p.display().to_string());
    let policies: Vec<&str> = ctx
        .config
        .ratelimit
        .policies
        .keys()
        .map(String::as_str)
        .collect();
    let s = socket.display();
    eprintln!(
        "\nshoald --dev is serving\n  socket    {s}\n  admin     {admin}\n  redis     {redis_line}\n  policies  {}\n\nTry (same daemon, same Redis):\n  {ctl} --socket {s} stats\n  {ctl} --socket {s} invalidate user:42\n  {ctl} --socket {s} doctor\n  REDIS_URL={url} python3 writer.py   # README's external-writer snippet\n",
        if policies.is_empty() { "(none)".to_string() } else { policies.join(", ") }
    );
}

/// Whether `key` was set by a flag, the environment or the config file.
fn configured(args: &Args, key: &str, env: &str) -> bool {
    let flag = match key {
        "redis.url" => args.redis_url.is_some(),
        "socket.path" => args.socket.is_some(),
        _ => false,
    };
    let file = args
        .config
        .as_ref()
        .is_some_and(|p| figment::Figment::from(Toml::file_exact(p)).contains(key));
    flag || file || std::env::var_os(env).is_some()
}

fn usage(e: shoald::ConfigError) -> ExitCode {
    eprintln!("shoald: {e}");
    ExitCode::from(EX_USAGE)
}

/// SIGTERM or SIGINT starts the graceful shutdown.
/// Installs the handlers at once (so a signal that arrives before the returned
/// future first runs still drains, and the dev redis-server is stopped in
/// order); the future waits for one.
fn signals(shutdown: CancellationToken) -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        wait_signal(&mut term, &mut int).await;
        shutdown.cancel();
    }
}

async fn wait_signal(
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) {
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
}
