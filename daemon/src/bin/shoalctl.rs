//! `shoalctl`: operator commands against a running fleet.
//!
//! `invalidate` talks to Redis directly through the same scripts the daemons use,
//! so it works with no daemon on the machine (an external writer, a deploy hook).
//! `stats` asks one daemon over its socket.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "shoalctl", version, about = "operate a shoal fleet")]
struct Cli {
    /// Configuration file (the daemon's), for redis.url, redis.prefix and socket.path.
    #[arg(long, short = 'c', env = "SHOAL_CONFIG", global = true)]
    config: Option<PathBuf>,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match shoald::Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shoalctl: {e}");
            return ExitCode::from(64);
        }
    };
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
    match rt.block_on(run(cli, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoalctl: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli, config: shoald::Config) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Invalidate { tag, names } => {
            let store = shoald::store::Store::new(&config)?;
            let (seq, n) = if tag {
                let (id, keys) = store.cache_invalidate_tags(&names).await?;
                (id, keys.len())
            } else {
                (store.cache_invalidate(&names).await?, names.len())
            };
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({ "seq": seq.to_string(), "keys": n })
                );
            } else {
                println!("invalidated {n} key(s) at log position {seq}");
            }
        }
        Cmd::Stats => {
            let client = shoal_client::Client::connect(&config.socket.path).await?;
            let stats: std::collections::BTreeMap<String, u64> =
                client.call(shoal_client::proto::Op::Stats).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                for (k, v) in stats {
                    println!("{k:32} {v}");
                }
            }
        }
    }
    Ok(())
}
