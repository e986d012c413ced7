//! Delivery errors, each naming what failed with its cause kept as the source.

/// What went wrong outside the domain: talking to JetStream. (Carrier answers are not errors
/// here; they are classified outcomes that the aggregate records.)
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// A JetStream call failed: the connection, a missing stream or consumer, or a timeout.
    /// Consumers retry with backoff; a missing stream or consumer needs `sealpost provision`.
    #[error("{what}")]
    Nats {
        what: String,
        #[source]
        source: async_nats::Error,
    },
}

impl DeliveryError {
    /// `map_err` adapter: a NATS failure while doing `what`.
    pub(crate) fn nats<E>(what: impl Into<String>) -> impl FnOnce(E) -> Self
    where
        E: Into<async_nats::Error>,
    {
        let what = what.into();
        move |e| DeliveryError::Nats {
            what,
            source: e.into(),
        }
    }
}
