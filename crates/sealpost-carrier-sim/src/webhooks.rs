//! Receipts: one task per accepted message waits for its delivery (or expiry) moment and pushes
//! signed events to the webhook URL, retrying each with backoff (100 ms doubling to 5 s) until a
//! 2xx, as Pub/Sub does. At most `webhook_concurrency` requests are in flight; a task waiting out
//! a backoff holds no slot. Every wait ends early when the simulator shuts down.

use std::sync::Arc;
use std::time::Duration;

use sealpost_carriers::webhook::{event_envelope, sign, RbmEventWire, SIGNATURE_HEADER};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::server::{Phase, Shared};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Starts the receipt task for a message just accepted.
pub(crate) fn schedule(
    sh: &Arc<Shared>,
    message_id: &str,
    recipient: Arc<str>,
    offline: bool,
    expire_time: Option<OffsetDateTime>,
) {
    let until_expiry = expire_time.map(|t| {
        let left = t - OffsetDateTime::now_utc();
        left.try_into().unwrap_or(Duration::ZERO)
    });
    let delivery_in = sh.cfg.receipt_delay;
    // Offline without expiry: nothing will ever happen to it.
    let (wait, expires) = match (offline, until_expiry) {
        (true, None) => return,
        (true, Some(e)) => (e, true),
        (false, Some(e)) if e < delivery_in => (e, true),
        (false, _) => (delivery_in, false),
    };
    let sh = sh.clone();
    let message_id = message_id.to_owned();
    tokio::spawn(async move {
        let mut shutdown = sh.shutdown.clone();
        if !sleep_unless_shutdown(wait, &mut shutdown).await {
            return;
        }
        if expires {
            expire(&sh, &message_id, &recipient, &mut shutdown).await;
        } else {
            deliver(&sh, &message_id, &recipient, &mut shutdown).await;
        }
    });
}

async fn expire(
    sh: &Shared,
    message_id: &str,
    recipient: &str,
    shutdown: &mut watch::Receiver<bool>,
) {
    let pending = {
        let mut st = sh.lock();
        match st.messages.get_mut(message_id) {
            Some(m) if m.phase == Phase::Pending => {
                m.phase = Phase::Revoked;
                true
            }
            _ => false,
        }
    };
    if pending {
        let body = envelope(sh, message_id, recipient, "TTL_EXPIRATION_REVOKED");
        push(sh, &body, shutdown).await;
    }
}

async fn deliver(
    sh: &Shared,
    message_id: &str,
    recipient: &str,
    shutdown: &mut watch::Receiver<bool>,
) {
    let (out_of_order, dup_delivered, dup_read) = {
        let mut st = sh.lock();
        match st.messages.get_mut(message_id) {
            // Revoked before its delivery moment: its receipts are cancelled.
            Some(m) if m.phase == Phase::Pending => m.phase = Phase::Delivered,
            _ => return,
        }
        let f = st.faults.clone();
        (
            st.draw() < f.out_of_order_receipt,
            st.draw() < f.duplicate_receipt,
            st.draw() < f.duplicate_receipt,
        )
    };
    let delivered = envelope(sh, message_id, recipient, "DELIVERED");
    let read = envelope(sh, message_id, recipient, "READ");
    let (first, first_dup, second, second_dup) = if out_of_order {
        (&read, dup_read, &delivered, dup_delivered)
    } else {
        (&delivered, dup_delivered, &read, dup_read)
    };
    if !push(sh, first, shutdown).await || (first_dup && !push(sh, first, shutdown).await) {
        return;
    }
    // In order, READ comes one receipt delay after DELIVERED; out of order, at once.
    if !out_of_order && !sleep_unless_shutdown(sh.cfg.receipt_delay, shutdown).await {
        return;
    }
    if push(sh, second, shutdown).await && second_dup {
        push(sh, second, shutdown).await;
    }
}

fn envelope(sh: &Shared, message_id: &str, recipient: &str, kind: &str) -> Vec<u8> {
    event_envelope(&RbmEventWire {
        agent_id: Some(sh.cfg.agent_id.clone()),
        sender_phone_number: Some(recipient.to_owned()),
        event_type: Some(kind.to_owned()),
        // Unique per event and stable across redeliveries and simulator restarts.
        event_id: Some(format!("{message_id}:{kind}")),
        message_id: Some(message_id.to_owned()),
        send_time: OffsetDateTime::now_utc().format(&Rfc3339).ok(),
    })
}

/// Pushes `body` until some receiver answers 2xx. False if it gave up: shutdown, or no webhook
/// URL configured (the event is dropped, as an agent without a webhook gets nothing).
async fn push(sh: &Shared, body: &[u8], shutdown: &mut watch::Receiver<bool>) -> bool {
    let signature = sign(body, sh.cfg.client_token.expose());
    let mut backoff = FIRST_BACKOFF;
    loop {
        if *shutdown.borrow() {
            return false;
        }
        let Some(url) = sh.lock().webhook_url.clone() else {
            return false;
        };
        let ok = {
            let Ok(_slot) = sh.webhook_slots.acquire().await else {
                return false;
            };
            let sent = sh
                .http
                .post(&*url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, &signature)
                .body(body.to_vec())
                .send()
                .await;
            matches!(sent, Ok(resp) if resp.status().is_success())
        };
        {
            let mut st = sh.lock();
            if ok {
                st.stats.webhooks_sent += 1;
            } else {
                st.stats.webhook_failures += 1;
            }
        }
        if ok {
            return true;
        }
        if !sleep_unless_shutdown(backoff, shutdown).await {
            return false;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Sleeps `d`; false if the simulator shut down first.
async fn sleep_unless_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.changed() => false,
    }
}
