//! # sealpost
//!
//! The one Sealpost binary: configuration, wiring and the command line.
//!
//! **Owns:** loading and validating config ([`config`]), connecting to NATS, and the commands
//! `provision`, `demo`, `bench eventstore` and `config`.
//!
//! **Must not:** hold business rules (those are in `sealpost-domain`) or storage logic (in
//! `sealpost-eventstore`); it only wires them together.

mod bench;
mod config;
mod demo;
mod lifecycle;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sealpost_eventstore::provision::{
    embedded_definitions, provision, Definitions, StreamOverrides,
};

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "sealpost",
    version,
    about = "Event-sourced delivery engine for end-to-end-encrypted RCS messaging"
)]
struct Cli {
    /// A TOML config file (see `sealpost config --defaults` for every key).
    #[arg(long, global = true, env = "SEALPOST_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or update the streams and consumers of nats/ and verify their flags on the server.
    Provision {
        /// Read definitions from this directory instead of the ones built in.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Drive messages through their lifecycles on the event store and print a summary.
    Demo {
        #[arg(long, default_value_t = 3000)]
        messages: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Benchmarks that print figures next to a baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
    /// Print the effective configuration, or the commented defaults.
    Config {
        #[arg(long)]
        defaults: bool,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Lifecycle commands and single appends against a raw JetStream publish baseline.
    Eventstore {
        #[arg(long, default_value_t = 2000)]
        messages: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
}

/// Connects to the configured NATS server with the configured timeouts.
pub async fn connect(cfg: &Config) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .name("sealpost")
        .request_timeout(Some(cfg.request_timeout()))
        .connection_timeout(std::time::Duration::from_secs(5))
        .connect(&cfg.nats.url)
        .await
        .with_context(|| {
            format!(
                "cannot connect to NATS at {}; set SEALPOST_NATS_URL (scripts/demo starts a private server)",
                cfg.nats.url
            )
        })
}

fn init_tracing(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log.filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cfg.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = Config::load(cli.config.as_deref())?;
    init_tracing(&cfg);
    match cli.command {
        Command::Config { defaults } => {
            if defaults {
                print!("{}", config::DEFAULT_TOML);
            } else {
                print!("{}", toml::to_string(&cfg)?);
            }
        }
        Command::Provision { dir } => {
            let defs = match dir {
                Some(d) => Definitions::from_dir(&d)?,
                None => embedded_definitions(),
            };
            let client = connect(&cfg).await?;
            let js = async_nats::jetstream::new(client);
            let report = provision(
                &js,
                &defs,
                &StreamOverrides {
                    replicas: Some(cfg.nats.replicas),
                    duplicate_window: Some(std::time::Duration::from_secs(
                        cfg.nats.duplicate_window_secs,
                    )),
                },
            )
            .await?;
            for s in &report.streams {
                println!("stream   {s}: ok (flags verified on the server)");
            }
            for c in &report.consumers {
                println!("consumer {c}: ok");
            }
        }
        Command::Demo {
            messages,
            concurrency,
        } => demo::run(&cfg, messages, concurrency.max(1)).await?,
        Command::Bench {
            which:
                BenchCommand::Eventstore {
                    messages,
                    concurrency,
                },
        } => {
            bench::run_eventstore(
                &cfg,
                bench::EventstoreBench {
                    messages: messages.max(1),
                    concurrency: concurrency.max(1),
                },
            )
            .await?;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
