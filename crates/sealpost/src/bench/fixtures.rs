//! Bench fixtures: message lifecycles as command scripts, decided by the real aggregate, for
//! `sealpost bench eventstore` and `sealpost bench projections`.
//!
//! Carrier answers here are scripted: those benches measure the event store and the projections
//! alone. (`sealpost demo` and `sealpost bench delivery` run the real workers against the carrier
//! simulator instead.)

use std::time::Duration;

use sealpost_domain::events::{EncryptionMetadata, Fallback, FallbackChannel, MessageType};
use sealpost_domain::{
    aggregate_id, AcceptMessage, CarrierOutcome, Message, MessageCommand, MessageEvent, MessageId,
    ReceiptKind, Recipient, RetryPolicy, Sha256Hex, TenantId,
};
use time::OffsetDateTime;

pub const TENANT: &str = "demo-tenant";

/// (aggregate id, accept command) for an idempotency key of the demo tenant.
pub fn accept(key: &str) -> (String, MessageCommand) {
    let tenant = TenantId::new(TENANT).expect("the demo tenant id is token-safe");
    let id = aggregate_id(&tenant, &MessageId::derive(&tenant, key));
    let cmd = accept_message(&tenant, key, "+15550100100");
    (id, MessageCommand::Accept(Box::new(cmd)))
}

/// A transactional send of `tenant` under idempotency key `key` to `recipient` (E.164): a 2 KiB
/// payload named after the key, a one-hour TTL and an SMS fallback, accepted now. The
/// integration tests use it too.
pub fn accept_message(tenant: &TenantId, key: &str, recipient: &str) -> AcceptMessage {
    AcceptMessage {
        tenant_id: tenant.clone(),
        idempotency_key: key.to_owned(),
        recipient: Recipient::new(recipient).expect("a valid E.164 number"),
        payload_ref: format!("s3://sealpost/tenants/{tenant}/{key}.enc"),
        payload_sha256: Sha256Hex::of(key.as_bytes()),
        payload_size: Some(2048),
        encryption: EncryptionMetadata {
            mls_version: "1".into(),
            cipher: "XChaCha20-Poly1305".into(),
            key_id: "user-public-key-v2".into(),
        },
        message_type: MessageType::Transactional,
        correlation_id: Some(format!("corr-{key}")),
        ttl: Some(Duration::from_secs(3600)),
        fallback: Some(Fallback {
            channel: FallbackChannel::Sms,
            notice_template: "secure_message_waiting".into(),
        }),
        at: OffsetDateTime::now_utc(),
    }
}

fn result(attempt: u32, outcome: CarrierOutcome) -> MessageCommand {
    MessageCommand::RecordCarrierResult {
        attempt,
        carrier: "rbm".into(),
        outcome,
        at: OffsetDateTime::now_utc(),
    }
}

fn acked(attempt: u32, key: &str) -> MessageCommand {
    result(
        attempt,
        CarrierOutcome::Acked {
            carrier_message_id: key.to_owned(),
        },
    )
}

fn receipt(key: &str, kind: ReceiptKind) -> MessageCommand {
    MessageCommand::RecordReceipt {
        receipt_id: format!("{key}-{kind:?}"),
        kind,
        at: OffsetDateTime::now_utc(),
    }
}

/// Accept, carrier ack, delivered, displayed, purge: five commands, five single-event appends.
pub fn happy_path_commands(key: &str) -> Vec<(String, MessageCommand)> {
    let (id, accept) = accept(key);
    let now = OffsetDateTime::now_utc();
    [
        accept,
        acked(1, key),
        receipt(key, ReceiptKind::Delivered),
        receipt(key, ReceiptKind::Displayed),
        MessageCommand::Purge { at: now },
    ]
    .into_iter()
    .map(|c| (id.clone(), c))
    .collect()
}

/// Accept, a 503, a retry that the carrier acks, delivered: four commands, five events.
pub fn retried_commands(key: &str) -> Vec<(String, MessageCommand)> {
    let (id, accept) = accept(key);
    [
        accept,
        result(
            1,
            CarrierOutcome::Transient {
                code: "503".into(),
                retry_after: None,
            },
        ),
        acked(2, key),
        receipt(key, ReceiptKind::Delivered),
    ]
    .into_iter()
    .map(|c| (id.clone(), c))
    .collect()
}

/// The events `commands` produce on a new message, decided in memory by the aggregate.
pub fn decide_all(
    commands: Vec<(String, MessageCommand)>,
    policy: &RetryPolicy,
) -> anyhow::Result<Vec<MessageEvent>> {
    let mut m = Message::default();
    let mut out = vec![];
    for (_, cmd) in commands {
        for e in m.decide(cmd, policy)? {
            cqrs_es::Aggregate::apply(&mut m, e.clone());
            out.push(e);
        }
    }
    Ok(out)
}

/// The events of [`happy_path_commands`].
pub fn happy_path_events(key: &str, policy: &RetryPolicy) -> anyhow::Result<Vec<MessageEvent>> {
    decide_all(happy_path_commands(key), policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_happy_path_is_five_commands_and_five_events() {
        assert_eq!(happy_path_commands("k").len(), 5);
        let events = happy_path_events("k", &RetryPolicy::default()).expect("legal");
        assert_eq!(events.len(), 5);
    }

    #[test]
    fn the_retried_path_is_four_commands_and_five_events() {
        assert_eq!(retried_commands("k").len(), 4);
        let events = decide_all(retried_commands("k"), &RetryPolicy::default()).expect("legal");
        assert_eq!(events.len(), 5);
    }
}
