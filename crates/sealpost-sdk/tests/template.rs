//! Client-side templates, given/when/then: rendering in the sandbox, and a sealed placeholder
//! that the sender carries but only the device opens.

// Test fixtures: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use sealpost_sdk::envelope::{seal, Binding, HpkeWrapper, KeyWrapper};
use sealpost_sdk::hpke::Hpke;
use sealpost_sdk::template::{render, Content, Token};
use sealpost_sdk::{Device, Keyring, OpenError, SdkError};
use time::{Duration, OffsetDateTime};

fn device() -> Device {
    Device::new(Keyring::generate(
        "acme",
        &"d4".repeat(32),
        "phone",
        "phone-k1",
        Duration::days(30),
        OffsetDateTime::now_utc(),
    ))
}

fn wrapper(d: &Device) -> HpkeWrapper {
    let k = d.keyring.current().unwrap();
    HpkeWrapper {
        key_id: k.key_id.clone(),
        public_key: k.public().unwrap(),
    }
}

fn tokens(pairs: &[(&str, Token)]) -> BTreeMap<String, Token> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

#[test]
fn given_text_tokens_when_rendered_then_the_text_is_personalised() {
    let c = render(
        "Hello {{ name }}, your balance is {{ balance }}.{% if vip %} Thank you!{% endif %}",
        &tokens(&[
            ("name", Token::Text("Ada".into())),
            ("balance", Token::Text("12.30 EUR".into())),
            ("vip", Token::Text("yes".into())),
        ]),
    )
    .unwrap();
    assert_eq!(c.text, "Hello Ada, your balance is 12.30 EUR. Thank you!");
    assert!(c.sealed.is_empty());
}

#[test]
fn given_a_missing_token_a_runaway_loop_or_an_include_when_rendered_then_it_is_refused() {
    let none = BTreeMap::new();
    assert!(matches!(
        render("Hi {{ name }}", &none),
        Err(SdkError::Invalid(_))
    ));
    // Fuel (and MiniJinja's range limit) bound the work: a runaway loop stops with an error.
    let err = render(
        "{% for i in range(100000) %}{% for j in range(1000) %}x{% endfor %}{% endfor %}",
        &none,
    );
    assert!(matches!(err, Err(SdkError::Invalid(_))), "{err:?}");
    // No loader: a template cannot read files or other templates.
    assert!(matches!(
        render("{% include '/etc/passwd' %}", &none),
        Err(SdkError::Invalid(_))
    ));
    assert!(matches!(
        render("{{ x }}", &tokens(&[("bad-name", Token::Text("v".into()))])),
        Err(SdkError::Invalid(_))
    ));
}

#[test]
fn given_a_sealed_voucher_when_the_sender_renders_then_only_the_device_sees_it() {
    let d = device();
    let binding = d.binding("m-1");
    let hpke = Hpke::default();
    // The tenant's voucher service seals the code to the device; the sender never sees it.
    let voucher = seal(
        &hpke,
        &binding,
        &[&wrapper(&d) as &dyn KeyWrapper],
        None,
        b"VCH-7731",
    )
    .unwrap();
    let c = render(
        "Hi {{ name }}, your voucher: {{ code }}",
        &tokens(&[
            ("name", Token::Text("Ada".into())),
            ("code", Token::Sealed(voucher)),
        ]),
    )
    .unwrap();
    assert!(!c.text.contains("VCH-7731") && !c.to_bytes().windows(8).any(|w| w == b"VCH-7731"));
    // The sender seals the rendered content to the device; the device reads it merged.
    let sealed = seal(
        &hpke,
        &binding,
        &[&wrapper(&d) as &dyn KeyWrapper],
        None,
        &c.to_bytes(),
    )
    .unwrap();
    let text = d
        .open_content(&sealed, "m-1", OffsetDateTime::now_utc())
        .unwrap();
    assert_eq!(text, "Hi Ada, your voucher: VCH-7731");
    // Under another message id the content does not open.
    assert_eq!(
        d.open_content(&sealed, "m-2", OffsetDateTime::now_utc())
            .err(),
        Some(OpenError::WrongBinding("message id"))
    );
    // A placeholder sealed for another message is refused even inside a valid envelope.
    let other = Binding {
        message_id: "m-0".into(),
        ..binding.clone()
    };
    let stale = seal(
        &hpke,
        &other,
        &[&wrapper(&d) as &dyn KeyWrapper],
        None,
        b"OLD",
    )
    .unwrap();
    let c = render("{{ code }}", &tokens(&[("code", Token::Sealed(stale))])).unwrap();
    let sealed = seal(
        &hpke,
        &binding,
        &[&wrapper(&d) as &dyn KeyWrapper],
        None,
        &c.to_bytes(),
    )
    .unwrap();
    assert_eq!(
        d.open_content(&sealed, "m-1", OffsetDateTime::now_utc())
            .err(),
        Some(OpenError::WrongBinding("message id"))
    );
    assert_eq!(
        Content::from_bytes(b"not json").err(),
        Some(OpenError::Malformed)
    );
}
