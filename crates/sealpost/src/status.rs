//! Status queries answered from the `messages` view (`GET /v1/messages/{id}`,
//! `sealpost.qry.<tenant>.status`). The gateway falls back to folding the message's events when
//! the view has not seen it yet or Postgres is unreachable, so a status never fails for the
//! view's sake.

use std::sync::Arc;
use std::time::Duration;

use sealpost_domain::{MessageId, StatusRow, TenantId};
use sealpost_gateway::view::{StatusSource, StatusSourceError};
use sqlx::PgPool;

use crate::config::Config;

/// The `messages` view as a status source.
#[derive(Debug)]
pub struct ViewStatus {
    pool: PgPool,
}

impl ViewStatus {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait::async_trait]
impl StatusSource for ViewStatus {
    async fn status(
        &self,
        tenant: &TenantId,
        message_id: &MessageId,
    ) -> Result<Option<StatusRow>, StatusSourceError> {
        Ok(
            sealpost_projections::message_row(&self.pool, tenant.as_str(), message_id.as_str())
                .await?,
        )
    }
}

/// The view as a status source, when Postgres is configured. The pool connects lazily, so the
/// gateway starts (and answers from events) even while Postgres is down.
pub fn source(cfg: &Config) -> Option<Arc<dyn StatusSource>> {
    let url = cfg.postgres.url()?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(cfg.postgres.max_connections)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(url)
        .map_err(
            |e| tracing::warn!(error = %e, "invalid PostgreSQL URL; status answers from events"),
        )
        .ok()?;
    Some(Arc::new(ViewStatus::new(pool)))
}
