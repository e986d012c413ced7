//! Mode `mls`: conversations. The business and the recipient's devices form an MLS group
//! (RFC 9420, OpenMLS 0.9) from KeyPackages claimed from the key directory; the Welcome, any
//! Commit and the application message travel together as the message's opaque payload.
//!
//! Group state lives in the [`OpenMlsProvider`] the caller supplies (its storage provider
//! persists it: OpenMLS's memory storage in tests, the app's own store on a device).
//!
//! The payload (`docs/envelope.md`, mode 2):
//!
//! ```text
//! payload = "SPEV" version=0x01 mode=0x02 tenant:str8 message_id:str8 recipient_label:str8
//!           count:u8 item{count}
//! item    = kind:u8 (0x01 commit, 0x02 welcome, 0x03 application) len:u32 mls_message[len]
//! ```
//!
//! Each `mls_message` is an `MLSMessage` in its TLS encoding. The application message's MLS
//! authenticated data is the payload's binding (every byte before `count`), so the binding is
//! covered by the group's AEAD and signature: a payload replayed under another message id or to
//! another recipient is refused.

use base64::Engine as _;
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    BasicCredential, Capabilities, Ciphersuite, CredentialWithKey, ExtensionType, GroupId,
    KeyPackage, KeyPackageIn, MlsGroup, MlsGroupCreateConfig, MlsGroupJoinConfig, MlsMessageBodyIn,
    MlsMessageIn, MlsMessageOut, ProcessedMessageContent, ProtocolMessage, ProtocolVersion,
    StagedWelcome,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::OpenMlsProvider;

use crate::envelope::{Binding, OpenError, MAGIC};
use crate::SdkError;

/// The one MLS ciphersuite: X25519, ChaCha20-Poly1305, SHA-256, Ed25519 (the HPKE suite of the
/// `hpke` mode, inside MLS).
pub const SUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519;
/// Mode byte of an MLS payload.
pub const MODE_MLS: u8 = 2;
/// The MLS payload's format version (the HPKE envelope's version 2 does not apply: the header
/// padding there is for the payload AEAD, which MLS frames itself).
pub const VERSION: u8 = 1;

/// The `mls_version` a send of an MLS payload carries (RFC 9420's `mls10`).
pub const MLS_VERSION: &str = "1";
/// The `cipher` a send of an MLS payload carries.
pub const MLS_CIPHER: &str = "MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519";

const COMMIT: u8 = 1;
const WELCOME: u8 = 2;
const APPLICATION: u8 = 3;

/// The group of a conversation with one recipient: `sealpost/<tenant>/<recipient label>`.
pub fn group_id(tenant: &str, recipient_label: &str) -> GroupId {
    GroupId::from_slice(format!("sealpost/{tenant}/{recipient_label}").as_bytes())
}

/// One MLS member: a signature key and a basic credential naming it (the business, or a device
/// as `<recipient label>/<device id>`).
#[derive(Debug)]
pub struct Member {
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
}

/// A group change to deliver with the next message: the Commit for the members already in the
/// group, and the Welcome for the new ones.
#[derive(Debug)]
pub struct Handshake {
    commit: Option<Vec<u8>>,
    welcome: Vec<u8>,
}

fn tls(message: &MlsMessageOut) -> Result<Vec<u8>, SdkError> {
    message
        .tls_serialize_detached()
        .map_err(|e| SdkError::Mls(format!("encoding an MLS message: {e}")))
}

impl Member {
    pub fn new(identity: &str) -> Result<Self, SdkError> {
        let signer = SignatureKeyPair::new(SUITE.signature_algorithm())
            .map_err(|e| SdkError::Mls(format!("a signature key: {e:?}")))?;
        let credential = CredentialWithKey {
            credential: BasicCredential::new(identity.as_bytes().to_vec()).into(),
            signature_key: signer.public().into(),
        };
        Ok(Self { signer, credential })
    }

    /// `n` KeyPackages and a last-resort one, TLS-encoded and base64, for the directory's
    /// `upload`. Their private keys go into the provider's storage.
    pub fn key_packages<P: OpenMlsProvider>(
        &self,
        provider: &P,
        n: usize,
    ) -> Result<(Vec<String>, String), SdkError> {
        let make = |last_resort: bool| -> Result<String, SdkError> {
            let mut builder = KeyPackage::builder();
            if last_resort {
                builder = builder
                    .leaf_node_capabilities(Capabilities::new(
                        None,
                        Some(&[SUITE]),
                        Some(&[ExtensionType::LastResort]),
                        None,
                        None,
                    ))
                    .mark_as_last_resort();
            }
            let bundle = builder
                .build(SUITE, provider, &self.signer, self.credential.clone())
                .map_err(|e| SdkError::Mls(format!("a KeyPackage: {e:?}")))?;
            let bytes = bundle
                .key_package()
                .tls_serialize_detached()
                .map_err(|e| SdkError::Mls(format!("encoding a KeyPackage: {e}")))?;
            Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
        };
        let packages = (0..n).map(|_| make(false)).collect::<Result<_, _>>()?;
        Ok((packages, make(true)?))
    }

    /// Starts the conversation with a recipient's devices from their claimed KeyPackages
    /// (base64, as `claim` returns them).
    pub fn create_group<P: OpenMlsProvider>(
        &self,
        provider: &P,
        tenant: &str,
        recipient_label: &str,
        key_packages: &[String],
    ) -> Result<(MlsGroup, Handshake), SdkError> {
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(SUITE)
            .use_ratchet_tree_extension(true)
            .build();
        let mut group = MlsGroup::new_with_group_id(
            provider,
            &self.signer,
            &config,
            group_id(tenant, recipient_label),
            self.credential.clone(),
        )
        .map_err(|e| SdkError::Mls(format!("creating the group: {e:?}")))?;
        let mut handshake = self.add(provider, &mut group, key_packages)?;
        // The new group's members all join through the Welcome.
        handshake.commit = None;
        Ok((group, handshake))
    }

    /// Adds devices (a device added later joins through a new claim).
    pub fn add<P: OpenMlsProvider>(
        &self,
        provider: &P,
        group: &mut MlsGroup,
        key_packages: &[String],
    ) -> Result<Handshake, SdkError> {
        let packages = key_packages
            .iter()
            .map(|b64| validated(provider, b64))
            .collect::<Result<Vec<_>, _>>()?;
        let (commit, welcome, _) = group
            .add_members(provider, &self.signer, &packages)
            .map_err(|e| SdkError::Mls(format!("adding members: {e:?}")))?;
        group
            .merge_pending_commit(provider)
            .map_err(|e| SdkError::Mls(format!("merging the commit: {e:?}")))?;
        Ok(Handshake {
            commit: Some(tls(&commit)?),
            welcome: tls(&welcome)?,
        })
    }

    /// Seals `plaintext` as the group's application message, bound to `binding`, with the
    /// pending group change (if any) in front of it.
    pub fn seal<P: OpenMlsProvider>(
        &self,
        provider: &P,
        group: &mut MlsGroup,
        binding: &Binding,
        handshake: Option<Handshake>,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SdkError> {
        let head = binding_bytes(binding)?;
        group.set_aad(head.clone());
        let message = group
            .create_message(provider, &self.signer, plaintext)
            .map_err(|e| SdkError::Mls(format!("the application message: {e:?}")))?;
        let mut items: Vec<(u8, Vec<u8>)> = Vec::new();
        if let Some(h) = handshake {
            if let Some(commit) = h.commit {
                items.push((COMMIT, commit));
            }
            items.push((WELCOME, h.welcome));
        }
        items.push((APPLICATION, tls(&message)?));
        let mut out = head;
        out.push(items.len() as u8);
        for (kind, bytes) in items {
            out.push(kind);
            let len = u32::try_from(bytes.len())
                .map_err(|_| SdkError::Mls("an MLS message over 4 GiB".into()))?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&bytes);
        }
        Ok(out)
    }
}

fn validated<P: OpenMlsProvider>(provider: &P, b64: &str) -> Result<KeyPackage, SdkError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| SdkError::Refused(format!("a claimed KeyPackage is not base64: {e}")))?;
    KeyPackageIn::tls_deserialize_exact(bytes.as_slice())
        .map_err(|e| SdkError::Refused(format!("a claimed KeyPackage does not parse: {e}")))?
        .validate(provider.crypto(), ProtocolVersion::Mls10)
        .map_err(|e| SdkError::Refused(format!("a claimed KeyPackage does not verify: {e:?}")))
}

fn binding_bytes(b: &Binding) -> Result<Vec<u8>, SdkError> {
    let mut out =
        Vec::with_capacity(8 + b.tenant.len() + b.message_id.len() + b.recipient_label.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(MODE_MLS);
    for (field, value) in [
        ("tenant", &b.tenant),
        ("message_id", &b.message_id),
        ("recipient_label", &b.recipient_label),
    ] {
        let len = u8::try_from(value.len())
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| SdkError::Invalid(format!("{field} must be 1 to 255 bytes")))?;
        out.push(len);
        out.extend_from_slice(value.as_bytes());
    }
    Ok(out)
}

/// Parses an MLS payload: its binding, the binding's bytes, and its items.
#[allow(clippy::type_complexity)]
fn parse(bytes: &[u8]) -> Result<(Binding, &[u8], Vec<(u8, &[u8])>), OpenError> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], OpenError> {
        let end = at.checked_add(n).ok_or(OpenError::Malformed)?;
        let out = bytes.get(at..end).ok_or(OpenError::Malformed)?;
        at = end;
        Ok(out)
    };
    if take(4)? != MAGIC {
        return Err(OpenError::Malformed);
    }
    let version = take(1)?[0];
    if version != VERSION {
        return Err(OpenError::UnknownVersion(version));
    }
    let mode = take(1)?[0];
    if mode != MODE_MLS {
        return Err(OpenError::UnknownMode(mode));
    }
    let mut str8 = || -> Result<String, OpenError> {
        let n = usize::from(take(1)?[0]);
        String::from_utf8(take(n)?.to_vec()).map_err(|_| OpenError::Malformed)
    };
    let binding = Binding {
        tenant: str8()?,
        message_id: str8()?,
        recipient_label: str8()?,
    };
    let head_len =
        6 + 3 + binding.tenant.len() + binding.message_id.len() + binding.recipient_label.len();
    let mut at = head_len;
    let count = usize::from(*bytes.get(at).ok_or(OpenError::Malformed)?);
    at += 1;
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        let kind = *bytes.get(at).ok_or(OpenError::Malformed)?;
        let len_bytes: [u8; 4] = bytes
            .get(at + 1..at + 5)
            .and_then(|b| b.try_into().ok())
            .ok_or(OpenError::Malformed)?;
        let len = u32::from_be_bytes(len_bytes) as usize;
        let start = at + 5;
        let body = bytes.get(start..start + len).ok_or(OpenError::Malformed)?;
        items.push((kind, body));
        at = start + len;
    }
    if at != bytes.len() {
        return Err(OpenError::Malformed);
    }
    Ok((binding, &bytes[..head_len], items))
}

/// Opens an MLS payload on a device: joins through a Welcome meant for it, applies a Commit for
/// a group it is in, and decrypts the application message, whose authenticated data must be
/// the expected binding. Group state is read from and written to the provider's storage.
pub fn open<P: OpenMlsProvider>(
    provider: &P,
    payload: &[u8],
    expected: &Binding,
) -> Result<Vec<u8>, OpenError> {
    let (binding, head, items) = parse(payload)?;
    if binding.tenant != expected.tenant {
        return Err(OpenError::WrongBinding("tenant"));
    }
    if binding.message_id != expected.message_id {
        return Err(OpenError::WrongBinding("message id"));
    }
    if binding.recipient_label != expected.recipient_label {
        return Err(OpenError::WrongBinding("recipient"));
    }
    let gid = group_id(&expected.tenant, &expected.recipient_label);
    let mut group = MlsGroup::load(provider.storage(), &gid).map_err(|_| OpenError::Malformed)?;
    let mut application = None;
    for (kind, bytes) in items {
        let message =
            MlsMessageIn::tls_deserialize_exact(bytes).map_err(|_| OpenError::Malformed)?;
        match kind {
            WELCOME => {
                let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
                    return Err(OpenError::Malformed);
                };
                if group.is_some() {
                    continue;
                }
                let config = MlsGroupJoinConfig::builder()
                    .use_ratchet_tree_extension(true)
                    .build();
                // A Welcome for other devices only: this device is not being added now.
                if let Ok(staged) =
                    StagedWelcome::new_from_welcome(provider, &config, welcome, None)
                {
                    group = Some(
                        staged
                            .into_group(provider)
                            .map_err(|_| OpenError::Tampered)?,
                    );
                }
            }
            COMMIT => {
                let Some(g) = group.as_mut() else { continue };
                let protocol = message
                    .try_into_protocol_message()
                    .map_err(|_| OpenError::Malformed)?;
                if protocol.epoch() != g.epoch() {
                    // A commit this device's group state already includes (it joined after).
                    continue;
                }
                let processed = g
                    .process_message(provider, protocol)
                    .map_err(|_| OpenError::Tampered)?;
                if let ProcessedMessageContent::StagedCommitMessage(staged) =
                    processed.into_content()
                {
                    g.merge_staged_commit(provider, *staged)
                        .map_err(|_| OpenError::Tampered)?;
                }
            }
            APPLICATION => application = Some(message),
            _ => return Err(OpenError::Malformed),
        }
    }
    let group = group.as_mut().ok_or(OpenError::NotForThisDevice)?;
    let protocol = application
        .ok_or(OpenError::Malformed)?
        .try_into_protocol_message()
        .map_err(|_| OpenError::Malformed)?;
    // The authenticated data travels in the clear: check it before decrypting, so a copy with a
    // rewritten binding is refused without using up the message's key.
    match &protocol {
        ProtocolMessage::PrivateMessage(m) if m.aad() == head => {}
        _ => return Err(OpenError::Tampered),
    }
    let processed = group
        .process_message(provider, protocol)
        .map_err(|_| OpenError::Tampered)?;
    if processed.aad() != head {
        return Err(OpenError::Tampered);
    }
    match processed.into_content() {
        ProcessedMessageContent::ApplicationMessage(m) => Ok(m.into_bytes()),
        _ => Err(OpenError::Malformed),
    }
}

/// Whether bytes are an MLS payload (mode 2) rather than an HPKE envelope.
pub fn is_mls(payload: &[u8]) -> bool {
    payload.len() > 5 && &payload[..4] == MAGIC && payload[5] == MODE_MLS
}
