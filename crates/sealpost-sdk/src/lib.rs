//! # sealpost-sdk
//!
//! The client SDK: the part of Sealpost that holds keys and sees plaintext, so the platform
//! never does. It runs at the tenant's backend (the sender) and in the tenant's device app (the
//! recipient).
//!
//! **Owns:**
//! - [`hpke`]: RFC 9180 base mode, X25519/HKDF-SHA256/ChaCha20-Poly1305, over OpenMLS's crypto
//!   provider (the tree's one HPKE implementation), checked against the RFC's test vectors;
//! - [`envelope`]: the versioned HPKE envelope (`docs/envelope.md`): an XChaCha20-Poly1305
//!   payload whose content key is sealed to each device and, optionally, an escrow
//!   ([`envelope::KeyWrapper`] is the escrow interface), bound to tenant, message id, recipient
//!   and key ids;
//! - [`directory`]: verified lookups (proof, signed epoch log, consistency with the last
//!   checkpoint seen, persisted), key publication and KeyPackage claims;
//! - [`mls`]: mode `mls`, conversations as MLS groups (OpenMLS) formed from KeyPackages
//!   claimed from the directory;
//! - [`template`]: personalisation rendered locally (sandboxed MiniJinja), with sealed
//!   placeholders only the device opens;
//! - [`sender`] and [`device`]: the two flows; [`keyring`]: a device's keys, rotation and key
//!   files (mode 0600); [`platform`]: the HTTP and NATS transports.
//!
//! **Must not:** depend on a server crate (only on the shared types of `sealpost-domain`,
//! `sealpost-keyformat`, `sealpost-keys-client` and `sealpost-tlog`); log, print or put in an
//! error a key, a plaintext or a phone number; implement a primitive (HPKE is OpenMLS's
//! provider's, the AEAD is RustCrypto's `chacha20poly1305`, proofs are akd's).

pub mod device;
pub mod directory;
pub mod envelope;
pub mod escrow;
pub mod hpke;
pub mod keyring;
pub mod mls;
pub mod platform;
pub mod sender;
pub mod template;

pub use device::Device;
pub use directory::{KeyDirectory, Trust, VerifiedKeys};
pub use envelope::{Binding, OpenError, SealError};
pub use keyring::Keyring;
pub use platform::{HttpApi, Platform, StoredBlob};
pub use sender::{Outgoing, Sealed, Sender, Sent};

/// What went wrong in the SDK. Messages name the failing step and never a key, plaintext or
/// phone number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdkError {
    /// The directory's answer did not verify, or the recipient has nothing to seal to: nothing
    /// was sealed.
    #[error("refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error(transparent)]
    Open(#[from] OpenError),
    /// [`Device::receive`] could not open the payload; `reported` says whether the
    /// `decryption_failed` report reached the platform.
    #[error("cannot open the payload: {error} (reported to the platform: {})", if *.reported { "yes" } else { "no, report it again" })]
    Unopened { error: OpenError, reported: bool },
    /// The platform answered with an error.
    #[error("the platform answered {status} {code}: {message}")]
    Api {
        code: String,
        message: String,
        status: u16,
    },
    /// Fetching a payload link failed (expired, or not this message's).
    #[error("the payload link answered {status}: it expired with its message, or is not valid")]
    Fetch { status: u16 },
    #[error("cannot reach the platform: {0}")]
    Transport(String),
    #[error("key file: {0}")]
    KeyFile(String),
    #[error("invalid input: {0}")]
    Invalid(String),
    /// An MLS operation failed (OpenMLS's error, which names no key or plaintext).
    #[error("MLS: {0}")]
    Mls(String),
}
