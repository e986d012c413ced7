//! # sealpost-carrier-sim
//!
//! A simulated RBM aggregator and SMS API, in process, for the integration tests, the demo
//! (`sealpost carrier-sim`) and the bench.
//!
//! **Owns:**
//! - [`CarrierSim::start`]: an axum server on a given address (port 0 allowed) speaking the RBM
//!   REST v1 shapes of `sealpost-carriers` (send, capabilities, revoke) and the SMS API, plus
//!   `GET /sim/stats`, and Google's OAuth token endpoint for service accounts (`POST /token`,
//!   [`oauth`]) with short-lived tokens and a switch that revokes the credentials.
//! - Behaviour a delivery engine must survive, all seeded and reproducible ([`SimConfig::seed`]):
//!   real dedup by `messageId` (409 `ALREADY_EXISTS`, whatever the faults say), throttling with
//!   `Retry-After` and a carrier-wide window in which early sends count as violations, 5xx,
//!   accept-then-hang timeouts, per-recipient "no RCS" and "offline", and scripted answers per
//!   recipient ([`RunningSim::script`]).
//! - Receipts: signed (`X-Goog-Signature`) Pub/Sub-style pushes of DELIVERED, READ and
//!   TTL_EXPIRATION_REVOKED to the webhook URL, retried with backoff until a 2xx (at least once,
//!   so they survive a receiver restart), with duplicate and out-of-order faults.
//! - Introspection for assertions: [`RunningSim::stats`], [`RunningSim::accepted_ids`],
//!   [`RunningSim::requests_for`], [`RunningSim::notices`], [`RunningSim::revoked`], and
//!   [`RunningSim::handset`] (what the recipient's device received: the payload link and digest,
//!   for the SDK's end-to-end tests).
//!
//! **Must not:** fetch the `fileUrl` (a presigned URL to ciphertext) or log it (it keeps it in
//! memory only, as the handset's copy); log full phone
//! numbers; be used as a production endpoint. It keeps everything in memory.

mod config;
pub mod oauth;
mod rng;
mod server;
mod webhooks;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

pub use config::{FaultMix, Scripted, SimConfig};
use serde::Serialize;
pub use server::CarrierSim;
use server::{Phase, Shared};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Counters since start; also served as JSON at `GET /sim/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SimStats {
    /// RBM send requests received (any answer).
    pub sends: u64,
    /// Sends accepted as new messages (including accept-then-hang timeouts).
    pub accepted: u64,
    /// Sends answered 409 because the message id was accepted before.
    pub duplicates_409: u64,
    pub throttled: u64,
    pub server_errors: u64,
    /// Sends accepted and then left hanging (the client times out).
    pub timeouts: u64,
    pub not_capable: u64,
    pub permanent: u64,
    /// Webhook pushes answered 2xx (duplicates included).
    pub webhooks_sent: u64,
    /// Webhook attempts that got no 2xx (each is retried).
    pub webhook_failures: u64,
    pub revokes: u64,
    pub sms_accepted: u64,
    pub sms_duplicates: u64,
    /// RBM sends that arrived inside an open Retry-After window.
    pub throttle_violations: u64,
    /// Of those, the ones that arrived more than 10 ms after the 429 that opened the window was
    /// answered: a client that reacts at once has them in flight already only within the first
    /// milliseconds.
    pub throttle_violations_after_10ms: u64,
    /// The latest arrival of a violation after its window's 429, in ms.
    pub throttle_violation_max_ms: u64,
    /// Access tokens the token endpoint issued.
    pub tokens_issued: u64,
    /// Token requests refused (bad or revoked assertion).
    pub token_refusals: u64,
    /// RBM requests answered 401 (no, wrong, expired or revoked token).
    pub auth_rejections: u64,
    /// Of those, requests with a token this simulator issued that had expired.
    pub expired_token_rejections: u64,
}

/// The test key of the simulator's service account (`testdata/test-service-account.json`): a
/// 2048-bit RSA key made for these tests only, never registered anywhere.
pub const TEST_SERVICE_ACCOUNT_JSON: &str = include_str!("../testdata/test-service-account.json");

/// One RBM send for a message id, as the simulator saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestRecord {
    /// When the request arrived (before any simulated latency).
    pub at: Instant,
    /// The status it was answered with (200 for an accepted send, even one left hanging).
    pub status: u16,
}

/// One SMS notice the SMS API accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeRecord {
    /// The `client_ref` (our message id).
    pub message_id: String,
    pub text: String,
}

/// What a handset received for an RBM message with a payload link: the link and the digest,
/// and the message's device link when Sealpost sent one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandsetMessage {
    pub file_url: String,
    pub sha256: String,
    pub link: Option<String>,
}

/// A running simulator. Dropping it stops the server and every pending webhook.
#[derive(Debug)]
pub struct RunningSim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<()>,
}

impl RunningSim {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`: the base URL for both `RbmConfig` and `SmsConfig`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next sends to `recipient` get these answers, in order; then the default behaviour.
    /// A resubmission of an already accepted message id is still answered 409 and does not use
    /// up a scripted answer.
    pub fn script(&self, recipient: &str, responses: Vec<Scripted>) {
        self.shared
            .lock()
            .scripts
            .entry(recipient.to_owned())
            .or_default()
            .extend(responses);
    }

    /// Where receipts go from now on (pending retries pick it up too). `None` drops them.
    pub fn set_webhook_url(&self, url: Option<String>) {
        self.shared.lock().webhook_url = url.map(Arc::from);
    }

    /// Revokes (`true`) or restores the agent's credentials: while revoked, the token endpoint
    /// answers 400 `invalid_grant`, every RBM request 401, and the tokens issued before are
    /// forgotten, as when an operator deletes the key the sender uses.
    pub fn set_credentials_revoked(&self, revoked: bool) {
        let mut st = self.shared.lock();
        st.credentials_revoked = revoked;
        if revoked {
            st.tokens.clear();
        }
    }

    /// Every access token the token endpoint issued (secrets: for leak scans).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared.lock().issued.clone()
    }

    /// The token endpoint's URL: `http://<addr>/token`.
    pub fn token_uri(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn set_faults(&self, f: FaultMix) {
        self.shared.lock().faults = f;
    }

    pub fn stats(&self) -> SimStats {
        self.shared.lock().stats.clone()
    }

    /// The message ids accepted as new. The simulator dedups by message id (a resubmission is
    /// answered 409), so whether a sender submitted a message twice shows only in
    /// [`RunningSim::requests_for`].
    pub fn accepted_ids(&self) -> HashSet<String> {
        self.shared.lock().messages.keys().cloned().collect()
    }

    /// Every RBM send for `message_id`, in arrival order.
    pub fn requests_for(&self, message_id: &str) -> Vec<RequestRecord> {
        self.shared
            .lock()
            .requests
            .get(message_id)
            .cloned()
            .unwrap_or_default()
    }

    pub fn throttle_violations(&self) -> u64 {
        self.shared.lock().stats.throttle_violations
    }

    /// SMS notices accepted, in order (a reused `client_ref` is answered 409 and not listed).
    pub fn notices(&self) -> Vec<NoticeRecord> {
        self.shared.lock().notices.clone()
    }

    /// Revoked by a DELETE before delivery, or by TTL expiry.
    pub fn revoked(&self, message_id: &str) -> bool {
        matches!(
            self.shared.lock().messages.get(message_id).map(|m| m.phase),
            Some(Phase::Revoked)
        )
    }

    /// What the recipient's handset got for `message_id` (its payload link and digest), as a
    /// device app would read it: for end-to-end tests of the client SDK.
    pub fn handset(&self, message_id: &str) -> Option<HandsetMessage> {
        self.shared
            .lock()
            .messages
            .get(message_id)
            .and_then(|m| m.content.clone())
    }

    /// Whether the simulator has delivered `message_id` (DELIVERED is sent or being sent).
    pub fn delivered(&self, message_id: &str) -> bool {
        matches!(
            self.shared.lock().messages.get(message_id).map(|m| m.phase),
            Some(Phase::Delivered)
        )
    }

    /// Stops the server and pending webhooks, and waits for the server task to end.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        self.server.abort();
        let server = std::mem::replace(&mut self.server, tokio::spawn(async {}));
        let _ = server.await;
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.server.abort();
    }
}
