//! Status queries answered from the `messages` view (`GET /v1/messages/{id}`,
//! `sealpost.qry.<tenant>.status`). The gateway falls back to the message's events when the view
//! has not seen it yet or Postgres is unreachable, so a status never fails for the view's sake.

use std::sync::Arc;
use std::time::Duration;

use sealpost_gateway::StatusSource;
use sqlx::PgPool;

use crate::config::Config;

#[derive(Debug)]
struct ViewStatus {
    pool: PgPool,
}

#[async_trait::async_trait]
impl StatusSource for ViewStatus {
    async fn status(
        &self,
        tenant: &str,
        message_id: &str,
    ) -> Result<Option<serde_json::Value>, String> {
        let row = sealpost_projections::message_row(&self.pool, tenant, message_id)
            .await
            .map_err(|e| format!("reading the messages view: {e}"))?;
        row.map(serde_json::to_value)
            .transpose()
            .map_err(|e| format!("encoding a messages row: {e}"))
    }
}

/// The view as a status source, when Postgres is configured. The pool connects lazily, so the
/// gateway starts (and answers from events) even while Postgres is down.
pub fn source(cfg: &Config) -> Option<Arc<dyn StatusSource>> {
    let url = cfg.postgres.resolved_url().ok()?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(cfg.postgres.max_connections)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(&url)
        .map_err(
            |e| tracing::warn!(error = %e, "invalid PostgreSQL URL; status answers from events"),
        )
        .ok()?;
    Some(Arc::new(ViewStatus { pool }))
}
