//! Sealpost from a tenant's side, for the CLI (`send`, `status`, `cancel`), the harness and the
//! benches: requests to the `sealpost` NATS service and uploads over HTTP.

use std::net::SocketAddr;

use anyhow::Context as _;
use sealpost_domain::TenantId;
use sealpost_eventstore::names::{ServiceOp, ServiceSubject};

/// What `POST /v1/blobs` answered.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Uploaded {
    pub reference: String,
    pub sha256: String,
    pub size: u64,
}

/// Uploads `ciphertext` through the gateway at `http` with the tenant's API key.
pub async fn upload_blob(
    http: SocketAddr,
    api_key: &str,
    ciphertext: Vec<u8>,
) -> anyhow::Result<Uploaded> {
    let res = reqwest::Client::new()
        .post(format!("http://{http}/v1/blobs"))
        .bearer_auth(api_key)
        .body(ciphertext)
        .send()
        .await
        .context("uploading the ciphertext")?;
    let status = res.status();
    let text = res.bytes().await?;
    anyhow::ensure!(
        status.is_success(),
        "uploading the ciphertext: HTTP {status}: {}",
        String::from_utf8_lossy(&text)
    );
    serde_json::from_slice(&text).context("the upload reply is not {reference, sha256, size}")
}

/// One request to the `sealpost` service; returns the reply body, or fails with the error body
/// when the service answered an error.
pub async fn request(
    client: &async_nats::Client,
    tenant: &TenantId,
    op: ServiceOp,
    body: Vec<u8>,
) -> anyhow::Result<String> {
    let subject = ServiceSubject::new(tenant.clone(), op).to_string();
    request_subject(client, subject, body, "sealpost serve").await
}

/// One request to a Sealpost service subject; `serving` names what must run to answer it.
pub async fn request_subject(
    client: &async_nats::Client,
    subject: String,
    body: Vec<u8>,
    serving: &str,
) -> anyhow::Result<String> {
    let reply = client
        .request(subject.clone(), body.into())
        .await
        .with_context(|| format!("no answer on {subject}; is `{serving}` running?"))?;
    let text = String::from_utf8_lossy(&reply.payload).into_owned();
    let failed = reply
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::service::NATS_SERVICE_ERROR))
        .is_some();
    anyhow::ensure!(!failed, "{text}");
    Ok(text)
}
