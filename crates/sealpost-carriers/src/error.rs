//! Errors of this crate. Submissions never fail with these: a send is always classified into a
//! `CarrierOutcome`. These are for building an adapter and for checking a webhook.

/// Building an adapter failed; the message says which setting to fix. Never contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum CarrierError {
    #[error("invalid carrier config: {0}")]
    Config(String),
    #[error("could not build the HTTP client ({0}); check the TLS setup of this host")]
    Client(String),
}

/// A webhook that must not be applied. The gateway answers 401 to the first two (the sender is
/// not who it says) and 400 to `Malformed` (a retry will not help). Never contains body content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook has no X-Goog-Signature header; reject it (only RBM's signed pushes count)")]
    Unsigned,
    #[error(
        "webhook signature does not match the body; reject it, and check that the configured \
         client token is the one registered with RBM"
    )]
    BadSignature,
    #[error("webhook body is malformed: {0}")]
    Malformed(&'static str),
}
