//! The send path's key check (`key_stale`): a send whose `encryption_metadata.key_id` names a key
//! the tenant's key directory holds as revoked, or does not hold for that recipient, is refused
//! before anything is stored, so a sender cannot go on sealing to a dead key unnoticed.
//!
//! The check reads the recipient's key events (`SEALPOST_KEYS`, the source of truth) directly,
//! by the recipient's label: the keyed hash of the number with the tenant's label key
//! (`[tenants.keys] label_key`). Without a label key, or while the tenant's directory holds no
//! key at all, sends go through unchecked, as before the directory. A rotated-out key that is
//! still retiring passes: messages sealed just before a rotation are not refused.
//!
//! Each check counts in `sealpost_key_directory_lookups_total{tenant, result}`: `ok`,
//! `not_found` (unknown key id for that recipient), `stale` (revoked or marked bad) or `error`.

use std::collections::HashMap;

use sealpost_domain::{Recipient, TenantId};
use sealpost_eventstore::names::{Stream, KEY_EVENTS_PREFIX};
use sealpost_eventstore::{JetStreamEventStore, StoreConfig};
use sealpost_keyformat::{LabelKey, RecipientLabel};
use sealpost_keys_domain::{RecipientKeys, RevokeReason};

use crate::error::{ApiError, ErrorCode};

/// The tenants whose sends are checked, and where their key events are.
pub(crate) struct KeyCheck {
    store: JetStreamEventStore<RecipientKeys>,
    labels: HashMap<TenantId, LabelKey>,
    /// Tenants whose directory holds at least one key (once true, it stays true).
    populated: quick_cache::sync::Cache<TenantId, ()>,
}

impl std::fmt::Debug for KeyCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCheck")
            .field("tenants", &self.labels.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn count(tenant: &TenantId, result: &'static str) {
    sealpost_telemetry::metrics()
        .key_lookups
        .get_or_create(&sealpost_telemetry::KeyLookupLabels {
            tenant: tenant.as_str().to_owned(),
            result,
        })
        .inc();
}

fn stale(message: String) -> ApiError {
    ApiError::new(ErrorCode::KeyStale, message)
}

impl KeyCheck {
    pub(crate) fn new(client: async_nats::Client, labels: HashMap<TenantId, LabelKey>) -> Self {
        Self {
            store: JetStreamEventStore::new(
                client,
                StoreConfig {
                    stream: Stream::Keys.as_str().into(),
                    subject_prefix: KEY_EVENTS_PREFIX.into(),
                    ..StoreConfig::default()
                },
            ),
            labels,
            populated: quick_cache::sync::Cache::new(10_000),
        }
    }

    /// Whether the tenant's directory holds any key event yet.
    async fn populated(&self, tenant: &TenantId) -> Result<bool, ApiError> {
        if self.populated.get(tenant).is_some() {
            return Ok(true);
        }
        let js = async_nats::jetstream::new(self.store_client());
        let stream = js
            .get_stream(Stream::Keys.as_str())
            .await
            .map_err(|_| ApiError::unavailable("the key directory is unreachable; retry"))?;
        match stream
            .get_first_raw_message_by_subject(format!("{KEY_EVENTS_PREFIX}.{tenant}.>"), 1)
            .await
        {
            Ok(_) => {
                self.populated.insert(tenant.clone(), ());
                Ok(true)
            }
            Err(e)
                if e.kind()
                    == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound =>
            {
                Ok(false)
            }
            Err(_) => Err(ApiError::unavailable(
                "the key directory is unreachable; retry",
            )),
        }
    }

    fn store_client(&self) -> async_nats::Client {
        self.store.client().clone()
    }

    /// Refuses a send sealed to a key the directory holds as revoked or does not hold.
    pub(crate) async fn check(
        &self,
        tenant: &TenantId,
        recipient: &Recipient,
        key_id: &str,
    ) -> Result<(), ApiError> {
        let Some(label_key) = self.labels.get(tenant) else {
            return Ok(());
        };
        let label = RecipientLabel::of(label_key, tenant.as_str(), recipient.expose())
            .map_err(|_| ApiError::invalid("recipient is not an E.164 number"))?;
        let id = format!("{tenant}.{}", label.to_hex());
        // Boxed: only tenants with a key directory take this path.
        let loaded = match Box::pin(self.store.load(&id)).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "reading a recipient's keys failed");
                count(tenant, "error");
                return Err(ApiError::unavailable(
                    "the key directory is unreachable; retry",
                ));
            }
        };
        if loaded.version == 0 && !Box::pin(self.populated(tenant)).await? {
            return Ok(());
        }
        match loaded.aggregate.keys.get(key_id) {
            None => {
                count(tenant, "not_found");
                Err(stale(format!(
                    "key {key_id} is not in the key directory for this recipient; look the recipient up again and seal to a current key"
                )))
            }
            Some(k) if k.revoked.is_some() => {
                count(tenant, "stale");
                let why = match k.revoked {
                    Some(RevokeReason::MarkedBad) => "marked bad",
                    _ => "revoked",
                };
                Err(stale(format!(
                    "key {key_id} is {why}; look the recipient up again and seal to a current key"
                )))
            }
            Some(_) => {
                count(tenant, "ok");
                Ok(())
            }
        }
    }
}
