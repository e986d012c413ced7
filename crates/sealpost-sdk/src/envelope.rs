//! The HPKE envelope, format v2 (`docs/envelope.md` specifies every byte, with test vectors).
//! Version 1 envelopes still open; this build writes version 2 only.
//!
//! A random 32-byte content key encrypts the payload once with XChaCha20-Poly1305. The content
//! key is sealed (HPKE base mode, [`crate::hpke`]) to each of the recipient's devices, and for a
//! tenant with escrow also to the escrow key, each in its own *slot*. The envelope's *binding*
//! (tenant, message id, recipient label) is the start of every slot's HPKE associated data,
//! with the slot's kind, scheme and key id after it; the payload's associated data is the whole
//! header up to and including the nonce, padded on the wire to a multiple of 64 bytes (see
//! [`HEADER_ALIGN`]). So a slot cannot be moved to another envelope, key id
//! or recipient, and a ciphertext replayed under another message id or to another recipient
//! fails to open: the opener passes the binding it expects, and both the comparison and the
//! AEADs refuse a different one.
//!
//! ```text
//! envelope = "SPEV" version=0x02 mode=0x01 payload_aead:u16=0x0001
//!            tenant:str8 message_id:str8 recipient_label:str8
//!            slot_count:u8 slot{slot_count}
//!            pad_len:u8 zero{pad_len}        (v2 only; the header ends on a 64-byte boundary)
//!            nonce[24] ciphertext_and_tag[..]
//! slot     = kind:u8 (0x01 device, 0x02 escrow) scheme:u16 (0x0001 HPKE X25519/SHA256/ChaCha)
//!            key_id:str8 enc:bytes16 wrapped_key:bytes16
//! str8     = len:u8 bytes      bytes16 = len:u16 (big endian) bytes
//! ```

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::hpke::{Hpke, PublicKey, SecretKey};

/// The envelope's magic bytes.
pub const MAGIC: &[u8; 4] = b"SPEV";
/// The version this build writes.
pub const VERSION: u8 = 2;
/// The first version: no padding before the nonce. Still opened, never written.
pub const VERSION_1: u8 = 1;
/// A version 2 header (through the nonce) is a multiple of this many bytes.
///
/// The header is the payload's associated data, and RustCrypto's Poly1305 (the AVX2 backend
/// `chacha20poly1305` 0.10 uses) takes four 16-byte blocks at a time only while the blocks it
/// has seen fill whole groups of four: after an associated data of another length, the whole
/// payload goes through its block-at-a-time path, 10% slower to seal and to open 1 MiB
/// (measured in `sealpost bench sdk`). The padding costs at most 63 bytes.
pub const HEADER_ALIGN: usize = 64;
/// Mode byte: a payload sealed with a content key in HPKE slots.
pub const MODE_HPKE: u8 = 1;
/// Payload AEAD id: XChaCha20-Poly1305 (the only one).
pub const PAYLOAD_XCHACHA20POLY1305: u16 = 1;
/// Slot scheme id: HPKE base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305.
pub const SCHEME_HPKE_X25519: u16 = 1;
/// The HPKE `info` of every slot.
pub const HPKE_INFO: &[u8] = b"sealpost envelope v1";
/// The most slots one envelope carries (devices plus escrow).
pub const MAX_SLOTS: usize = 32;
/// The nonce length of XChaCha20-Poly1305.
pub const NONCE_LEN: usize = 24;
/// The tag length of XChaCha20-Poly1305.
pub const TAG_LEN: usize = 16;
/// The content key's length.
pub const CONTENT_KEY_LEN: usize = 32;

/// The `cipher` the send command's `encryption_metadata` names for this envelope.
pub const CIPHER_NAME: &str = "XChaCha20-Poly1305";
/// The `mls_version` the send command's `encryption_metadata` carries for an HPKE envelope (no
/// MLS is involved; the field names the envelope format instead).
pub const HPKE_ENVELOPE_NAME: &str = "sealpost-envelope-v2";

/// What a slot is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    /// One of the recipient's devices.
    Device = 1,
    /// The tenant's escrow key.
    Escrow = 2,
}

/// What an envelope is bound to. The opener supplies the one it expects, from what it knows
/// independently of the envelope (its own label, the message id the carrier delivered with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub tenant: String,
    /// The message id: `MessageId::derive(tenant, idempotency key)`, which the carrier receives.
    pub message_id: String,
    /// The recipient's label (64 hex digits).
    pub recipient_label: String,
}

/// Seals a content key into a slot: a device's public key, or an escrow.
///
/// Escrow is an interface so that a key held elsewhere (an HSM, a KMS) can take the slot: it
/// receives the slot's associated data and the content key, and returns the slot's `enc` and
/// wrapped key under its own scheme id.
pub trait KeyWrapper: Send + Sync + std::fmt::Debug {
    fn key_id(&self) -> &str;
    fn scheme(&self) -> u16;
    /// Returns (`enc`, wrapped key), bound to `aad`.
    fn wrap(
        &self,
        hpke: &Hpke,
        aad: &[u8],
        content_key: &[u8; CONTENT_KEY_LEN],
    ) -> Result<(Vec<u8>, Vec<u8>), SealError>;
}

/// Opens a slot: the counterpart of a [`KeyWrapper`].
pub trait KeyUnwrapper: Send + Sync + std::fmt::Debug {
    fn key_id(&self) -> &str;
    fn scheme(&self) -> u16;
    fn unwrap(
        &self,
        hpke: &Hpke,
        aad: &[u8],
        enc: &[u8],
        wrapped: &[u8],
    ) -> Result<Zeroizing<[u8; CONTENT_KEY_LEN]>, OpenError>;
}

/// An HPKE public key as a slot (a device's, or an escrow key from a file).
#[derive(Debug, Clone)]
pub struct HpkeWrapper {
    pub key_id: String,
    pub public_key: PublicKey,
}

impl KeyWrapper for HpkeWrapper {
    fn key_id(&self) -> &str {
        &self.key_id
    }

    fn scheme(&self) -> u16 {
        SCHEME_HPKE_X25519
    }

    fn wrap(
        &self,
        hpke: &Hpke,
        aad: &[u8],
        content_key: &[u8; CONTENT_KEY_LEN],
    ) -> Result<(Vec<u8>, Vec<u8>), SealError> {
        hpke.seal(&self.public_key, HPKE_INFO, aad, content_key)
            .map_err(|_| SealError::Hpke)
    }
}

/// An HPKE private key that opens its slots.
#[derive(Debug, Clone)]
pub struct HpkeUnwrapper {
    pub key_id: String,
    pub secret: SecretKey,
}

impl KeyUnwrapper for HpkeUnwrapper {
    fn key_id(&self) -> &str {
        &self.key_id
    }

    fn scheme(&self) -> u16 {
        SCHEME_HPKE_X25519
    }

    fn unwrap(
        &self,
        hpke: &Hpke,
        aad: &[u8],
        enc: &[u8],
        wrapped: &[u8],
    ) -> Result<Zeroizing<[u8; CONTENT_KEY_LEN]>, OpenError> {
        let key = hpke
            .open(&self.secret, enc, HPKE_INFO, aad, wrapped)
            .map_err(|_| OpenError::Tampered)?;
        let key: [u8; CONTENT_KEY_LEN] =
            key.as_slice().try_into().map_err(|_| OpenError::Tampered)?;
        Ok(Zeroizing::new(key))
    }
}

/// Why sealing failed. Nothing in it names a key or a plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("no device to seal to: the recipient has no verified, active key")]
    NoRecipients,
    #[error("too many slots ({0}); an envelope holds at most {MAX_SLOTS}")]
    TooManySlots(usize),
    #[error("{field} must be 1 to {max} bytes")]
    BadField { field: &'static str, max: usize },
    #[error("HPKE sealing failed")]
    Hpke,
    #[error("the payload is too large to seal")]
    TooLarge,
}

/// Why opening failed: each is a reason a `decryption_failed` receipt names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("not a Sealpost envelope, or a truncated one")]
    Malformed,
    #[error(
        "envelope version {0} is not one this build reads (it reads version 1); update the SDK"
    )]
    UnknownVersion(u8),
    #[error("envelope mode {0} is not one this build reads")]
    UnknownMode(u8),
    #[error("the envelope is bound to another {0} than the one expected: replayed or misrouted")]
    WrongBinding(&'static str),
    #[error("the envelope has no slot for any key this device holds")]
    NotForThisDevice,
    #[error("the envelope was changed after sealing, or sealed to another key")]
    Tampered,
    #[error("the payload's SHA-256 is not the one the message carries")]
    DigestMismatch,
}

impl OpenError {
    /// The stable reason code of a `decryption_failed` receipt.
    pub fn code(&self) -> &'static str {
        match self {
            OpenError::Malformed => "malformed",
            OpenError::UnknownVersion(_) | OpenError::UnknownMode(_) => "unknown_version",
            OpenError::WrongBinding(_) => "wrong_binding",
            OpenError::NotForThisDevice => "wrong_key",
            OpenError::Tampered => "tampered",
            OpenError::DigestMismatch => "digest_mismatch",
        }
    }
}

/// One slot as parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub kind: SlotKind,
    pub scheme: u16,
    pub key_id: String,
    pub enc: Vec<u8>,
    pub wrapped: Vec<u8>,
}

/// A parsed envelope: everything but the payload's plaintext, for inspection and opening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// [`VERSION`] or [`VERSION_1`].
    pub version: u8,
    pub binding: Binding,
    pub slots: Vec<Slot>,
    /// The header bytes (through the nonce): the payload's associated data.
    header: &'a [u8],
    /// Where the binding ends in the header (the slots' associated data starts with it).
    binding_end: usize,
    nonce: [u8; NONCE_LEN],
    ciphertext: &'a [u8],
}

fn put_str8(
    out: &mut Vec<u8>,
    field: &'static str,
    value: &str,
    max: usize,
) -> Result<(), SealError> {
    let len = value.len();
    if len == 0 || len > max || len > usize::from(u8::MAX) {
        return Err(SealError::BadField { field, max });
    }
    out.push(len as u8);
    out.extend_from_slice(value.as_bytes());
    Ok(())
}

fn put_bytes16(out: &mut Vec<u8>, value: &[u8]) -> Result<(), SealError> {
    let len = u16::try_from(value.len()).map_err(|_| SealError::TooLarge)?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
    Ok(())
}

/// The slot's HPKE associated data: the binding's bytes, then kind, scheme and key id (str8).
fn slot_aad(binding_bytes: &[u8], kind: SlotKind, scheme: u16, key_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(binding_bytes.len() + 4 + key_id.len());
    aad.extend_from_slice(binding_bytes);
    aad.push(kind as u8);
    aad.extend_from_slice(&scheme.to_be_bytes());
    aad.push(key_id.len() as u8);
    aad.extend_from_slice(key_id.as_bytes());
    aad
}

/// The zero bytes that end a header of `len_before` bytes (through the slots) on a multiple of
/// [`HEADER_ALIGN`], after the pad length byte and the nonce.
fn padding(len_before: usize) -> usize {
    (HEADER_ALIGN - (len_before + 1 + NONCE_LEN) % HEADER_ALIGN) % HEADER_ALIGN
}

/// Seals `plaintext` for the devices (and the escrow, if any), bound to `binding`.
pub fn seal(
    hpke: &Hpke,
    binding: &Binding,
    devices: &[&dyn KeyWrapper],
    escrow: Option<&dyn KeyWrapper>,
    plaintext: &[u8],
) -> Result<Vec<u8>, SealError> {
    let mut content_key = Zeroizing::new([0u8; CONTENT_KEY_LEN]);
    OsRng.fill_bytes(content_key.as_mut());
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    seal_with(
        hpke,
        binding,
        devices,
        escrow,
        plaintext,
        &content_key,
        &nonce,
    )
}

/// [`seal`] with a given content key and nonce: for test vectors only. Both must be fresh and
/// random for every envelope.
pub fn seal_with(
    hpke: &Hpke,
    binding: &Binding,
    devices: &[&dyn KeyWrapper],
    escrow: Option<&dyn KeyWrapper>,
    plaintext: &[u8],
    content_key: &[u8; CONTENT_KEY_LEN],
    nonce: &[u8; NONCE_LEN],
) -> Result<Vec<u8>, SealError> {
    if devices.is_empty() {
        return Err(SealError::NoRecipients);
    }
    let slots: Vec<(SlotKind, &dyn KeyWrapper)> = devices
        .iter()
        .map(|d| (SlotKind::Device, *d))
        .chain(escrow.map(|e| (SlotKind::Escrow, e)))
        .collect();
    if slots.len() > MAX_SLOTS {
        return Err(SealError::TooManySlots(slots.len()));
    }
    // The header first, then one allocation of exactly the envelope's size, so the payload is
    // never moved once copied in.
    let mut out = Vec::with_capacity(256 + slots.len() * 128);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(MODE_HPKE);
    out.extend_from_slice(&PAYLOAD_XCHACHA20POLY1305.to_be_bytes());
    put_str8(&mut out, "tenant", &binding.tenant, 64)?;
    put_str8(&mut out, "message_id", &binding.message_id, 128)?;
    put_str8(&mut out, "recipient_label", &binding.recipient_label, 64)?;
    let binding_end = out.len();
    out.push(slots.len() as u8);
    for (kind, wrapper) in slots {
        let key_id = wrapper.key_id();
        let scheme = wrapper.scheme();
        let mut probe = Vec::new();
        put_str8(&mut probe, "key_id", key_id, 128)?;
        let aad = slot_aad(&out[..binding_end], kind, scheme, key_id);
        let (enc, wrapped) = wrapper.wrap(hpke, &aad, content_key)?;
        out.push(kind as u8);
        out.extend_from_slice(&scheme.to_be_bytes());
        out.extend_from_slice(&probe);
        put_bytes16(&mut out, &enc)?;
        put_bytes16(&mut out, &wrapped)?;
    }
    let pad = padding(out.len());
    out.push(pad as u8);
    out.resize(out.len() + pad, 0);
    out.extend_from_slice(nonce);
    debug_assert_eq!(out.len() % HEADER_ALIGN, 0);
    let header_len = out.len();
    let mut out = {
        let mut envelope = Vec::with_capacity(header_len + plaintext.len() + TAG_LEN);
        envelope.extend_from_slice(&out);
        envelope
    };
    out.extend_from_slice(plaintext);
    let cipher = XChaCha20Poly1305::new(content_key.into());
    let (header, body) = out.split_at_mut(header_len);
    let tag = cipher
        .encrypt_in_place_detached(XNonce::from_slice(nonce), header, body)
        .map_err(|_| SealError::TooLarge)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], OpenError> {
        let end = self.at.checked_add(n).ok_or(OpenError::Malformed)?;
        let out = self.bytes.get(self.at..end).ok_or(OpenError::Malformed)?;
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, OpenError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, OpenError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn str8(&mut self) -> Result<String, OpenError> {
        let n = usize::from(self.u8()?);
        if n == 0 {
            return Err(OpenError::Malformed);
        }
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| OpenError::Malformed)
    }

    fn bytes16(&mut self) -> Result<Vec<u8>, OpenError> {
        let n = usize::from(self.u16()?);
        Ok(self.take(n)?.to_vec())
    }
}

impl<'a> Envelope<'a> {
    /// Parses an envelope's header. Checks the format only: nothing is decrypted.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, OpenError> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(4)? != MAGIC {
            return Err(OpenError::Malformed);
        }
        let version = r.u8()?;
        if version != VERSION && version != VERSION_1 {
            return Err(OpenError::UnknownVersion(version));
        }
        let mode = r.u8()?;
        if mode != MODE_HPKE {
            return Err(OpenError::UnknownMode(mode));
        }
        if r.u16()? != PAYLOAD_XCHACHA20POLY1305 {
            return Err(OpenError::UnknownMode(mode));
        }
        let binding = Binding {
            tenant: r.str8()?,
            message_id: r.str8()?,
            recipient_label: r.str8()?,
        };
        let binding_end = r.at;
        let count = usize::from(r.u8()?);
        if count == 0 || count > MAX_SLOTS {
            return Err(OpenError::Malformed);
        }
        let mut slots = Vec::with_capacity(count);
        for _ in 0..count {
            let kind = match r.u8()? {
                1 => SlotKind::Device,
                2 => SlotKind::Escrow,
                _ => return Err(OpenError::Malformed),
            };
            slots.push(Slot {
                kind,
                scheme: r.u16()?,
                key_id: r.str8()?,
                enc: r.bytes16()?,
                wrapped: r.bytes16()?,
            });
        }
        if version == VERSION {
            // Canonical padding only: the length that ends the header on the boundary, zeros.
            let pad = usize::from(r.u8()?);
            if pad != padding(r.at - 1) || r.take(pad)?.iter().any(|&b| b != 0) {
                return Err(OpenError::Malformed);
            }
        }
        let nonce: [u8; NONCE_LEN] = r
            .take(NONCE_LEN)?
            .try_into()
            .map_err(|_| OpenError::Malformed)?;
        let header = &bytes[..r.at];
        let ciphertext = &bytes[r.at..];
        if ciphertext.len() < TAG_LEN {
            return Err(OpenError::Malformed);
        }
        Ok(Envelope {
            version,
            binding,
            slots,
            header,
            binding_end,
            nonce,
            ciphertext,
        })
    }

    /// The header's length: the payload's associated data, through the nonce.
    pub fn header_len(&self) -> usize {
        self.header.len()
    }

    /// The device key ids it is sealed to.
    pub fn device_key_ids(&self) -> impl Iterator<Item = &str> {
        self.slots
            .iter()
            .filter(|s| s.kind == SlotKind::Device)
            .map(|s| s.key_id.as_str())
    }

    /// Opens the payload with the first of `keys` that has a slot (matched by kind, key id and
    /// scheme), after checking that the envelope is bound to `expected`.
    pub fn open(
        &self,
        hpke: &Hpke,
        expected: &Binding,
        kind: SlotKind,
        keys: &[&dyn KeyUnwrapper],
    ) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        if self.binding.tenant != expected.tenant {
            return Err(OpenError::WrongBinding("tenant"));
        }
        if self.binding.message_id != expected.message_id {
            return Err(OpenError::WrongBinding("message id"));
        }
        if self.binding.recipient_label != expected.recipient_label {
            return Err(OpenError::WrongBinding("recipient"));
        }
        let (slot, key) = self
            .slots
            .iter()
            .filter(|s| s.kind == kind)
            .find_map(|s| {
                keys.iter()
                    .find(|k| k.key_id() == s.key_id && k.scheme() == s.scheme)
                    .map(|k| (s, *k))
            })
            .ok_or(OpenError::NotForThisDevice)?;
        let aad = slot_aad(
            &self.header[..self.binding_end],
            slot.kind,
            slot.scheme,
            &slot.key_id,
        );
        let content_key = key.unwrap(hpke, &aad, &slot.enc, &slot.wrapped)?;
        let split = self.ciphertext.len() - TAG_LEN;
        let mut body = Zeroizing::new(self.ciphertext[..split].to_vec());
        let tag = Tag::from_slice(&self.ciphertext[split..]);
        XChaCha20Poly1305::new(content_key.as_ref().into())
            .decrypt_in_place_detached(XNonce::from_slice(&self.nonce), self.header, &mut body, tag)
            .map_err(|_| OpenError::Tampered)?;
        Ok(body)
    }
}

/// Parses and opens in one step, as a device does.
pub fn open(
    hpke: &Hpke,
    bytes: &[u8],
    expected: &Binding,
    keys: &[&dyn KeyUnwrapper],
) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    Envelope::parse(bytes)?.open(hpke, expected, SlotKind::Device, keys)
}
