//! The directory's akd configuration: what a client needs to recompute its hashes.

/// The domain separator of every hash the directory computes: a proof from this directory can
/// never verify as another application's (or as WhatsApp's).
pub const DOMAIN_LABEL: &[u8] = b"sealpost key directory v1";

/// [`DOMAIN_LABEL`] as akd's type-level label.
#[derive(Debug, Clone, Copy)]
pub struct SealpostDomain;

impl akd_core::DomainLabel for SealpostDomain {
    fn domain_label() -> &'static [u8] {
        DOMAIN_LABEL
    }
}

/// akd's experimental configuration (its current one), domain-separated by [`DOMAIN_LABEL`].
pub type Config = akd_core::ExperimentalConfiguration<SealpostDomain>;
