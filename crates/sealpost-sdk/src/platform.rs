//! How the SDK reaches Sealpost: the HTTP API (blobs, sends, the key API) with the tenant's API
//! key, and NATS request/reply (sends and the key API) for a backend on the tenant's NATS
//! account. Error answers become [`SdkError::Api`] with the platform's code.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::SdkError;

/// The HTTP API: its base URL and the tenant's API key (kept out of `Debug`).
#[derive(Clone)]
pub struct HttpApi {
    base: String,
    api_key: String,
    client: reqwest::Client,
}

impl std::fmt::Debug for HttpApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpApi")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// A reqwest client on rustls with ring (the tree's one TLS stack) and the platform's roots,
/// following no redirect (that would carry the API key elsewhere).
pub fn https_client(timeout: Duration) -> Result<reqwest::Client, SdkError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| SdkError::Transport(format!("TLS setup: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| SdkError::Transport(format!("HTTP client: {e}")))
}

impl HttpApi {
    pub fn new(base: &str, api_key: &str) -> Result<Self, SdkError> {
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            api_key: api_key.to_owned(),
            client: https_client(Duration::from_secs(60))?,
        })
    }

    async fn post(
        &self,
        path: &str,
        body: reqwest::Body,
        content_type: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Vec<u8>, SdkError> {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.api_key)
            .header("content-type", content_type)
            .body(body);
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        answer(request, &format!("POST {path}")).await
    }
}

/// Sends `request` and returns the body of a success; an error status becomes
/// [`SdkError::Api`] with the platform's code and message. `what` names the call in transport
/// errors (never a URL: device links and presigned URLs are secrets).
pub(crate) async fn answer(
    request: reqwest::RequestBuilder,
    what: &str,
) -> Result<Vec<u8>, SdkError> {
    let transport = |e: reqwest::Error| SdkError::Transport(format!("{what}: {}", e.without_url()));
    let response = request.send().await.map_err(transport)?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await.map_err(transport)?;
    if status >= 400 {
        return Err(api_error(&bytes, status));
    }
    Ok(bytes.to_vec())
}

/// Where a blob was stored: what a send refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBlob {
    pub reference: String,
    pub sha256: String,
    pub size: u64,
}

/// The platform as one tenant's backend sees it.
#[derive(Debug, Clone)]
pub struct Platform {
    tenant: String,
    http: Option<HttpApi>,
    nats: Option<async_nats::Client>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorFields,
}

#[derive(Deserialize)]
struct ErrorFields {
    code: String,
    message: String,
}

fn api_error(body: &[u8], status: u16) -> SdkError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => SdkError::Api {
            code: e.error.code,
            message: e.error.message,
            status,
        },
        Err(_) => SdkError::Api {
            code: "unexpected_answer".into(),
            message: format!("status {status} without an error body"),
            status,
        },
    }
}

impl Platform {
    /// `tenant`'s platform over HTTP, NATS, or both (then NATS carries sends and key calls and
    /// HTTP the uploads).
    pub fn new(
        tenant: &str,
        http: Option<HttpApi>,
        nats: Option<async_nats::Client>,
    ) -> Result<Self, SdkError> {
        if http.is_none() && nats.is_none() {
            return Err(SdkError::Transport(
                "give the HTTP API (base URL and API key), a NATS connection, or both".into(),
            ));
        }
        Ok(Self {
            tenant: tenant.to_owned(),
            http,
            nats,
        })
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    fn http(&self, what: &str) -> Result<&HttpApi, SdkError> {
        self.http.as_ref().ok_or_else(|| {
            SdkError::Transport(format!(
                "{what} needs the HTTP API: give its base URL and API key"
            ))
        })
    }

    async fn nats_request(
        &self,
        client: &async_nats::Client,
        subject: String,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, SdkError> {
        let answer = client
            .request(subject.clone(), body.into())
            .await
            .map_err(|e| SdkError::Transport(format!("NATS request on {subject}: {e}")))?;
        let failed = answer
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::service::NATS_SERVICE_ERROR_CODE))
            .map(|v| v.as_str().parse::<u16>().unwrap_or(500));
        match failed {
            Some(status) => Err(api_error(&answer.payload, status)),
            None => Ok(answer.payload.to_vec()),
        }
    }

    /// A key API call (`docs/keys.md`): the answer's JSON bytes.
    pub async fn keys<B: Serialize>(&self, op: &str, body: &B) -> Result<Vec<u8>, SdkError> {
        let body = serde_json::to_vec(body).map_err(|e| SdkError::Transport(e.to_string()))?;
        match &self.nats {
            Some(client) => {
                let subject = sealpost_keys_client::api::subject(&self.tenant, op)
                    .ok_or_else(|| SdkError::Transport(format!("no key operation '{op}'")))?;
                self.nats_request(client, subject, body).await
            }
            None => {
                self.http("the key API")?
                    .post(
                        &format!("/v1/keys/{op}"),
                        body.into(),
                        "application/json",
                        None,
                    )
                    .await
            }
        }
    }

    /// Stores a sealed payload (`POST /v1/blobs`).
    pub async fn upload(&self, sealed: Vec<u8>) -> Result<StoredBlob, SdkError> {
        let answer = self
            .http("uploading")?
            .post("/v1/blobs", sealed.into(), "application/octet-stream", None)
            .await?;
        serde_json::from_slice(&answer)
            .map_err(|e| SdkError::Transport(format!("the blob answer: {e}")))
    }

    /// Sends (`sealpost.cmd.<tenant>.send`, or `POST /v1/messages`): the reply's JSON.
    pub async fn send(&self, command: &serde_json::Value) -> Result<serde_json::Value, SdkError> {
        let body = serde_json::to_vec(command).map_err(|e| SdkError::Transport(e.to_string()))?;
        let answer = match &self.nats {
            Some(client) => {
                self.nats_request(client, format!("sealpost.cmd.{}.send", self.tenant), body)
                    .await?
            }
            None => {
                self.http("sending")?
                    .post("/v1/messages", body.into(), "application/json", None)
                    .await?
            }
        };
        serde_json::from_slice(&answer)
            .map_err(|e| SdkError::Transport(format!("the send answer: {e}")))
    }
}
