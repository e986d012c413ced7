//! Fixtures shared by the integration tests: a private server with the streams provisioned, and
//! commands with realistic values.

use std::collections::HashMap;
use std::time::Duration;

use sealpost_domain::{
    aggregate_id, AcceptMessage, Message, MessageCommand, MessageId, RetryPolicy, TenantId,
};
use sealpost_eventstore::provision::{embedded_definitions, provision, StreamOverrides};
use sealpost_eventstore::{CommandExecutor, JetStreamEventStore, StoreConfig};
use sealpost_testkit::{NatsCluster, NatsServer};
use time::OffsetDateTime;

pub struct Env {
    pub server: NatsServer,
    pub client: async_nats::Client,
}

impl Env {
    /// A fresh server with every stream and consumer of `nats/` provisioned.
    pub async fn start() -> Env {
        let server = NatsServer::start().await.expect("nats-server starts");
        let client = server.connect().await.expect("connect");
        provision(
            &async_nats::jetstream::new(client.clone()),
            &embedded_definitions(),
            &StreamOverrides::default(),
        )
        .await
        .expect("provision");
        Env { server, client }
    }

    pub fn store(&self) -> JetStreamEventStore<Message> {
        store_on(&self.client)
    }

    pub fn executor(&self) -> CommandExecutor<Message> {
        CommandExecutor::new(self.store(), RetryPolicy::default())
    }

    /// Reconnects after a server restart.
    pub async fn reconnect(&mut self) {
        self.client = self.server.connect().await.expect("reconnect");
    }
}

/// The JetStream a test runs on: one server, or the test kit's 3-node cluster on loopback with
/// every stream provisioned at 3 replicas.
pub enum Nats {
    Single(NatsServer),
    Cluster(NatsCluster),
}

impl Nats {
    pub async fn start(cluster: bool) -> Nats {
        if cluster {
            Nats::Cluster(NatsCluster::start().await.expect("a 3-node cluster"))
        } else {
            Nats::Single(NatsServer::start().await.expect("nats-server starts"))
        }
    }

    /// The URL Sealpost is configured with (every node, comma-separated, on the cluster).
    pub fn url(&self) -> String {
        match self {
            Nats::Single(s) => s.url(),
            Nats::Cluster(c) => c.url(),
        }
    }

    pub async fn connect(&self) -> async_nats::Client {
        match self {
            Nats::Single(s) => s.connect().await.expect("connect"),
            Nats::Cluster(c) => c.connect().await.expect("connect"),
        }
    }

    /// The replica count to provision streams with.
    pub fn replicas(&self) -> Option<usize> {
        matches!(self, Nats::Cluster(_)).then_some(3)
    }

    /// The single server, for a test that restarts it.
    pub fn single(&mut self) -> &mut NatsServer {
        match self {
            Nats::Single(s) => s,
            Nats::Cluster(_) => panic!("this test restarts a single server, not a cluster"),
        }
    }
}

/// Uploads `bytes` for `tenant` with `blobs` (a running Sealpost's blob store, or one of the
/// test's own), as the gateway's upload path stores them.
pub async fn upload(
    blobs: &sealpost_blobstore::BlobStore,
    tenant: &str,
    bytes: &'static [u8],
) -> sealpost_blobstore::StoredBlob {
    blobs
        .put_stream(
            &TenantId::new(tenant).expect("tenant id"),
            futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(bytes))]),
            1 << 20,
        )
        .await
        .expect("upload")
}

pub fn store_on(client: &async_nats::Client) -> JetStreamEventStore<Message> {
    JetStreamEventStore::new(
        client.clone(),
        StoreConfig {
            timeout: Duration::from_secs(10),
            ..StoreConfig::default()
        },
    )
}

pub fn tenant() -> TenantId {
    TenantId::new("acme-corp").expect("tenant id")
}

pub fn accept(key: &str) -> AcceptMessage {
    sealpost::bench::fixtures::accept_message(&tenant(), key, "+15551234567")
}

/// (aggregate id, accept command) for an idempotency key.
pub fn accept_cmd(key: &str) -> (String, MessageCommand) {
    let a = accept(key);
    let id = aggregate_id(&a.tenant_id, &MessageId::derive(&a.tenant_id, key));
    (id, MessageCommand::Accept(Box::new(a)))
}

pub fn meta(correlation: &str) -> HashMap<String, String> {
    HashMap::from([("correlation_id".to_owned(), correlation.to_owned())])
}

/// The application's config for a test: the embedded defaults, this test's nats-server, the
/// HTTP API and the embedded S3 endpoint on free loopback ports with objects under `s3_dir`,
/// and `tenants`. Tests start Sealpost from it with `sealpost::App::start`, the production
/// wiring.
pub fn app_config(
    nats_url: &str,
    s3_dir: &std::path::Path,
    tenants: Vec<sealpost_gateway::TenantConfig>,
) -> sealpost::Config {
    let mut cfg = sealpost::Config::defaults();
    cfg.nats.url = nats_url.to_owned();
    cfg.nats.request_timeout = Duration::from_secs(10);
    cfg.gateway.http_listen = "127.0.0.1:0".parse().expect("an address");
    cfg.s3.embedded_listen = "127.0.0.1:0".parse().expect("an address");
    cfg.s3.embedded_dir = s3_dir.to_owned();
    cfg.tenants = tenants;
    cfg.validate().expect("a valid test config");
    cfg
}

/// The `sealpost` binary built next to this test binary (`cargo test --workspace` builds it).
pub fn sealpost_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let bin = dir.join("sealpost");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p sealpost` (scripts/test does)",
        bin.display()
    );
    bin
}

/// A real `sealpost serve --roles <roles>` child process that a test can `kill -9` and start
/// again, with its config file and NATS URL.
pub struct ServeProcess {
    child: Option<tokio::process::Child>,
    roles: String,
    config: Option<std::path::PathBuf>,
    nats_url: String,
    envs: Vec<(String, String)>,
    /// Where stderr goes (appended across restarts), if anywhere.
    log: Option<(std::path::PathBuf, &'static str)>,
    /// How many processes were started in all.
    pub spawned: usize,
}

impl ServeProcess {
    pub fn new(roles: &str, config: std::path::PathBuf, nats_url: String) -> Self {
        Self {
            config: Some(config),
            ..Self::without_config(roles, nats_url)
        }
    }

    /// Configured by environment variables only ([`ServeProcess::env`]).
    pub fn without_config(roles: &str, nats_url: String) -> Self {
        Self {
            child: None,
            roles: roles.to_owned(),
            config: None,
            nats_url,
            envs: vec![],
            log: None,
            spawned: 0,
        }
    }

    /// Appends every process's stderr, at log level `filter`, to `path` (instead of dropping it
    /// with the level at `error`).
    pub fn log_to(mut self, path: std::path::PathBuf, filter: &'static str) -> Self {
        self.log = Some((path, filter));
        self
    }

    /// The last `lines` lines of the log file, if the process logs to one.
    pub fn log_tail(&self, lines: usize) -> String {
        let Some((path, _)) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The exit status if the running process has exited on its own (it is reaped), `None` while
    /// it runs or when none was started.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().expect("try_wait")?;
        self.child = None;
        Some(status)
    }

    /// An environment variable for every process started from now on.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn spawn(&mut self) {
        let mut cmd = tokio::process::Command::new(sealpost_binary());
        if let Some(config) = &self.config {
            cmd.env("SEALPOST_CONFIG", config);
        }
        let (stderr, filter) = match &self.log {
            Some((path, filter)) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .expect("the process's log file opens");
                (std::process::Stdio::from(file), *filter)
            }
            None => (std::process::Stdio::null(), "error"),
        };
        let child = cmd
            .args(["serve", "--roles", &self.roles])
            .env("SEALPOST_NATS_URL", &self.nats_url)
            .env("SEALPOST_LOG_FILTER", filter)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("sealpost serve starts");
        self.child = Some(child);
        self.spawned += 1;
    }

    /// The running process's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// `kill -9`: SIGKILL, no shutdown path runs.
    pub async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.start_kill().expect("SIGKILL");
            c.wait().await.expect("reaped");
        }
    }
}

/// A nats-server whose accounts are exactly what `sealpost tenants nats-config` prints for
/// `tenants` and the `service` user, provisioned as the service with `sealpost::app::provision`
/// (streams, consumers and each tenant's source consumer). Returns the temp dir (holding the
/// config and the embedded S3 store), the server, the service's connection and the service's
/// config.
pub async fn server_from_nats_config(
    tenants: &[sealpost_gateway::TenantConfig],
    service: &nkeys::KeyPair,
) -> (
    tempfile::TempDir,
    NatsServer,
    async_nats::Client,
    sealpost::Config,
) {
    let (dir, server, cfg) = unprovisioned_accounts_server(tenants, service).await;
    sealpost::app::provision(&cfg, &embedded_definitions())
        .await
        .expect("provision as the service user");
    let svc = server.connect().await.expect("service user connects");
    (dir, server, svc, cfg)
}

/// [`server_from_nats_config`] before `sealpost provision`.
pub async fn unprovisioned_accounts_server(
    tenants: &[sealpost_gateway::TenantConfig],
    service: &nkeys::KeyPair,
) -> (tempfile::TempDir, NatsServer, sealpost::Config) {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("accounts.conf");
    std::fs::write(
        &conf,
        sealpost_gateway::nats_config(tenants, &service.public_key()),
    )
    .expect("write accounts.conf");
    let seed = service.seed().expect("service seed");
    let server = NatsServer::start_authenticated(
        &["-c", conf.to_str().expect("utf-8 path")],
        Some(seed.clone()),
    )
    .await
    .expect("server with tenant accounts");
    let mut cfg = app_config(&server.url(), &dir.path().join("s3"), tenants.to_vec());
    cfg.nats.nkey_seed = seed.into();
    (dir, server, cfg)
}

/// The command instant tests use.
pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// The carrier's answer to attempt `attempt` on RBM, now.
pub fn result(attempt: u32, outcome: sealpost_domain::CarrierOutcome) -> MessageCommand {
    MessageCommand::RecordCarrierResult {
        attempt,
        carrier: "rbm".into(),
        outcome,
        at: now(),
    }
}

/// Sealpost as production runs it beside the carrier simulator: a `sealpost serve --roles
/// gateway` process and a `sealpost serve --roles delivery,receipts,expiry,fallback` process,
/// each with its own `/metrics` port, one config file naming the simulator's carriers and one
/// tenant, and the simulator's webhooks pointed at the gateway. [`Served::start`] starts the
/// gateway only; [`Served::start_workers`] the delivery roles.
pub struct Served {
    pub gateway: ServeProcess,
    pub workers: ServeProcess,
    /// `http://127.0.0.1:<port>` of each process (`/v1/...`, `/metrics`, `/healthz`).
    pub gateway_url: String,
    pub workers_url: String,
    pub http: reqwest::Client,
    /// The config file both processes read (for further `sealpost serve` processes).
    pub config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Served {
    /// Writes the config (retries from 100 ms to 500 ms, `tenant` with `api_key` and no rate
    /// limit), starts the gateway against `nats_url`, and waits until both its HTTP API and its
    /// NATS service (`client` pings it) answer.
    pub async fn start(
        nats_url: &str,
        client: &async_nats::Client,
        sim: &sealpost_carrier_sim::RunningSim,
        sim_cfg: &sealpost_carrier_sim::SimConfig,
        tenant: &str,
        api_key: &str,
    ) -> Served {
        let free = || sealpost_testkit::free_port().expect("a free port");
        let (gateway_port, workers_port, s3_port) = (free(), free(), free());
        sim.set_webhook_url(Some(format!(
            "http://127.0.0.1:{gateway_port}/v1/receipts/rbm"
        )));
        let dir = tempfile::tempdir().expect("a temp dir");
        let config = dir.path().join("sealpost.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[gateway]
http_listen = "127.0.0.1:{gateway_port}"
[s3]
embedded_listen = "127.0.0.1:{s3_port}"
embedded_dir = "{s3dir}"
[retry]
base_ms = 100
max_ms = 500
[carriers.rbm]
base_url = "{sim}"
agent_id = "{agent}"
bearer_token = "{bearer}"
client_token = "{client_token}"
[carriers.sms]
base_url = "{sim}"
api_key = "{sms}"
[[tenants]]
id = "{tenant}"
api_key_sha256 = ["{hash}"]
rate_per_sec = 0.0
"#,
                s3dir = dir.path().join("s3").display(),
                sim = sim.base_url(),
                agent = sim_cfg.agent_id,
                bearer = sim_cfg.bearer_token.expose(),
                client_token = sim_cfg.client_token.expose(),
                sms = sim_cfg.sms_api_key.expose(),
                hash = sealpost_gateway::hash_api_key(api_key),
            ),
        )
        .expect("the config is written");
        let mut gateway = ServeProcess::new("gateway", config.clone(), nats_url.to_owned());
        gateway.spawn();
        // The delivery roles: their own /metrics port, and the gateway's embedded S3 as endpoint.
        let workers = ServeProcess::new(
            "delivery,receipts,expiry,fallback",
            config.clone(),
            nats_url.to_owned(),
        )
        .env(
            "SEALPOST_GATEWAY_HTTP_LISTEN",
            &format!("127.0.0.1:{workers_port}"),
        )
        .env(
            "SEALPOST_S3_ENDPOINT",
            &format!("http://127.0.0.1:{s3_port}"),
        );
        let served = Served {
            gateway,
            workers,
            gateway_url: format!("http://127.0.0.1:{gateway_port}"),
            workers_url: format!("http://127.0.0.1:{workers_port}"),
            http: reqwest::Client::new(),
            config,
            _dir: dir,
        };
        served.healthy(&served.gateway_url).await;
        // HTTP answers before the NATS service is registered; wait for the service too (a ping
        // counts nothing).
        sealpost_testkit::eventually(Duration::from_secs(30), "the NATS service", || async {
            client.request("$SRV.PING.sealpost", "".into()).await.ok()
        })
        .await
        .expect("the gateway's NATS service answers");
        served
    }

    /// Starts the delivery roles and waits until they answer `/healthz`.
    pub async fn start_workers(&mut self) {
        self.workers.spawn();
        self.healthy(&self.workers_url).await;
    }

    async fn healthy(&self, base: &str) {
        sealpost_testkit::eventually(Duration::from_secs(30), "a /healthz", || async {
            self.http
                .get(format!("{base}/healthz"))
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        })
        .await
        .expect("the process answers /healthz");
    }

    /// Uploads `bytes` through the gateway's `POST /v1/blobs`: `{reference, sha256, ...}`.
    pub async fn upload(&self, api_key: &str, bytes: &[u8]) -> serde_json::Value {
        self.http
            .post(format!("{}/v1/blobs", self.gateway_url))
            .bearer_auth(api_key)
            .body(bytes.to_vec())
            .send()
            .await
            .expect("the upload is answered")
            .json()
            .await
            .expect("a JSON answer")
    }
}

/// `postgres://user@host:port/db` → (host:port, the same URL with `127.0.0.1:<port>`).
pub fn through(url: &str, port: u16) -> (std::net::SocketAddr, String) {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let (userinfo, rest) = rest.rsplit_once('@').map_or(("", rest), |(u, r)| (u, r));
    let (hostport, path) = rest.split_once('/').expect("a URL with a database");
    let hostport = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:5432")
    };
    let upstream =
        std::net::ToSocketAddrs::to_socket_addrs(&hostport.replace("localhost", "127.0.0.1"))
            .expect("a resolvable host")
            .next()
            .expect("an address");
    let at = if userinfo.is_empty() {
        String::new()
    } else {
        format!("{userinfo}@")
    };
    (upstream, format!("{scheme}://{at}127.0.0.1:{port}/{path}"))
}
