//! Mode `mls`, given/when/then: a business and a recipient's devices in one group, a device
//! that joins later through a new KeyPackage, and the refusals (tampered, replayed, not a
//! member). Each party has its own provider, whose storage holds its group state.

// Test fixtures: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use openmls::prelude::MlsGroup;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::OpenMlsProvider as _;
use sealpost_sdk::envelope::Binding;
use sealpost_sdk::mls::{self, group_id, Member};
use sealpost_sdk::OpenError;

const TENANT: &str = "acme";

fn label() -> String {
    "c3".repeat(32)
}

fn binding(message_id: &str) -> Binding {
    Binding {
        tenant: TENANT.into(),
        message_id: message_id.into(),
        recipient_label: label(),
    }
}

struct Party {
    member: Member,
    provider: OpenMlsRustCrypto,
}

fn party(name: &str) -> Party {
    Party {
        member: Member::new(name).unwrap(),
        provider: OpenMlsRustCrypto::default(),
    }
}

fn one_package(p: &Party) -> String {
    let (mut packages, _) = p.member.key_packages(&p.provider, 1).unwrap();
    packages.remove(0)
}

#[test]
fn given_a_group_of_three_devices_when_messages_are_sent_then_each_device_opens_each() {
    let business = party("acme/business");
    let devices: Vec<Party> = (0..3)
        .map(|i| party(&format!("{}/device-{i}", label())))
        .collect();
    let packages: Vec<String> = devices.iter().map(one_package).collect();
    let (mut group, handshake) = business
        .member
        .create_group(&business.provider, TENANT, &label(), &packages)
        .unwrap();
    let first = business
        .member
        .seal(
            &business.provider,
            &mut group,
            &binding("m-1"),
            Some(handshake),
            b"welcome aboard",
        )
        .unwrap();
    assert!(mls::is_mls(&first));
    let second = business
        .member
        .seal(
            &business.provider,
            &mut group,
            &binding("m-2"),
            None,
            b"second message",
        )
        .unwrap();
    for d in &devices {
        assert_eq!(
            mls::open(&d.provider, &first, &binding("m-1")).unwrap(),
            b"welcome aboard"
        );
        assert_eq!(
            mls::open(&d.provider, &second, &binding("m-2")).unwrap(),
            b"second message"
        );
        // The device's group state was persisted through its provider's storage.
        assert!(
            MlsGroup::load(d.provider.storage(), &group_id(TENANT, &label()))
                .unwrap()
                .is_some()
        );
    }
}

#[test]
fn given_a_device_added_later_when_the_next_message_carries_the_change_then_old_and_new_devices_open_it(
) {
    let business = party("acme/business");
    let phone = party("phone");
    let (mut group, handshake) = business
        .member
        .create_group(&business.provider, TENANT, &label(), &[one_package(&phone)])
        .unwrap();
    let m1 = business
        .member
        .seal(
            &business.provider,
            &mut group,
            &binding("m-1"),
            Some(handshake),
            b"one",
        )
        .unwrap();
    assert_eq!(
        mls::open(&phone.provider, &m1, &binding("m-1")).unwrap(),
        b"one"
    );

    let tablet = party("tablet");
    let added = business
        .member
        .add(&business.provider, &mut group, &[one_package(&tablet)])
        .unwrap();
    let m2 = business
        .member
        .seal(
            &business.provider,
            &mut group,
            &binding("m-2"),
            Some(added),
            b"two",
        )
        .unwrap();
    assert_eq!(
        mls::open(&phone.provider, &m2, &binding("m-2")).unwrap(),
        b"two"
    );
    assert_eq!(
        mls::open(&tablet.provider, &m2, &binding("m-2")).unwrap(),
        b"two"
    );
    // Forward secrecy of membership: the tablet cannot read what was sent before it joined.
    assert_eq!(
        mls::open(&tablet.provider, &m1, &binding("m-1")).err(),
        Some(OpenError::Tampered)
    );
}

#[test]
fn given_a_tampered_replayed_or_foreign_payload_when_opened_then_it_is_refused() {
    let business = party("acme/business");
    let phone = party("phone");
    let stranger = party("stranger");
    let (mut group, handshake) = business
        .member
        .create_group(&business.provider, TENANT, &label(), &[one_package(&phone)])
        .unwrap();
    let m1 = business
        .member
        .seal(
            &business.provider,
            &mut group,
            &binding("m-1"),
            Some(handshake),
            b"secret",
        )
        .unwrap();
    // Not a member: the Welcome is not for it, so it has no group.
    assert_eq!(
        mls::open(&stranger.provider, &m1, &binding("m-1")).err(),
        Some(OpenError::NotForThisDevice)
    );
    // Replayed under another message id: refused by the binding check...
    assert_eq!(
        mls::open(&phone.provider, &m1, &binding("m-9")).err(),
        Some(OpenError::WrongBinding("message id"))
    );
    // ...and with the binding rewritten to match, by MLS's authenticated data.
    let m2 = business
        .member
        .seal(
            &business.provider,
            &mut group,
            &binding("m-2"),
            None,
            b"next",
        )
        .unwrap();
    assert_eq!(
        mls::open(&phone.provider, &m1, &binding("m-1")).unwrap(),
        b"secret"
    );
    let mut replayed = m2.clone();
    let at = replayed.windows(3).position(|w| w == b"m-2").unwrap();
    replayed[at..at + 3].copy_from_slice(b"m-7");
    assert_eq!(
        mls::open(&phone.provider, &replayed, &binding("m-7")).err(),
        Some(OpenError::Tampered)
    );
    let mut tampered = m2.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert_eq!(
        mls::open(&phone.provider, &tampered, &binding("m-2")).err(),
        Some(OpenError::Tampered)
    );
    assert_eq!(
        mls::open(&phone.provider, &m2, &binding("m-2")).unwrap(),
        b"next"
    );
    assert_eq!(
        mls::open(&phone.provider, b"SPEV\x01\x02", &binding("m-2")).err(),
        Some(OpenError::Malformed)
    );
}
