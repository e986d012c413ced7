//! [`Secret`]: a string that must never be printed, logged or serialized in clear (tokens, API
//! keys, nkey seeds, passwords), in the style of the `secrecy` crate. Every crate that holds a
//! secret holds it as this type, so redaction is a property of the type rather than a list of
//! fields someone must remember.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// Shown instead of a set secret by `Debug`, `Display` and `Serialize`.
pub const REDACTED: &str = "<redacted>";

/// A secret string. `Debug`, `Display` and `Serialize` print [`REDACTED`] (or `""` when empty,
/// so an unset secret is visible as unset); only [`Secret::expose`] gives the value.
/// Deserializing reads the plain value, so config files and environment variables fill it.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that must send it (an HTTP header, a signature, a login).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn shown(&self) -> &'static str {
        if self.0.is_empty() {
            ""
        } else {
            REDACTED
        }
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({:?})", self.shown())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.shown())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.shown())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_secret_never_prints_or_serializes_its_value() {
        let s = Secret::new("hunter2-token");
        assert_eq!(format!("{s}"), REDACTED);
        assert_eq!(format!("{s:?}"), "Secret(\"<redacted>\")");
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            format!("\"{REDACTED}\"")
        );
        assert_eq!(s.expose(), "hunter2-token");
    }

    #[test]
    fn an_empty_secret_shows_as_unset() {
        let s = Secret::default();
        assert!(s.is_empty());
        assert_eq!(format!("{s}"), "");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"\"");
    }

    #[test]
    fn a_secret_deserializes_from_its_plain_value() {
        let s: Secret = serde_json::from_str("\"seed-SU123\"").unwrap();
        assert_eq!(s.expose(), "seed-SU123");
    }
}
