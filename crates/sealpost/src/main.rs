//! # sealpost
//!
//! The one Sealpost binary: configuration, wiring and the command line.
//!
//! **Owns:** loading and validating config ([`config`]), connecting to NATS, wiring the roles
//! (`serve`), and the commands `provision`, `migrate`, `replay`, `send`, `status`, `cancel`,
//! `tenants`, `demo`, `bench` and `config`.
//!
//! **Must not:** hold business rules (those are in `sealpost-domain`) or storage logic (in
//! `sealpost-eventstore`); it only wires them together.

mod audit;
mod bench;
mod bench_projections;
mod config;
mod dashboard;
mod demo;
mod lifecycle;
mod pipeline;
mod serve;
mod status;
mod views;

/// mimalloc instead of glibc's malloc: the delivery path allocates many small, short-lived
/// buffers on both runtime threads, where glibc's arenas cost a quarter of the process's CPU
/// (README, "Delivery figures").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Run the whole delivery path in-process (gateway, workers, receipts, fallback) against a
    /// faulty carrier simulator, and print what the event stream and the simulator saw.
    Demo {
        #[arg(long, default_value_t = 3000)]
        messages: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Benchmarks that print figures next to a baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
    /// Print the effective configuration (secrets masked), or the commented defaults.
    Config {
        #[arg(long)]
        defaults: bool,
    },
    /// Run Sealpost's roles in this process until interrupted.
    Serve {
        /// Comma-separated roles: gateway (NATS service + HTTP API + receipt webhooks), delivery
        /// (carrier workers), receipts (applies stored receipts), expiry (fired expiry timers),
        /// fallback (revoke + neutral notice), projector (the Postgres views), or all.
        #[arg(long, default_value = "gateway", value_delimiter = ',')]
        roles: Vec<String>,
    },
    /// Run the simulated RBM aggregator and SMS API (development, demo, tests).
    CarrierSim {
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: std::net::SocketAddr,
        /// Where to POST signed receipts, e.g. http://127.0.0.1:8080/v1/receipts/rbm.
        #[arg(long)]
        webhook_url: Option<String>,
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        #[arg(long, default_value_t = 50)]
        receipt_delay_ms: u64,
        /// The fault mix as JSON, e.g. '{"throttle":0.02,"server_error":0.05,"not_capable":0.02}'.
        #[arg(long, default_value = "{}")]
        faults: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Send a message: the send command JSON from a file (or - for stdin), over NATS.
    Send {
        #[arg(long)]
        tenant: String,
        /// The send command v1 as JSON (schemas/commands/send.v1.json).
        file: PathBuf,
    },
    /// Show a message's status row, over NATS.
    Status {
        #[arg(long)]
        tenant: String,
        message_id: String,
    },
    /// Cancel a message that was not submitted yet, over NATS.
    Cancel {
        #[arg(long)]
        tenant: String,
        message_id: String,
    },
    /// Tenant administration.
    Tenants {
        #[command(subcommand)]
        which: TenantsCommand,
    },
    /// Apply the Postgres migrations of the projections (idempotent).
    Migrate,
    /// Replay the event stream. `--projection <name> --from-start` rebuilds a Postgres view from
    /// stream sequence 1 (truncate, reset checkpoint and consumer, re-apply), with a progress bar.
    Replay(ReplayArgs),
}

#[derive(Debug, clap::Args)]
struct ReplayArgs {
    /// Rebuild this projection: messages, compliance, metrics, or all.
    #[arg(long)]
    projection: Option<String>,
    /// Start at stream sequence 1 (a rebuild always does; required with --projection).
    #[arg(long)]
    from_start: bool,
    /// Without --projection: replay only this tenant's events (its NATS user may read no other).
    #[arg(long)]
    tenant: Option<String>,
    /// Without --projection: replay only this message's events.
    #[arg(long)]
    message: Option<String>,
    /// Start at the first event stored at or after this RFC 3339 instant.
    #[arg(long, value_parser = audit::parse_instant)]
    since: Option<time::OffsetDateTime>,
    /// Stop before the first event stored after this RFC 3339 instant.
    #[arg(long, value_parser = audit::parse_instant)]
    until: Option<time::OffsetDateTime>,
    /// Output format of the replayed events (one JSON object per line).
    #[arg(long, value_enum, default_value_t = ReplayFormat::Ndjson)]
    format: ReplayFormat,
    /// Check every aggregate's sequence, every body against its schema and the lifecycle
    /// order; exit non-zero with a report when anything is wrong.
    #[arg(long)]
    verify: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ReplayFormat {
    Ndjson,
}

#[derive(Debug, Subcommand)]
enum TenantsCommand {
    /// Print the SHA-256 of an API key, for `api_key_sha256` (read from stdin when omitted).
    HashKey { key: Option<String> },
    /// Print a nats-server `authorization` block: the service user plus one user per tenant,
    /// limited to its own subjects and inbox.
    NatsConfig {
        /// The public nkey (U...) of the Sealpost processes' own NATS user.
        #[arg(long)]
        service_nkey: String,
    },
    /// Generate a new nkey pair for a tenant or the service: prints the public key and the seed.
    NewNkey,
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
    /// Accepted sends/s over NATS and over HTTP against a raw JetStream publish baseline.
    Ingress {
        #[arg(long, default_value_t = 20000)]
        messages: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Messages/s end to end (send -> carrier simulator -> receipts -> displayed) against a raw
    /// JetStream publish baseline.
    Delivery {
        #[arg(long, default_value_t = 20000)]
        messages: usize,
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
    },
    /// Events/s a projection rebuild applies to Postgres (messages, then metrics), against a raw
    /// Postgres multi-row INSERT baseline of as many rows. Writes the events first.
    Projections {
        /// Events to write (messages x events per message; 5 per message).
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        /// Reuse the events already in the stream instead of writing new ones.
        #[arg(long)]
        no_write: bool,
    },
}

/// Connects to the configured NATS server with the configured timeouts.
pub async fn connect(cfg: &Config) -> anyhow::Result<async_nats::Client> {
    let options = if cfg.nats.nkey_seed.is_empty() {
        async_nats::ConnectOptions::new()
    } else {
        async_nats::ConnectOptions::with_nkey(cfg.nats.nkey_seed.clone())
    };
    options
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
    sealpost_telemetry::init_logging(cfg.log.format == "json", &cfg.log.filter);
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = Config::load(cli.config.as_deref())?;
    init_tracing(&cfg);
    match cli.command {
        Command::Config { defaults } => {
            if defaults {
                print!("{}", config::DEFAULT_TOML);
            } else {
                print!("{}", toml::to_string(&cfg.redacted())?);
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
        Command::Serve { roles } => {
            const KNOWN: [&str; 7] = [
                "gateway",
                "delivery",
                "receipts",
                "expiry",
                "fallback",
                "projector",
                "all",
            ];
            for r in &roles {
                anyhow::ensure!(
                    KNOWN.contains(&r.as_str()),
                    "unknown role '{r}': available roles are {}",
                    KNOWN.join(", ")
                );
            }
            let all = roles.iter().any(|r| r == "all");
            let delivery_roles: Vec<&str> = sealpost_delivery::Delivery::ROLES
                .into_iter()
                .filter(|r| all || roles.iter().any(|x| x == r))
                .collect();
            let client = connect(&cfg).await?;
            let _projector = if all || roles.iter().any(|r| r == "projector") {
                let p = views::projector(&cfg, client.clone()).await?;
                tracing::info!(projections = ?p.projections, "projector running");
                println!("projector running: {}", views::names(&p.projections));
                Some(p)
            } else {
                None
            };
            let gateway_role = all || roles.iter().any(|r| r == "gateway");
            // The object store only for the roles that read or write ciphertext.
            let blobs = if gateway_role || !delivery_roles.is_empty() {
                Some(serve::blobs(&cfg).await?)
            } else {
                None
            };
            let mut gateway = None;
            if let (true, Some(blobs)) = (gateway_role, blobs.as_ref()) {
                let running = serve::gateway(&cfg, client.clone(), blobs.store.clone()).await?;
                tracing::info!(http = %running.http_addr, "gateway serving: NATS service 'sealpost' and HTTP");
                println!("gateway listening on http://{}", running.http_addr);
                println!("dashboard on http://{}/", running.http_addr);
                gateway = Some(running);
            }
            let _consumers = if let (false, Some(blobs)) = (delivery_roles.is_empty(), &blobs) {
                let d = serve::delivery(&cfg, client.clone(), blobs.store.clone()).await?;
                let c = d.start(&delivery_roles);
                tracing::info!(roles = ?delivery_roles, "delivery roles running");
                println!("delivery roles running: {}", delivery_roles.join(", "));
                Some(c)
            } else {
                None
            };
            let _poller = sealpost_telemetry::spawn_queue_depth_poller(
                async_nats::jetstream::new(client.clone()),
                serve::QUEUES
                    .iter()
                    .map(|(s, c)| (s.to_string(), c.to_string()))
                    .collect(),
            );
            // Without the gateway, /metrics and /healthz still need a port.
            // A port conflict here must not stop the workers: they matter more than their metrics.
            let _metrics_http = if gateway.is_none() {
                match serve::metrics_only(&cfg).await {
                    Ok(h) => Some(h),
                    Err(e) => {
                        tracing::warn!(error = %e, "no /metrics listener; set [gateway] http_listen to a free address");
                        None
                    }
                }
            } else {
                None
            };
            match gateway.as_mut() {
                Some(g) => tokio::select! {
                    () = g.wait() => anyhow::bail!("the gateway stopped; see the log above"),
                    r = tokio::signal::ctrl_c() => r?,
                },
                None => tokio::signal::ctrl_c().await?,
            }
        }
        Command::CarrierSim {
            listen,
            webhook_url,
            latency_ms,
            receipt_delay_ms,
            faults,
            seed,
        } => {
            let faults: sealpost_carrier_sim::FaultMix = serde_json::from_str(&faults)
                .context("--faults must be a JSON object of fault probabilities (see sealpost-carrier-sim's FaultMix)")?;
            let rbm = &cfg.carriers.rbm;
            let sim_cfg = sealpost_carrier_sim::SimConfig {
                agent_id: rbm.agent_id.clone(),
                bearer_token: rbm.bearer_token.clone(),
                client_token: rbm.client_token.clone(),
                sms_api_key: cfg.carriers.sms.api_key.clone(),
                webhook_url,
                latency: std::time::Duration::from_millis(latency_ms),
                receipt_delay: std::time::Duration::from_millis(receipt_delay_ms),
                faults,
                seed,
                ..Default::default()
            };
            let sim = sealpost_carrier_sim::CarrierSim::start(listen, sim_cfg).await?;
            println!("carrier simulator on {} (RBM /v1/phones/..., SMS /sms/v1/messages, stats /sim/stats)", sim.base_url());
            tokio::signal::ctrl_c().await?;
        }
        Command::Send { tenant, file } => {
            let body = if file.as_os_str() == "-" {
                let mut s = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut s)?;
                s
            } else {
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?
            };
            let client = connect(&cfg).await?;
            request(&client, format!("sealpost.cmd.{tenant}.send"), body).await?;
        }
        Command::Status { tenant, message_id } => {
            let client = connect(&cfg).await?;
            let body = serde_json::to_vec(&serde_json::json!({ "message_id": message_id }))?;
            request(&client, format!("sealpost.qry.{tenant}.status"), body).await?;
        }
        Command::Cancel { tenant, message_id } => {
            let client = connect(&cfg).await?;
            let body = serde_json::to_vec(&serde_json::json!({ "message_id": message_id }))?;
            request(&client, format!("sealpost.cmd.{tenant}.cancel"), body).await?;
        }
        Command::Tenants { which } => match which {
            TenantsCommand::HashKey { key } => {
                let key = match key {
                    Some(k) => k,
                    None => {
                        let mut s = String::new();
                        std::io::stdin().read_line(&mut s)?;
                        s.trim().to_owned()
                    }
                };
                anyhow::ensure!(
                    !key.is_empty(),
                    "give the API key as an argument or on stdin"
                );
                println!("{}", sealpost_gateway::hash_api_key(&key));
            }
            TenantsCommand::NatsConfig { service_nkey } => {
                anyhow::ensure!(
                    service_nkey.starts_with('U') && service_nkey.len() == 56,
                    "--service-nkey must be a public user nkey (56 characters starting with 'U'); `sealpost tenants new-nkey` makes one"
                );
                print!(
                    "{}",
                    sealpost_gateway::nats_config(&cfg.tenants, &service_nkey)
                );
            }
            TenantsCommand::NewNkey => {
                let kp = nkeys::KeyPair::new_user();
                println!("public: {}", kp.public_key());
                println!("seed:   {}", kp.seed()?);
            }
        },
        Command::Bench {
            which:
                BenchCommand::Ingress {
                    messages,
                    concurrency,
                },
        } => {
            bench::run_ingress(&cfg, messages.max(1), concurrency.max(1)).await?;
        }
        Command::Bench {
            which:
                BenchCommand::Delivery {
                    messages,
                    concurrency,
                },
        } => {
            bench::run_delivery(&cfg, messages.max(1), concurrency.max(1)).await?;
        }
        Command::Migrate => views::migrate(&cfg).await?,
        Command::Replay(ReplayArgs {
            projection,
            from_start,
            tenant,
            message,
            since,
            until,
            format: ReplayFormat::Ndjson,
            verify,
        }) => match projection {
            Some(p) => {
                anyhow::ensure!(
                    from_start,
                    "a projection rebuild replays from the first event: add --from-start"
                );
                views::rebuild(&cfg, &p).await?;
            }
            None => {
                audit::run(
                    &cfg,
                    &audit::Options {
                        tenant,
                        message,
                        since,
                        until,
                        verify,
                    },
                )
                .await?
            }
        },
        Command::Bench {
            which: BenchCommand::Projections { events, no_write },
        } => bench_projections::run(&cfg, events.max(5), !no_write).await?,
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

/// One request to the `sealpost` service: prints the reply, or fails with the error's code.
async fn request(
    client: &async_nats::Client,
    subject: String,
    body: Vec<u8>,
) -> anyhow::Result<()> {
    let reply = client
        .request(subject.clone(), body.into())
        .await
        .with_context(|| format!("no answer on {subject}; is `sealpost serve` running?"))?;
    let text = String::from_utf8_lossy(&reply.payload);
    let failed = reply
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::service::NATS_SERVICE_ERROR))
        .is_some();
    if failed {
        anyhow::bail!("{text}");
    }
    println!("{text}");
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
