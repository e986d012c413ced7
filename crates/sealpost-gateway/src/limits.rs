//! Cluster-wide rate limits and daily quotas: every gateway draws from counters in JetStream KV,
//! in blocks, so N gateways together give a tenant its configured rate and quota, and a
//! restart keeps the day's count.
//!
//! - **Counters.** `SEALPOST_QUOTAS` holds `<tenant>.<day>` (UTC days since the epoch): the
//!   decimal count of sends the gateways have *reserved* that day. `SEALPOST_RATES` holds
//!   `<tenant>`: the tenant's token bucket, `<tokens> <unix ms>` (tokens as a decimal, refilled at
//!   `rate_per_sec` up to `burst` from that instant). A reservation is a compare-and-set
//!   (`update` at the read revision, i.e. `Nats-Expected-Last-Subject-Sequence`), retried on a
//!   conflict, so neither passes its limit whatever the number of gateways.
//! - **Blocks.** A gateway reserves `max(1, min(cap, available / 8))` at once and spends them
//!   locally, one per send (`cap`: 100 of a quota; `rate / 16`, 1 to 64, of a rate). A refunded
//!   quota reservation (a duplicate, a failed accept) goes back into the block. A rate block is
//!   kept at most one second, so tokens reserved long ago cannot add to a later burst.
//! - **Tolerance.** Nothing is admitted beyond the quota, or beyond the bucket plus one rate
//!   block per gateway. A send can be refused early because other gateways hold reservations
//!   they have not used yet: at most one block per other gateway (and, for a quota, the block a
//!   killed gateway held, for the rest of the day).
//!
//! Must not: admit a send when the counters cannot be read or written (that is `unavailable`,
//! retried by the client), or keep anything a restart must not lose.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use tokio::sync::{Mutex, OnceCell};

use crate::error::{ApiError, ErrorCode};
use crate::tenants::Tenant;

/// The KV bucket of daily quotas.
pub const QUOTA_BUCKET: &str = "SEALPOST_QUOTAS";
/// The KV bucket of per-second rate windows.
pub const RATE_BUCKET: &str = "SEALPOST_RATES";

/// The largest block of a daily quota one gateway reserves at once.
const QUOTA_BLOCK_CAP: u64 = 100;
/// How many compare-and-set rounds a reservation tries before giving up as `unavailable`.
const MAX_ROUNDS: u32 = 32;

/// The two kinds of limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Rate,
    Quota,
}

/// What this gateway holds reserved for one tenant.
#[derive(Debug, Default)]
struct Block {
    /// The quota's day, or for a rate the unix ms after which the block is dropped.
    period: u64,
    left: u64,
    /// Refuse without asking the shared counter again before this unix ms (the quota's day is
    /// used up, or the bucket is empty until then): under overload a refusal costs no KV round
    /// trip.
    refused_until: u64,
}

/// A reservation's answer: how many sends were granted, or when to ask again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Sends(u64),
    RetryAt(u64),
}

/// The shared limits, for one gateway process. Cheap to share.
#[derive(Debug)]
pub struct Limits {
    js: jetstream::Context,
    quotas: OnceCell<kv::Store>,
    rates: OnceCell<kv::Store>,
    blocks: std::sync::Mutex<Blocks>,
}

/// This gateway's blocks, by tenant and kind; each behind its own async lock.
type Blocks = HashMap<(String, Kind), Arc<Mutex<Block>>>;

fn unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "{what}");
    ApiError::unavailable("the shared limits store is unavailable; retry the same request")
}

impl Limits {
    pub fn new(client: async_nats::Client) -> Self {
        Self {
            js: jetstream::new(client),
            quotas: OnceCell::new(),
            rates: OnceCell::new(),
            blocks: Default::default(),
        }
    }

    async fn store(&self, kind: Kind) -> Result<&kv::Store, ApiError> {
        let (cell, bucket) = match kind {
            Kind::Rate => (&self.rates, RATE_BUCKET),
            Kind::Quota => (&self.quotas, QUOTA_BUCKET),
        };
        cell.get_or_try_init(|| async {
            self.js.get_key_value(bucket).await.map_err(|e| {
                unavailable(
                    &format!("KV bucket {bucket} missing; run `sealpost provision`"),
                    e,
                )
            })
        })
        .await
    }

    fn block(&self, tenant: &Tenant, kind: Kind) -> Arc<Mutex<Block>> {
        let mut blocks = self
            .blocks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        blocks
            .entry((tenant.id.as_str().to_owned(), kind))
            .or_default()
            .clone()
    }

    /// Admits one send under the tenant's cluster-wide token bucket (`rate_per_sec`, `burst`),
    /// shared by every gateway.
    pub async fn admit_rate(&self, tenant: &Tenant, unix_ms: u64) -> Result<(), ApiError> {
        if tenant.config.rate_per_sec == 0.0 {
            return Ok(());
        }
        let rate = tenant.config.rate_per_sec;
        let burst = f64::from(tenant.config.burst.max(1));
        let cap = ((rate / 16.0) as u64).clamp(1, 64);
        let block = self.block(tenant, Kind::Rate);
        let mut b = block.lock().await;
        if b.period < unix_ms {
            b.left = 0;
        }
        if b.left == 0 && b.refused_until <= unix_ms {
            let key = tenant.id.as_str().to_owned();
            // Boxed (as below): the KV round trip is taken once per block, and its future would
            // otherwise be part of every send's.
            match Box::pin(self.reserve_tokens(&key, rate, burst, cap, unix_ms)).await? {
                Grant::Sends(n) => {
                    *b = Block {
                        period: unix_ms + 1000,
                        left: n,
                        refused_until: 0,
                    }
                }
                Grant::RetryAt(at) => b.refused_until = at,
            }
        }
        if b.left > 0 {
            b.left -= 1;
            return Ok(());
        }
        let wait_ms = b.refused_until.saturating_sub(unix_ms).max(1);
        Err(ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "tenant '{}' is over its rate limit of {} sends/s (across all gateways); retry \
                 after {wait_ms} ms",
                tenant.id.as_str(),
                tenant.config.rate_per_sec
            ),
        )
        .with_retry_after_ms(wait_ms))
    }

    /// Reserves one send of the tenant's daily quota (`day` = UTC days since the epoch), shared
    /// by every gateway and kept across restarts.
    pub async fn reserve_quota(&self, tenant: &Tenant, day: u64) -> Result<(), ApiError> {
        let Some(limit) = tenant.config.daily_quota else {
            return Ok(());
        };
        let block = self.block(tenant, Kind::Quota);
        // One reservation at a time per tenant: the sends waiting behind it are served from
        // the block it brings.
        let mut b = block.lock().await;
        if b.period != day {
            *b = Block {
                period: day,
                ..Block::default()
            };
        }
        if b.left == 0 && b.refused_until == 0 {
            let key = format!("{}.{day}", tenant.id.as_str());
            match Box::pin(self.reserve_count(&key, limit, QUOTA_BLOCK_CAP)).await? {
                0 => b.refused_until = u64::MAX,
                n => b.left = n,
            }
        }
        if b.left > 0 {
            b.left -= 1;
            return Ok(());
        }
        Err(ApiError::new(
            ErrorCode::QuotaExceeded,
            format!(
                "tenant '{}' used its daily quota of {limit} sends; it resets at 00:00 UTC",
                tenant.id.as_str()
            ),
        ))
    }

    /// Gives back a reservation that did not become an accepted send (a duplicate or an error):
    /// it returns to this gateway's block for the day.
    pub async fn refund_quota(&self, tenant: &Tenant, day: u64) {
        if tenant.config.daily_quota.is_none() {
            return;
        }
        let block = self.block(tenant, Kind::Quota);
        let mut b = block.lock().await;
        if b.period == day {
            b.left += 1;
        }
    }

    /// Adds a block to the daily count `key` by compare-and-set; returns its size (0: the limit
    /// is reached). An unreadable count is taken as the limit reached.
    async fn reserve_count(&self, key: &str, limit: u64, cap: u64) -> Result<u64, ApiError> {
        self.compare_and_set(Kind::Quota, key, |value| {
            let used = value.map_or(Some(0), |v| std::str::from_utf8(v).ok()?.parse().ok());
            let remaining = limit.saturating_sub(used.unwrap_or(limit));
            if remaining == 0 {
                return Step::Answer(0);
            }
            let grant = (remaining / 8).clamp(1, cap).min(remaining);
            Step::Write((limit - remaining + grant).to_string(), grant)
        })
        .await
    }

    /// Takes a block of tokens from the bucket `key` by compare-and-set. A missing or unreadable
    /// bucket is full.
    async fn reserve_tokens(
        &self,
        key: &str,
        rate: f64,
        burst: f64,
        cap: u64,
        now_ms: u64,
    ) -> Result<Grant, ApiError> {
        self.compare_and_set(Kind::Rate, key, |value| {
            let (tokens, last_ms) = value.and_then(parse_bucket).unwrap_or((burst, now_ms));
            let elapsed = now_ms.saturating_sub(last_ms) as f64 / 1000.0;
            let tokens = (tokens + elapsed * rate).min(burst);
            if tokens < 1.0 {
                let wait_ms = ((1.0 - tokens) / rate * 1000.0).ceil() as u64;
                return Step::Answer(Grant::RetryAt(now_ms + wait_ms.max(1)));
            }
            let whole = tokens.floor() as u64;
            let grant = (whole / 8).clamp(1, cap).min(whole);
            let value = format!("{} {}", tokens - grant as f64, now_ms.max(last_ms));
            Step::Write(value, Grant::Sends(grant))
        })
        .await
    }

    /// Reads `key` and writes what `decide` makes of its value, at the read revision; on a
    /// conflict (another gateway wrote first, or the replica read was behind) reads again.
    async fn compare_and_set<T>(
        &self,
        kind: Kind,
        key: &str,
        decide: impl Fn(Option<&[u8]>) -> Step<T>,
    ) -> Result<T, ApiError> {
        let store = self.store(kind).await?;
        for round in 0..MAX_ROUNDS {
            let entry = store
                .entry(key)
                .await
                .map_err(|e| unavailable("reading a shared limit", e))?;
            let (value, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => (Some(&e.value[..]), e.revision),
                Some(e) => (None, e.revision),
                None => (None, 0),
            };
            let (value, answer) = match decide(value) {
                Step::Answer(answer) => return Ok(answer),
                Step::Write(value, answer) => (value, answer),
            };
            match store.update(key, value.into(), revision).await {
                Ok(_) => return Ok(answer),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    tokio::time::sleep(Duration::from_micros(200 * u64::from(round + 1))).await;
                }
                Err(e) => return Err(unavailable("writing a shared limit", e)),
            }
        }
        Err(unavailable(
            "a shared limit stayed contended",
            format!("{MAX_ROUNDS} compare-and-set rounds"),
        ))
    }
}

/// What [`Limits::compare_and_set`] does with a value: answer without writing, or write.
enum Step<T> {
    Answer(T),
    Write(String, T),
}

/// `<tokens> <unix ms>` as stored in `SEALPOST_RATES`.
fn parse_bucket(value: &[u8]) -> Option<(f64, u64)> {
    let text = std::str::from_utf8(value).ok()?;
    let (tokens, at) = text.split_once(' ')?;
    let tokens: f64 = tokens.parse().ok()?;
    tokens.is_finite().then_some(())?;
    Some((tokens, at.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::parse_bucket;

    #[test]
    fn given_a_stored_bucket_when_parsed_then_tokens_and_instant_come_back() {
        assert_eq!(
            parse_bucket(b"2.5 1700000000123"),
            Some((2.5, 1_700_000_000_123))
        );
        assert_eq!(parse_bucket(b"0 0"), Some((0.0, 0)));
    }

    #[test]
    fn given_a_malformed_bucket_when_parsed_then_it_is_none() {
        for bad in [
            &b""[..],
            b"2.5",
            b"x 1",
            b"2.5 -1",
            b"NaN 1",
            b"inf 1",
            b"\xff 1",
        ] {
            assert_eq!(parse_bucket(bad), None, "{bad:?}");
        }
    }
}
