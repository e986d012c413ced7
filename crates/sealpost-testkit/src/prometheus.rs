//! A private Prometheus server for one test: it scrapes the given targets every second and
//! evaluates the shipped alert rules every second, as production would (only faster).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::free_port;

/// Where the Prometheus server is: `SEALPOST_PROMETHEUS`, else `prometheus` on PATH (Debian's
/// `prometheus` package, which `scripts/test` installs with its service left stopped).
pub fn prometheus_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("SEALPOST_PROMETHEUS") {
        return Ok(PathBuf::from(p));
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let bin = dir.join("prometheus");
        if bin.is_file() {
            return Ok(bin);
        }
    }
    bail!(
        "no prometheus server found: run scripts/test (it installs Debian's prometheus package, \
         service stopped), or `source scripts/lib.sh && ensure_promtool`, or set \
         SEALPOST_PROMETHEUS to a prometheus binary"
    )
}

/// A Prometheus server on a free loopback port, with its own TSDB in a temp dir; killed on drop.
#[derive(Debug)]
pub struct PrometheusServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl PrometheusServer {
    /// Starts Prometheus scraping `targets` (`host:port`, path `/metrics`) and evaluating
    /// `rules` (a rule file), both every second, and waits until it is ready.
    pub async fn start(targets: &[String], rules: &Path) -> anyhow::Result<Self> {
        let bin = prometheus_binary()?;
        let dir = tempfile::tempdir().context("creating a temp dir for Prometheus")?;
        let targets = targets
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - \"{rules}\"\n\
                 scrape_configs:\n  - job_name: sealpost\n    static_configs:\n      - targets: [{targets}]\n",
                rules = rules.display(),
            ),
        )
        .context("writing prometheus.yml")?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))
            .context("creating the Prometheus log")?;
        let port = free_port()?;
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cloning the log handle")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut server = PrometheusServer { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "prometheus exited with {status} during start:\n{}",
                    server.log()
                );
            }
            // HTTP answers before the server is ready (the API says 503 meanwhile).
            if ready(port).await {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!(
                    "prometheus was not ready on port {port} in 30 s:\n{}",
                    server.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `http://127.0.0.1:<port>` (the HTTP API is under `/api/v1/`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's log (for a failure message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

/// Whether `GET /-/ready` on 127.0.0.1:`port` answers 200.
async fn ready(port: u16) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(b"GET /-/ready HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.") && &head[8..12] == b" 200")
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
