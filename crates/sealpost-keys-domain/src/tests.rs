//! Given (events), when (command), then (events or error): one test per row of the rules table.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use time::macros::datetime;

use super::*;

const T0: OffsetDateTime = datetime!(2026-06-01 12:00 UTC);
const TENANT: &str = "acme-corp";

fn policy() -> KeysPolicy {
    KeysPolicy {
        enrollment_key: None,
        retire_after: Duration::from_secs(7 * 86_400),
    }
}

fn mdm() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[5; 32])
}

fn enrolled_policy() -> KeysPolicy {
    KeysPolicy {
        enrollment_key: Some(mdm().verifying_key()),
        ..policy()
    }
}

fn public(n: u8) -> Vec<u8> {
    vec![n; 32]
}

fn publish(device: &str, key_id: &str, n: u8) -> PublishKey {
    PublishKey {
        tenant: TENANT.into(),
        device_id: device.into(),
        key_id: key_id.into(),
        kem_id: KEM_X25519_HKDF_SHA256,
        public_key: public(n),
        expires_at: T0 + Duration::from_secs(365 * 86_400),
        enrollment: None,
        marked_bad: false,
        at: T0,
    }
}

fn published(device: &str, key_id: &str, n: u8) -> PublishedKey {
    PublishedKey {
        device_id: device.into(),
        key_id: key_id.into(),
        kem_id: KEM_X25519_HKDF_SHA256,
        public_key: hex::encode(public(n)),
        fingerprint: hex::encode(fingerprint(KEM_X25519_HKDF_SHA256, &public(n))),
        enrolled: false,
        created_at: T0,
        expires_at: T0 + Duration::from_secs(365 * 86_400),
    }
}

fn signed(device: &str, n: u8, key: &ed25519_dalek::SigningKey) -> SignedEnrollment {
    let statement = EnrollmentStatement {
        tenant: TENANT.into(),
        device_id: device.into(),
        attestation_sha256: [3; 32],
        key_fingerprint: fingerprint(KEM_X25519_HKDF_SHA256, &public(n)),
    };
    let signature = statement.sign(key).unwrap();
    SignedEnrollment {
        statement,
        signature,
    }
}

struct Given(RecipientKeys);

fn given(events: Vec<KeysEvent>) -> Given {
    let mut state = RecipientKeys::default();
    for e in events {
        state.apply_event(e);
    }
    Given(state)
}

impl Given {
    fn when(&self, command: KeysCommand, policy: &KeysPolicy) -> Result<Vec<KeysEvent>, KeysError> {
        let result = self.0.decide(command.clone(), policy);
        // Whatever a command wrote, applying it and deciding again writes nothing new (for the
        // idempotent commands) or decides from the new state: never a panic.
        if let Ok(events) = &result {
            let mut after = self.0.clone();
            for e in events.clone() {
                after.apply_event(e);
            }
            let _ = after.decide(command, policy);
        }
        result
    }
}

fn first_key() -> KeysEvent {
    KeysEvent::KeyPublished(published("phone", "k1", 1))
}

#[test]
fn a_first_key_of_a_device_is_published_with_its_fingerprint() {
    let events = given(vec![])
        .when(
            KeysCommand::Publish(Box::new(publish("phone", "k1", 1))),
            &policy(),
        )
        .unwrap();
    assert_eq!(events, vec![first_key()]);
}

#[test]
fn the_same_key_published_again_writes_nothing_and_another_key_under_its_id_is_refused() {
    let g = given(vec![first_key()]);
    assert_eq!(
        g.when(
            KeysCommand::Publish(Box::new(publish("phone", "k1", 1))),
            &policy()
        ),
        Ok(vec![])
    );
    assert_eq!(
        g.when(
            KeysCommand::Publish(Box::new(publish("phone", "k1", 2))),
            &policy()
        ),
        Err(KeysError::KeyIdReused("k1".into()))
    );
}

#[test]
fn a_key_that_is_not_x25519_or_not_32_bytes_or_already_expired_is_refused() {
    let g = given(vec![]);
    let mut p = publish("phone", "k1", 1);
    p.kem_id = 0x0021;
    assert_eq!(
        g.when(KeysCommand::Publish(Box::new(p)), &policy()),
        Err(KeysError::UnsupportedKem(0x0021))
    );
    let mut p = publish("phone", "k1", 1);
    p.public_key = vec![1; 31];
    assert_eq!(
        g.when(KeysCommand::Publish(Box::new(p)), &policy()),
        Err(KeysError::BadPublicKey(31))
    );
    let mut p = publish("phone", "k1", 1);
    p.expires_at = T0;
    assert_eq!(
        g.when(KeysCommand::Publish(Box::new(p)), &policy()),
        Err(KeysError::AlreadyExpired)
    );
}

#[test]
fn a_key_on_the_bad_key_list_is_refused_and_a_resend_of_a_published_one_stays_a_resend() {
    // Given no key, when a key marked bad is published, then it is refused.
    let mut p = publish("phone", "k1", 1);
    p.marked_bad = true;
    assert_eq!(
        given(vec![]).when(KeysCommand::Publish(Box::new(p.clone())), &policy()),
        Err(KeysError::KeyMarkedBad)
    );
    // Given the key published before it was marked, a resend writes nothing (it is revoked
    // through `revoke`, not by refusing its resend).
    assert_eq!(
        given(vec![first_key()]).when(KeysCommand::Publish(Box::new(p)), &policy()),
        Ok(vec![])
    );
}

#[test]
fn where_enrollment_is_required_a_key_needs_a_valid_statement_for_its_device_and_key() {
    let g = given(vec![]);
    let p = enrolled_policy();
    assert_eq!(
        g.when(
            KeysCommand::Publish(Box::new(publish("phone", "k1", 1))),
            &p
        ),
        Err(KeysError::EnrollmentRequired)
    );
    // Signed by another key.
    let mut cmd = publish("phone", "k1", 1);
    cmd.enrollment = Some(signed(
        "phone",
        1,
        &ed25519_dalek::SigningKey::from_bytes(&[6; 32]),
    ));
    assert!(matches!(
        g.when(KeysCommand::Publish(Box::new(cmd)), &p),
        Err(KeysError::EnrollmentInvalid(_))
    ));
    // For another device.
    let mut cmd = publish("phone", "k1", 1);
    cmd.enrollment = Some(signed("tablet", 1, &mdm()));
    assert_eq!(
        g.when(KeysCommand::Publish(Box::new(cmd)), &p),
        Err(KeysError::EnrollmentInvalid(
            "it names another device".into()
        ))
    );
    // For another key.
    let mut cmd = publish("phone", "k1", 1);
    cmd.enrollment = Some(signed("phone", 2, &mdm()));
    assert!(matches!(
        g.when(KeysCommand::Publish(Box::new(cmd)), &p),
        Err(KeysError::EnrollmentInvalid(e)) if e.contains("another key")
    ));
    // Valid: published and marked enrolled.
    let mut cmd = publish("phone", "k1", 1);
    cmd.enrollment = Some(signed("phone", 1, &mdm()));
    let mut want = published("phone", "k1", 1);
    want.enrolled = true;
    assert_eq!(
        g.when(KeysCommand::Publish(Box::new(cmd)), &p),
        Ok(vec![KeysEvent::KeyPublished(want)])
    );
}

#[test]
fn a_new_key_for_a_device_with_an_active_key_rotates_it_and_the_old_one_retires_later() {
    let g = given(vec![first_key()]);
    let events = g
        .when(
            KeysCommand::Publish(Box::new(publish("phone", "k2", 2))),
            &policy(),
        )
        .unwrap();
    assert_eq!(
        events,
        vec![KeysEvent::KeyRotated(KeyRotated {
            key: published("phone", "k2", 2),
            previous_key_id: "k1".into(),
            previous_retires_at: T0 + Duration::from_secs(7 * 86_400),
        })]
    );
    let after = given(vec![first_key(), events[0].clone()]);
    assert_eq!(after.0.active_key("phone").unwrap().key.key_id, "k2");
    assert_eq!(
        after.0.keys["k1"].retires_at,
        Some(T0 + Duration::from_secs(7 * 86_400))
    );
    // Another device's first key is a publish, not a rotation.
    assert!(matches!(
        after
            .when(
                KeysCommand::Publish(Box::new(publish("tablet", "k3", 3))),
                &policy()
            )
            .unwrap()[..],
        [KeysEvent::KeyPublished(_)]
    ));
}

fn revoke(key_id: &str) -> KeysCommand {
    KeysCommand::Revoke {
        key_id: key_id.into(),
        reason: RevokeReason::Compromised,
        at: T0,
    }
}

#[test]
fn revoking_an_unknown_key_is_refused_a_revoked_one_writes_nothing_and_a_live_one_is_revoked() {
    assert_eq!(
        given(vec![]).when(revoke("k1"), &policy()),
        Err(KeysError::UnknownKey("k1".into()))
    );
    let revoked = KeysEvent::KeyRevoked(KeyRevoked {
        key_id: "k1".into(),
        reason: RevokeReason::Compromised,
        at: T0,
    });
    assert_eq!(
        given(vec![first_key()]).when(revoke("k1"), &policy()),
        Ok(vec![revoked.clone()])
    );
    let g = given(vec![first_key(), revoked]);
    assert_eq!(g.when(revoke("k1"), &policy()), Ok(vec![]));
    // A revoked key is no longer active: the device needs a new key before uploading packages.
    assert!(g.0.active_key("phone").is_none());
}

/// A package's bytes in these tests.
fn bytes_of(h: &str) -> String {
    format!("kp{h}")
}

fn package_bytes(refs: &[&str], last: Option<&str>) -> BTreeMap<String, String> {
    refs.iter()
        .chain(last.iter())
        .map(|h| (h.to_string(), bytes_of(h)))
        .collect()
}

fn upload(refs: &[&str], last: Option<&str>) -> KeysCommand {
    KeysCommand::UploadKeyPackages {
        device_id: "phone".into(),
        hash_refs: refs.iter().map(|s| s.to_string()).collect(),
        last_resort: last.map(str::to_owned),
        key_packages: package_bytes(refs, last),
        at: T0,
    }
}

fn uploaded(refs: &[&str], last: Option<&str>) -> KeysEvent {
    KeysEvent::KeyPackagesUploaded(KeyPackagesUploaded {
        device_id: "phone".into(),
        hash_refs: refs.iter().map(|s| s.to_string()).collect(),
        last_resort: last.map(str::to_owned),
        key_packages: package_bytes(refs, last),
        at: T0,
    })
}

#[test]
fn key_packages_need_a_device_with_an_active_key_and_only_new_ones_are_recorded() {
    assert_eq!(
        given(vec![]).when(upload(&["a"], None), &policy()),
        Err(KeysError::UnknownDevice("phone".into()))
    );
    let g = given(vec![first_key()]);
    assert_eq!(
        g.when(upload(&["a", "b", "a"], Some("lr")), &policy()),
        Ok(vec![uploaded(&["a", "b"], Some("lr"))])
    );
    let g = given(vec![first_key(), uploaded(&["a", "b"], Some("lr"))]);
    assert_eq!(
        g.when(upload(&["a", "b"], Some("lr")), &policy()),
        Ok(vec![])
    );
    assert_eq!(
        g.when(upload(&["b", "c"], None), &policy()),
        Ok(vec![uploaded(&["c"], None)])
    );
}

fn claim() -> KeysCommand {
    KeysCommand::ClaimKeyPackage {
        device_id: "phone".into(),
        claimant: "sender-1".into(),
        at: T0,
    }
}

fn claimed(h: &str, last_resort: bool) -> KeysEvent {
    KeysEvent::KeyPackageClaimed(KeyPackageClaimed {
        device_id: "phone".into(),
        hash_ref: h.into(),
        last_resort,
        key_package: Some(bytes_of(h)),
        claimant: "sender-1".into(),
        at: T0,
    })
}

#[test]
fn each_key_package_is_handed_out_once_then_the_last_resort_one_which_is_kept() {
    assert_eq!(
        given(vec![first_key()]).when(claim(), &policy()),
        Err(KeysError::UnknownDevice("phone".into()))
    );
    let mut history = vec![first_key(), uploaded(&["a", "b"], Some("lr"))];
    for (want, last) in [("a", false), ("b", false), ("lr", true), ("lr", true)] {
        let events = given(history.clone()).when(claim(), &policy()).unwrap();
        assert_eq!(events, vec![claimed(want, last)]);
        history.extend(events);
    }
    let g = given(history);
    assert_eq!(g.0.packages["phone"].claimed, vec!["a", "b"]);
    // Each claim carried its package's bytes; only the kept last-resort one's remain.
    assert_eq!(
        g.0.packages["phone"].bytes.keys().collect::<Vec<_>>(),
        ["lr"]
    );
    // A claimed package uploaded again is not handed out again.
    assert_eq!(g.when(upload(&["a"], None), &policy()), Ok(vec![]));
    // Without a last-resort package, running out is an error.
    let g = given(vec![
        first_key(),
        uploaded(&["a"], None),
        claimed("a", false),
    ]);
    assert_eq!(
        g.when(claim(), &policy()),
        Err(KeysError::NoKeyPackage("phone".into()))
    );
}

#[test]
fn every_error_has_its_own_code_and_every_event_type_a_body_that_round_trips() {
    let errors = [
        KeysError::KeyIdReused("k".into()),
        KeysError::UnsupportedKem(1),
        KeysError::BadPublicKey(1),
        KeysError::AlreadyExpired,
        KeysError::EnrollmentRequired,
        KeysError::EnrollmentInvalid("x".into()),
        KeysError::UnknownKey("k".into()),
        KeysError::UnknownDevice("d".into()),
        KeysError::NoKeyPackage("d".into()),
        KeysError::KeyMarkedBad,
    ];
    let codes: std::collections::BTreeSet<_> = errors.iter().map(KeysError::code).collect();
    assert_eq!(codes.len(), errors.len());
    let events = [
        first_key(),
        KeysEvent::KeyRotated(KeyRotated {
            key: published("phone", "k2", 2),
            previous_key_id: "k1".into(),
            previous_retires_at: T0,
        }),
        KeysEvent::KeyRevoked(KeyRevoked {
            key_id: "k1".into(),
            reason: RevokeReason::MarkedBad,
            at: T0,
        }),
        uploaded(&["a"], Some("lr")),
        claimed("a", false),
    ];
    let types: std::collections::BTreeSet<_> = events.iter().map(KeysEvent::event_type).collect();
    assert_eq!(types.len(), KeyEventType::ALL.len());
    for e in events {
        let body = e.to_body().unwrap();
        assert_eq!(KeysEvent::from_body(e.event_type(), &body).unwrap(), e);
    }
}

#[test]
fn a_statement_where_enrollment_is_not_required_is_not_checked_and_the_key_is_not_marked_enrolled()
{
    let mut cmd = publish("phone", "k1", 1);
    cmd.enrollment = Some(signed("tablet", 9, &mdm()));
    assert_eq!(
        given(vec![]).when(KeysCommand::Publish(Box::new(cmd)), &policy()),
        Ok(vec![first_key()])
    );
}

#[test]
fn a_device_whose_key_was_revoked_hands_out_no_key_package() {
    let g = given(vec![
        first_key(),
        uploaded(&["a"], Some("lr")),
        KeysEvent::KeyRevoked(KeyRevoked {
            key_id: "k1".into(),
            reason: RevokeReason::Decommissioned,
            at: T0,
        }),
    ]);
    assert_eq!(
        g.when(claim(), &policy()),
        Err(KeysError::UnknownDevice("phone".into()))
    );
}
