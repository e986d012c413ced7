//! Personalisation rendered on the client, so the platform never needs the plaintext.
//!
//! Templates are MiniJinja (Jinja2 syntax) in its sandbox: no code execution, no file or
//! network access, no template loading, and a fuel limit on the work one render may do. Tokens
//! are strings, or *sealed placeholders*: a value (a voucher code, say) that another server of
//! the tenant sealed to the recipient's devices, which the sender cannot read. The sender's
//! render leaves a marker where a sealed value goes and carries the sealed value along; only
//! the device opens it and merges it in ([`Content::merge`]).
//!
//! The rendered content is what gets sealed: the JSON
//! `{"v":1,"text":"<rendered>","sealed":{"<name>":"<base64 envelope>"}}`; a marker is
//! `U+FFFC` `sealed:` name `U+FFFC`.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::envelope::{self, Binding, KeyUnwrapper, OpenError};
use crate::hpke::Hpke;
use crate::SdkError;

/// The most work one render may do (MiniJinja fuel units; a small template uses hundreds).
pub const FUEL: u64 = 50_000;
/// The largest rendered text.
pub const MAX_TEXT: usize = 256 * 1024;

const MARK: char = '\u{FFFC}';

/// A token's value.
#[derive(Debug, Clone)]
pub enum Token {
    Text(String),
    /// An envelope sealed to the recipient's devices (bound to the same message).
    Sealed(Vec<u8>),
}

/// What a device opens: the rendered text and the sealed values it still has to merge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Content {
    pub v: u8,
    pub text: String,
    #[serde(default)]
    pub sealed: BTreeMap<String, String>,
}

fn marker(name: &str) -> String {
    format!("{MARK}sealed:{name}{MARK}")
}

/// Renders `template` with `tokens` in the sandbox.
pub fn render(template: &str, tokens: &BTreeMap<String, Token>) -> Result<Content, SdkError> {
    let mut env = minijinja::Environment::new();
    env.set_fuel(Some(FUEL));
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    let mut ctx = BTreeMap::new();
    let mut sealed = BTreeMap::new();
    let b64 = base64::engine::general_purpose::STANDARD;
    for (name, token) in tokens {
        let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(SdkError::Invalid(format!(
                "token name '{name}' must be [A-Za-z0-9_]+"
            )));
        }
        match token {
            Token::Text(t) => {
                if t.contains(MARK) {
                    return Err(SdkError::Invalid(format!("token '{name}' holds U+FFFC")));
                }
                ctx.insert(name.clone(), t.clone());
            }
            Token::Sealed(e) => {
                ctx.insert(name.clone(), marker(name));
                sealed.insert(name.clone(), b64.encode(e));
            }
        }
    }
    if template.contains(MARK) {
        return Err(SdkError::Invalid("the template holds U+FFFC".into()));
    }
    let text = env
        .render_str(template, ctx)
        .map_err(|e| SdkError::Invalid(format!("the template: {}", e.kind())))?;
    if text.len() > MAX_TEXT {
        return Err(SdkError::Invalid(format!(
            "the rendered text is over {MAX_TEXT} bytes"
        )));
    }
    Ok(Content { v: 1, text, sealed })
}

impl Content {
    pub fn to_bytes(&self) -> Vec<u8> {
        // Strings and a map of strings always serialize.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, OpenError> {
        serde_json::from_slice(bytes).map_err(|_| OpenError::Malformed)
    }

    /// Opens each sealed value with the device's keys (bound to the same message) and merges
    /// it where its marker is: the text the recipient reads.
    pub fn merge(
        &self,
        hpke: &Hpke,
        expected: &Binding,
        keys: &[&dyn KeyUnwrapper],
    ) -> Result<String, OpenError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut text = self.text.clone();
        for (name, sealed) in &self.sealed {
            let bytes = b64.decode(sealed).map_err(|_| OpenError::Malformed)?;
            let value = envelope::open(hpke, &bytes, expected, keys)?;
            let value = std::str::from_utf8(&value).map_err(|_| OpenError::Malformed)?;
            text = text.replace(&marker(name), value);
        }
        if text.contains(MARK) {
            return Err(OpenError::Malformed);
        }
        Ok(text)
    }
}
