//! `floodway`: the event gateway and its tools.

// A binary has no public API: `pub` here marks what modules share with each other.
#![allow(unreachable_pub)]

mod bench;
mod config;
mod conn;
mod demo;
mod load;
mod nats;
mod pacer;
mod problem;
mod server;
mod sink;
mod sinksim;
mod store;
mod topic;
mod wal;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Config;

/// Locking that survives a panic elsewhere: every value this binary keeps behind a mutex
/// (counters, samples, task handles) is whole between statements, so a thread that panicked while
/// holding the lock leaves nothing half-done to refuse.
pub trait Locked<T> {
    /// Locks, taking the value even if the mutex is poisoned.
    fn locked(&self) -> std::sync::MutexGuard<'_, T>;
}

impl<T> Locked<T> for std::sync::Mutex<T> {
    fn locked(&self) -> std::sync::MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// [`Locked`] for a read-write lock.
pub trait RwLocked<T> {
    /// Locks for reading, even if the lock is poisoned.
    fn read_locked(&self) -> std::sync::RwLockReadGuard<'_, T>;
    /// Locks for writing, even if the lock is poisoned.
    fn write_locked(&self) -> std::sync::RwLockWriteGuard<'_, T>;
}

impl<T> RwLocked<T> for std::sync::RwLock<T> {
    fn read_locked(&self) -> std::sync::RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_locked(&self) -> std::sync::RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Back pressure for event-driven services: an HTTP event gateway that stores what it accepts and
/// delivers it at the rate sinks can take.
#[derive(Parser, Debug)]
#[command(name = "floodway", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway.
    Serve {
        /// A TOML configuration file (see floodway.example.toml). Without one: embedded store,
        /// topics created on first use, delivered to DATA_DIR/out/TOPIC.jsonl.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (overrides the file; default 127.0.0.1:7070).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Directory for the store and file sinks (overrides the file; default ./floodway-data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// What this process does (overrides the file; default both). `ingest` only accepts,
        /// `worker` only delivers; both need `storage.backend = "nats"`.
        #[arg(long, value_enum)]
        role: Option<config::Role>,
    },
    /// Run a simulated downstream with a set capacity, for tests, benchmarks and demos.
    SinkSim(sinksim::Args),
    /// Generate open-loop load against an ingest URL and report what happened.
    Load(load::Args),
    /// Run a scenario against several gateway strategies and write one report comparing them.
    Bench(bench::Args),
    /// The whole story in one command: gateway, a sink whose capacity changes, overload, and an
    /// HTML report of plots.
    Demo(demo::Args),
    /// Check a configuration file and explain every error with its location.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// A bare HTTP handler that answers 202 to every event without storing it: the baseline the
    /// ingest benchmark compares the gateway with.
    #[command(hide = true)]
    Bare {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or a collector gets plain text.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(c) => {
                println!(
                    "{}: ok ({} topics declared)",
                    file.display(),
                    c.topics.len()
                );
                Ok(())
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        },
        Command::Serve {
            config,
            listen,
            data_dir,
            role,
        } => {
            let mut c = match &config {
                Some(path) => Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?,
                None => Config::default(),
            };
            if let Some(l) = listen {
                c.listen = l;
            }
            if let Some(d) = data_dir {
                c.data_dir = d;
            }
            if let Some(r) = role {
                c.role = r;
                c.check().map_err(|e| anyhow::anyhow!("--role: {e}"))?;
            }
            runtime()?.block_on(serve(c))
        }
        Command::SinkSim(args) => runtime()?.block_on(sinksim::run(args)),
        Command::Bare { listen } => runtime()?.block_on(bare(listen)),
        Command::Bench(args) => {
            let check = args.check;
            let met = runtime()?.block_on(bench::run(args))?;
            if check && !met {
                std::process::exit(2);
            }
            Ok(())
        }
        Command::Demo(args) => runtime()?.block_on(demo::run(args)).map(|_| ()),
        Command::Load(args) => {
            let report = runtime()?.block_on(load::run(args, false))?;
            load::print_summary(&report);
            Ok(())
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let store: Arc<dyn store::Store> = match config.strategy {
        config::Strategy::Unbounded | config::Strategy::Drop => {
            tracing::warn!(strategy = ?config.strategy, "comparison strategy: events are kept in memory only");
            Arc::new(store::MemoryStore::default())
        }
        _ if config.storage.backend == config::Backend::Nats => Arc::new(
            nats::NatsStore::connect(&config.storage.nats)
                .await
                .context("cannot open the nats store")?,
        ),
        config::Strategy::Floodway | config::Strategy::Fixed => Arc::new(
            store::RedbStore::open(&config.data_dir.join("floodway.redb"), config.storage.fsync)
                .context("cannot open the store")?,
        ),
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let gw = server::Gateway::start(config, store).await?;
    // The first line on stdout is the address: tools and tests read it (the port may be 0).
    println!("floodway listening on http://{addr}");
    tracing::info!(%addr, "serving");
    server::serve(&gw, listener, shutdown_signal()).await;
    tracing::info!("stopped accepting; finishing deliveries");
    gw.stop(Duration::from_secs(10)).await;
    drop(gw);
    tracing::info!("stopped");
    Ok(())
}

async fn bare(listen: SocketAddr) -> anyhow::Result<()> {
    let app = axum::Router::new().route(
        "/v1/topics/{topic}/events",
        axum::routing::post(|body: axum::body::Bytes| async move {
            let _ = body.len();
            (axum::http::StatusCode::ACCEPTED, "{\"accepted\":1}")
        }),
    );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("bare listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
