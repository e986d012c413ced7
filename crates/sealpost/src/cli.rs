//! The command line: what `sealpost` accepts ([`Cli`]) and the one dispatch ([`run`]) from a
//! command to the library function that does it. Each arm is one call; the work lives in the
//! modules the commands name.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sealpost_domain::{MessageId, TenantId};
use sealpost_eventstore::names::ServiceOp;
use sealpost_eventstore::provision::{embedded_definitions, Definitions};
use sealpost_projections::ProjectionName;

use crate::app::{connect, App};
use crate::config::{Config, LogFormat, DEFAULT_TOML};
use crate::roles::RoleArg;

#[derive(Debug, Parser)]
#[command(
    name = "sealpost",
    version,
    about = "Event-sourced delivery engine for end-to-end-encrypted RCS messaging"
)]
pub struct Cli {
    /// A TOML config file (see `sealpost config --defaults` for every key).
    #[arg(long, global = true, env = "SEALPOST_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    // --- operators
    /// Run Sealpost's roles in this process until interrupted.
    Serve {
        /// Comma-separated roles, or `all`.
        #[arg(long, default_value = "gateway", value_delimiter = ',', value_enum)]
        roles: Vec<RoleArg>,
    },
    /// Create or update the streams and consumers of nats/ and verify their flags on the server.
    Provision {
        /// Read definitions from this directory instead of the ones built in.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Apply the Postgres migrations of the projections (idempotent).
    Migrate,
    /// Print the effective configuration (secrets redacted), or the commented defaults.
    Config {
        #[arg(long)]
        defaults: bool,
    },
    /// Tenant administration.
    Tenants {
        #[command(subcommand)]
        which: TenantsCommand,
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
        /// Lifetime of the access tokens its token endpoint (`POST /token`) issues to the
        /// service account of `[carriers.rbm] service_account_key_file`.
        #[arg(long, default_value_t = 3_600_000)]
        token_ttl_ms: u64,
    },
    // --- platform teams
    /// Send a message: the send command JSON from a file (or - for stdin), over NATS.
    Send {
        #[arg(long)]
        tenant: TenantId,
        /// The send command v1 as JSON (schemas/commands/send.v1.json).
        file: PathBuf,
    },
    /// Show a message's status row, over NATS.
    Status {
        #[arg(long)]
        tenant: TenantId,
        message_id: MessageId,
    },
    /// Cancel a message that was not submitted yet, over NATS.
    Cancel {
        #[arg(long)]
        tenant: TenantId,
        message_id: MessageId,
    },
    /// The key directory: a tenant directory's secrets, its API, offline verification and audit.
    Keys {
        #[command(subcommand)]
        which: crate::keys_cli::KeysCommand,
    },
    /// The client SDK: device keys, publication and rotation, sealing, sending and opening
    /// end-to-end encrypted payloads.
    Sdk {
        #[command(subcommand)]
        which: crate::sdk_cli::SdkCommand,
    },
    // --- auditors
    /// Replay the event stream as NDJSON (with --verify: audit it). `--projection <name>
    /// --from-start` instead rebuilds a Postgres view from stream sequence 1.
    Replay(ReplayArgs),
    /// Disaster recovery, run against the standby server (`[nats] url`): mirror the event and
    /// key streams from the primary, show the mirrors' lag, promote them.
    Dr {
        #[command(subcommand)]
        which: DrCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum DrCommand {
    /// Create the mirrors of SEALPOST_EVENTS and SEALPOST_KEYS on this standby (idempotent).
    Mirror {
        /// The primary's JetStream domain (`jetstream { domain: ... }` in its server config).
        #[arg(long)]
        primary_domain: String,
    },
    /// Each mirror's last sequence, message count, lag and last contact with the primary.
    Status,
    /// Turn the mirrors into the streams, taking writes. Only once the primary is gone.
    Promote {
        /// Confirms that the primary is gone or fenced off (both would take writes otherwise).
        #[arg(long)]
        primary_is_gone: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Rebuild this projection: messages, compliance, metrics, or all.
    #[arg(long)]
    projection: Option<String>,
    /// Start at stream sequence 1 (a rebuild always does; required with --projection).
    #[arg(long)]
    from_start: bool,
    /// Without --projection: replay only this tenant's events. With the tenant's own credentials
    /// it reads (and on first use creates) the tenant's stream in the tenant's account.
    #[arg(long)]
    tenant: Option<TenantId>,
    /// Without --projection: replay only this message's events.
    #[arg(long)]
    message: Option<MessageId>,
    /// Start at the first event stored at or after this RFC 3339 instant.
    #[arg(long, value_parser = crate::replay::parse_instant)]
    since: Option<time::OffsetDateTime>,
    /// Stop before the first event stored after this RFC 3339 instant.
    #[arg(long, value_parser = crate::replay::parse_instant)]
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
pub enum ReplayFormat {
    Ndjson,
}

#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// Print the SHA-256 of an API key, for `api_key_sha256` (read from stdin when omitted).
    HashKey { key: Option<String> },
    /// Print a nats-server `accounts` block: the service's account (`SEALPOST`, every stream)
    /// and one account per tenant with an nkey, importing only that tenant's subjects and
    /// events. Regenerate, reload the server and run `sealpost provision` when a tenant is added.
    NatsConfig {
        /// The public nkey (U...) of the Sealpost processes' own NATS user.
        #[arg(long)]
        service_nkey: String,
    },
    /// Generate a new nkey pair for a tenant or the service: prints the public key and the seed.
    NewNkey,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
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
    /// The client SDK: seal and open per second (1 KiB and 1 MiB, 1 and 5 devices) against raw
    /// XChaCha20-Poly1305 on the same buffers, and the cost of verifying a lookup.
    Sdk {
        /// Seconds to run each measurement.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
    },
    /// The key directory's AKD on Postgres against akd's own in-memory storage in the same run:
    /// publish (changes/s, time per epoch), lookups with proof (per second, p50, p99), proof
    /// sizes.
    Keys {
        #[arg(long, default_value_t = 100_000)]
        labels: usize,
        /// Changes per epoch.
        #[arg(long, default_value_t = 10_000)]
        epoch_size: usize,
        #[arg(long, default_value_t = 5_000)]
        lookups: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
}

/// Loads the config, starts logging and runs the command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = Config::load(cli.config.as_deref())?;
    let json = cfg.log.format == LogFormat::Json;
    // Only the long-running processes export traces.
    let traces = match &cli.command {
        Command::Serve { .. } => cfg.traces(),
        _ => None,
    };
    let _traces =
        sealpost_telemetry::init_logging_and_traces(json, &cfg.log.filter, traces.as_ref())
            .map_err(|e| anyhow::anyhow!("[log] otlp_traces_endpoint: {e}"))?;
    match cli.command {
        Command::Serve { roles } => serve(cfg, &RoleArg::resolve(&roles)).await,
        Command::Provision { dir } => provision_streams(&cfg, dir).await,
        Command::Migrate => crate::views::migrate(&cfg).await,
        Command::Config { defaults } => print_config(&cfg, defaults),
        Command::Tenants { which } => tenants(&cfg, which),
        Command::Demo {
            messages,
            concurrency,
        } => crate::demo::run(&cfg, messages, concurrency.max(1)).await,
        Command::Bench { which } => bench(&cfg, which).await,
        Command::CarrierSim {
            listen,
            webhook_url,
            latency_ms,
            receipt_delay_ms,
            faults,
            seed,
            token_ttl_ms,
        } => {
            let rbm = &cfg.carriers.rbm;
            let service_account = if rbm.service_account_key_file.is_empty() {
                None
            } else {
                Some(sealpost_carriers::ServiceAccountKey::from_file(
                    std::path::Path::new(&rbm.service_account_key_file),
                )?)
            };
            let sim = sealpost_carrier_sim::SimConfig {
                agent_id: cfg.carriers.rbm.agent_id.clone(),
                bearer_token: cfg.carriers.rbm.bearer_token.clone(),
                service_account,
                token_ttl: std::time::Duration::from_millis(token_ttl_ms),
                client_token: cfg.carriers.rbm.client_token.clone(),
                sms_api_key: cfg.carriers.sms.api_key.clone(),
                webhook_url,
                latency: std::time::Duration::from_millis(latency_ms),
                receipt_delay: std::time::Duration::from_millis(receipt_delay_ms),
                faults: serde_json::from_str(&faults).context(
                    "--faults must be a JSON object of fault probabilities (see sealpost-carrier-sim's FaultMix)",
                )?,
                seed,
                ..Default::default()
            };
            carrier_sim(listen, sim).await
        }
        Command::Send { tenant, file } => {
            let body = if file.as_os_str() == "-" {
                let mut s = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut s)?;
                s
            } else {
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?
            };
            request(&cfg, &tenant, ServiceOp::Send, body).await
        }
        Command::Status { tenant, message_id } => {
            let body = serde_json::to_vec(&serde_json::json!({ "message_id": message_id }))?;
            request(&cfg, &tenant, ServiceOp::Status, body).await
        }
        Command::Cancel { tenant, message_id } => {
            let body = serde_json::to_vec(&serde_json::json!({ "message_id": message_id }))?;
            request(&cfg, &tenant, ServiceOp::Cancel, body).await
        }
        Command::Replay(args) => replay(&cfg, args).await,
        Command::Dr { which } => dr(&cfg, which).await,
        Command::Keys { which } => crate::keys_cli::run(&cfg, which).await,
        Command::Sdk { which } => crate::sdk_cli::run(which).await,
    }
}

/// `sealpost serve`: every role asked for, until Ctrl-C.
async fn serve(cfg: Config, roles: &[sealpost_eventstore::names::Role]) -> anyhow::Result<()> {
    let shutdown = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C; stop the process with a signal");
            std::future::pending::<()>().await;
        }
    };
    let running = App::start(cfg, roles, shutdown).await?;
    let names: Vec<&str> = running.roles().iter().map(|r| r.as_str()).collect();
    println!("roles running: {}", names.join(", "));
    if let Some(addr) = running.http_addr() {
        println!("listening on http://{addr} (/metrics, /healthz)");
    }
    running.wait().await
}

async fn provision_streams(cfg: &Config, dir: Option<PathBuf>) -> anyhow::Result<()> {
    let defs = match dir {
        Some(d) => Definitions::from_dir(&d)?,
        None => embedded_definitions(),
    };
    let report = crate::app::provision(cfg, &defs).await?;
    for s in &report.streams {
        println!("stream   {s}: ok (flags verified on the server)");
    }
    for c in &report.consumers {
        println!("consumer {c}: ok");
    }
    Ok(())
}

async fn dr(cfg: &Config, which: DrCommand) -> anyhow::Result<()> {
    let states = match which {
        DrCommand::Mirror { primary_domain } => crate::app::dr_mirror(cfg, &primary_domain).await?,
        DrCommand::Status => crate::app::dr_status(cfg).await?,
        DrCommand::Promote { primary_is_gone } => {
            anyhow::ensure!(
                primary_is_gone,
                "promotion makes this server take writes: pass --primary-is-gone once the \
                 primary is down or fenced off, so that only one of them takes writes"
            );
            crate::app::dr_promote(cfg).await?
        }
    };
    for m in states {
        let lag = m
            .lag
            .map_or("promoted (not a mirror)".to_owned(), |l| format!("lag {l}"));
        let active = m
            .active
            .map(|a| format!(", primary last heard {} ms ago", a.as_millis()))
            .unwrap_or_default();
        println!(
            "{}: last sequence {}, {} messages, {lag}{active}",
            m.stream, m.last_seq, m.messages
        );
    }
    Ok(())
}

fn print_config(cfg: &Config, defaults: bool) -> anyhow::Result<()> {
    if defaults {
        print!("{DEFAULT_TOML}");
    } else {
        print!("{}", cfg.to_toml()?);
    }
    Ok(())
}

fn tenants(cfg: &Config, which: TenantsCommand) -> anyhow::Result<()> {
    match which {
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
    }
    Ok(())
}

async fn bench(cfg: &Config, which: BenchCommand) -> anyhow::Result<()> {
    use crate::bench;
    match which {
        BenchCommand::Eventstore {
            messages,
            concurrency,
        } => {
            let b = bench::eventstore::EventstoreBench {
                messages: messages.max(1),
                concurrency: concurrency.max(1),
            };
            bench::eventstore::run(cfg, b).await.map(|_| ())
        }
        BenchCommand::Ingress {
            messages,
            concurrency,
        } => bench::ingress::run(cfg, messages.max(1), concurrency.max(1)).await,
        BenchCommand::Delivery {
            messages,
            concurrency,
        } => bench::delivery::run(cfg, messages.max(1), concurrency.max(1)).await,
        BenchCommand::Keys {
            labels,
            epoch_size,
            lookups,
            concurrency,
        } => {
            bench::keys::run(
                cfg,
                labels.max(2),
                epoch_size.max(1),
                lookups.max(1),
                concurrency.max(1),
            )
            .await
        }
        BenchCommand::Sdk { seconds } => bench::sdk::run(seconds).await,
        BenchCommand::Projections { events, no_write } => {
            bench::projections::run(cfg, events.max(5), !no_write).await
        }
    }
}

async fn carrier_sim(
    listen: std::net::SocketAddr,
    sim: sealpost_carrier_sim::SimConfig,
) -> anyhow::Result<()> {
    let sim = sealpost_carrier_sim::CarrierSim::start(listen, sim).await?;
    println!(
        "carrier simulator on {} (RBM /v1/phones/..., SMS /sms/v1/messages, stats /sim/stats)",
        sim.base_url()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// One request to the `sealpost` service: prints the reply, or fails with the error body.
async fn request(
    cfg: &Config,
    tenant: &TenantId,
    op: ServiceOp,
    body: Vec<u8>,
) -> anyhow::Result<()> {
    let client = connect(cfg).await?;
    println!(
        "{}",
        crate::client::request(&client, tenant, op, body).await?
    );
    Ok(())
}

async fn replay(cfg: &Config, args: ReplayArgs) -> anyhow::Result<()> {
    let ReplayArgs {
        projection,
        from_start,
        tenant,
        message,
        since,
        until,
        format: ReplayFormat::Ndjson,
        verify,
    } = args;
    match projection {
        Some(p) => {
            anyhow::ensure!(
                from_start,
                "a projection rebuild replays from the first event: add --from-start"
            );
            let only = match p.as_str() {
                "all" => None,
                name => Some(name.parse::<ProjectionName>()?),
            };
            crate::views::rebuild(cfg, only).await
        }
        None => {
            let opts = crate::replay::Options {
                tenant,
                message,
                since,
                until,
                verify,
            };
            crate::replay::run(cfg, &opts).await
        }
    }
}
