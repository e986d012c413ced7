//! HPKE (RFC 9180) in base mode with the one suite Sealpost uses: DHKEM(X25519, HKDF-SHA256),
//! HKDF-SHA256, ChaCha20-Poly1305 (KEM 0x0020, KDF 0x0001, AEAD 0x0003), single shot.
//!
//! This is a thin typed layer over OpenMLS's crypto provider (`openmls_rust_crypto`, hpke-rs
//! underneath): the tree has one HPKE implementation, shared with MLS. Nothing here is a
//! primitive of our own; the RFC 9180 test vectors for the suite are checked in the tests.

use openmls_rust_crypto::RustCrypto;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::types::{HpkeAeadType, HpkeCiphertext, HpkeConfig, HpkeKdfType, HpkeKemType};
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

/// RFC 9180 KEM id: DHKEM(X25519, HKDF-SHA256).
pub const KEM_ID: u16 = 0x0020;
/// RFC 9180 KDF id: HKDF-SHA256.
pub const KDF_ID: u16 = 0x0001;
/// RFC 9180 AEAD id: ChaCha20-Poly1305.
pub const AEAD_ID: u16 = 0x0003;
/// The length of an X25519 public key, of `enc`, and of a private key.
pub const KEY_LEN: usize = 32;

fn config() -> HpkeConfig {
    HpkeConfig(
        HpkeKemType::DhKem25519,
        HpkeKdfType::HkdfSha256,
        HpkeAeadType::ChaCha20Poly1305,
    )
}

/// HPKE went wrong: a key of the wrong length, or a ciphertext that does not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HpkeError {
    #[error("an HPKE key must be 32 bytes (X25519)")]
    BadKey,
    #[error("the HPKE ciphertext does not open with this key, info and associated data")]
    Open,
    #[error("HPKE sealing failed")]
    Seal,
}

/// An X25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", hex::encode(self.0))
    }
}

impl PublicKey {
    pub fn from_hex(text: &str) -> Result<Self, HpkeError> {
        hex::decode(text)
            .ok()
            .and_then(|b| <[u8; KEY_LEN]>::try_from(b).ok())
            .map(PublicKey)
            .ok_or(HpkeError::BadKey)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// An X25519 private key. Zeroed when dropped; its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

impl SecretKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, HpkeError> {
        let key: [u8; KEY_LEN] = bytes.try_into().map_err(|_| HpkeError::BadKey)?;
        Ok(Self(Zeroizing::new(key)))
    }

    /// The raw 32 bytes, for a key file. Handle with care.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

/// A key pair derived from 32 bytes of key material by RFC 9180's `DeriveKeyPair`.
pub fn derive_key_pair(ikm: &[u8]) -> Result<(SecretKey, PublicKey), HpkeError> {
    let pair = RustCrypto::default()
        .derive_hpke_keypair(config(), ikm)
        .map_err(|_| HpkeError::BadKey)?;
    let public =
        <[u8; KEY_LEN]>::try_from(pair.public.as_slice()).map_err(|_| HpkeError::BadKey)?;
    Ok((SecretKey::from_bytes(&pair.private)?, PublicKey(public)))
}

/// A fresh key pair (its key material from the operating system's generator).
pub fn generate_key_pair() -> (SecretKey, PublicKey) {
    let mut ikm = Zeroizing::new([0u8; KEY_LEN]);
    OsRng.fill_bytes(ikm.as_mut());
    // 32 bytes of key material always derive a pair.
    match derive_key_pair(ikm.as_ref()) {
        Ok(pair) => pair,
        Err(_) => unreachable!("DeriveKeyPair takes any 32 bytes"),
    }
}

/// The HPKE context of one process: the provider, whose generator makes the ephemeral keys.
#[derive(Debug, Default)]
pub struct Hpke {
    crypto: RustCrypto,
}

impl Hpke {
    /// `SealBase(pkR, info, aad, pt)`: returns (`enc`, ciphertext).
    pub fn seal(
        &self,
        recipient: &PublicKey,
        info: &[u8],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), HpkeError> {
        let out = self
            .crypto
            .hpke_seal(config(), &recipient.0, info, aad, plaintext)
            .map_err(|_| HpkeError::Seal)?;
        Ok((
            out.kem_output.as_slice().to_vec(),
            out.ciphertext.as_slice().to_vec(),
        ))
    }

    /// `OpenBase(enc, skR, info, aad, ct)`.
    pub fn open(
        &self,
        key: &SecretKey,
        enc: &[u8],
        info: &[u8],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HpkeError> {
        if enc.len() != KEY_LEN {
            return Err(HpkeError::Open);
        }
        let input = HpkeCiphertext {
            kem_output: enc.to_vec().into(),
            ciphertext: ciphertext.to_vec().into(),
        };
        self.crypto
            .hpke_open(config(), &input, key.expose(), info, aad)
            .map(Zeroizing::new)
            .map_err(|_| HpkeError::Open)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    // RFC 9180, Appendix A.2.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20Poly1305, base
    // mode, the setup and the first encryption (sequence number 0).
    const IKM_E: &str = "909a9b35d3dc4713a5e72a4da274b55d3d3821a37e5d099e74a647db583a904b";
    const PK_EM: &str = "1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a";
    const SK_EM: &str = "f4ec9b33b792c372c1d2c2063507b684ef925b8c75a42dbcbf57d63ccd381600";
    const IKM_R: &str = "1ac01f181fdf9f352797655161c58b75c656a6cc2716dcb66372da835542e1df";
    const PK_RM: &str = "4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a";
    const SK_RM: &str = "8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb";
    const ENC: &str = "1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a";
    const INFO: &str = "4f6465206f6e2061204772656369616e2055726e";
    const PT: &str = "4265617574792069732074727574682c20747275746820626561757479";
    const AAD_0: &str = "436f756e742d30";
    const CT_0: &str = "1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db21993c62ce81883d2dd1b51a28";

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn rfc9180_a2_derive_key_pair() {
        let (sk, pk) = derive_key_pair(&h(IKM_R)).unwrap();
        assert_eq!(sk.expose().to_vec(), h(SK_RM));
        assert_eq!(pk.0.to_vec(), h(PK_RM));
        let (sk, pk) = derive_key_pair(&h(IKM_E)).unwrap();
        assert_eq!(sk.expose().to_vec(), h(SK_EM));
        assert_eq!(pk.0.to_vec(), h(PK_EM));
    }

    #[test]
    fn rfc9180_a2_open_the_first_encryption() {
        let sk = SecretKey::from_bytes(&h(SK_RM)).unwrap();
        let pt = Hpke::default()
            .open(&sk, &h(ENC), &h(INFO), &h(AAD_0), &h(CT_0))
            .unwrap();
        assert_eq!(pt.to_vec(), h(PT));
    }

    #[test]
    fn rfc9180_a2_refuses_a_changed_ciphertext_aad_or_info() {
        let sk = SecretKey::from_bytes(&h(SK_RM)).unwrap();
        let hpke = Hpke::default();
        let mut ct = h(CT_0);
        ct[0] ^= 1;
        assert_eq!(
            hpke.open(&sk, &h(ENC), &h(INFO), &h(AAD_0), &ct),
            Err(HpkeError::Open)
        );
        assert_eq!(
            hpke.open(&sk, &h(ENC), &h(INFO), b"Count-1", &h(CT_0)),
            Err(HpkeError::Open)
        );
        assert_eq!(
            hpke.open(&sk, &h(ENC), b"another info", &h(AAD_0), &h(CT_0)),
            Err(HpkeError::Open)
        );
    }

    #[test]
    fn a_fresh_seal_opens_with_the_matching_key_only() {
        let hpke = Hpke::default();
        let (sk, pk) = generate_key_pair();
        let (other, _) = generate_key_pair();
        let (enc, ct) = hpke.seal(&pk, b"info", b"aad", b"content key").unwrap();
        assert_eq!(enc.len(), KEY_LEN);
        assert_eq!(
            hpke.open(&sk, &enc, b"info", b"aad", &ct).unwrap().to_vec(),
            b"content key"
        );
        assert_eq!(
            hpke.open(&other, &enc, b"info", b"aad", &ct),
            Err(HpkeError::Open)
        );
        assert!(format!("{sk:?}").contains("***"));
    }
}
