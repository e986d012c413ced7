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
            spawned: 0,
        }
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
        let child = cmd
            .args(["serve", "--roles", &self.roles])
            .env("SEALPOST_NATS_URL", &self.nats_url)
            .env("SEALPOST_LOG_FILTER", "error")
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
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
