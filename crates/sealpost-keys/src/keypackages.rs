//! MLS KeyPackages as the directory takes them: the TLS encoding of an RFC 9420 KeyPackage,
//! validated with OpenMLS (`KeyPackageIn::validate`: both signatures, lifetime, extensions
//! supported by the leaf, init key distinct from the encryption key, MLS 1.0) and named by its
//! OpenMLS `hash_ref` (RFC 9420 §5.2, `MLS 1.0 KeyPackage Reference`), lowercase hex.

use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{KeyPackageIn, ProtocolVersion};

/// A validated package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidKeyPackage {
    /// Lowercase hex of the package's `hash_ref`.
    pub hash_ref: String,
    /// Whether it carries the last-resort extension.
    pub last_resort: bool,
}

/// Why a package was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyPackageError {
    #[error("not the TLS encoding of an MLS KeyPackage")]
    Encoding,
    #[error("OpenMLS refused it: {0}")]
    Invalid(String),
}

/// Decodes and validates one package.
pub fn validate(bytes: &[u8]) -> Result<ValidKeyPackage, KeyPackageError> {
    let crypto = openmls_rust_crypto::RustCrypto::default();
    let mut rest = bytes;
    let package =
        KeyPackageIn::tls_deserialize(&mut rest).map_err(|_| KeyPackageError::Encoding)?;
    if !rest.is_empty() {
        return Err(KeyPackageError::Encoding);
    }
    let package = package
        .validate(&crypto, ProtocolVersion::Mls10)
        .map_err(|e| KeyPackageError::Invalid(e.to_string()))?;
    let hash_ref = package
        .hash_ref(&crypto)
        .map_err(|e| KeyPackageError::Invalid(e.to_string()))?;
    Ok(ValidKeyPackage {
        hash_ref: hex::encode(hash_ref.as_slice()),
        last_resort: package.last_resort(),
    })
}
