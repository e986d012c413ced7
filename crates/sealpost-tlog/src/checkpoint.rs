//! Checkpoints: a log's size and root in the C2SP `tlog-checkpoint` text format, signed as a
//! C2SP signed note with Ed25519.
//!
//! The key's name is the log's origin, so a signature for one log can never pass as another's.
//! Keys use the signed-note encodings (Go's `sumdb/note`): the signer key
//! `PRIVATE+KEY+<name>+<key id>+<base64(0x01 || seed)>` is a secret; the verifier key
//! `<name>+<key id>+<base64(0x01 || public key)>` is what auditors and clients pin.

use base64::Engine as _;
use ed25519_dalek::SigningKey;
use signed_note::{Note, StandardVerifier, VerifierList};
use tlog_tiles::Hash;

use crate::{LogError, Result};

/// The signed-note algorithm byte of Ed25519.
const ALG_ED25519: u8 = 0x01;

/// A checkpoint's contents.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

/// A signed checkpoint, exactly as published: the note's bytes (text, blank line, signature
/// lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint(pub Vec<u8>);

impl SignedCheckpoint {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Signs a log's checkpoints. Its `Debug` shows the verifier key only.
#[derive(Clone)]
pub struct LogSigner {
    origin: String,
    key_id: u32,
    key: SigningKey,
    verifier_key: String,
}

impl std::fmt::Debug for LogSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSigner")
            .field("verifier_key", &self.verifier_key)
            .finish_non_exhaustive()
    }
}

impl signed_note::Signer for LogSigner {
    fn name(&self) -> &str {
        &self.origin
    }
    fn key_id(&self) -> u32 {
        self.key_id
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, ed25519_dalek::SignatureError> {
        use ed25519_dalek::Signer as _;
        Ok(self.key.sign(msg).to_bytes().to_vec())
    }
}

fn bad_key(what: &str) -> LogError {
    LogError::BadKey(format!(
        "{what}; a log signing key looks like PRIVATE+KEY+<origin>+<8 hex digits>+<base64>, as \
         `sealpost-tlog` or Go's note.GenerateKey writes it"
    ))
}

impl LogSigner {
    fn from_signing_key(origin: &str, key: SigningKey) -> Result<Self> {
        if !signed_note::is_key_name_valid(origin) {
            return Err(LogError::BadKey(format!(
                "'{origin}' cannot name a log: an origin is non-empty, with no spaces or '+'"
            )));
        }
        let public = [&[ALG_ED25519][..], key.verifying_key().as_bytes()].concat();
        Ok(LogSigner {
            origin: origin.to_owned(),
            key_id: signed_note::key_id(origin, &public),
            verifier_key: signed_note::new_ed25519_verifier_key(origin, &key.verifying_key()),
            key,
        })
    }

    /// A new random key for the log `origin`; returns the signer and its secret encoding.
    pub fn generate(origin: &str) -> Result<(Self, String)> {
        let key = SigningKey::generate(&mut rand_core::OsRng);
        let signer = Self::from_signing_key(origin, key)?;
        let secret = signer.secret();
        Ok((signer, secret))
    }

    /// The signer key encoding (secret): `PRIVATE+KEY+<origin>+<key id>+<base64(0x01||seed)>`.
    pub fn secret(&self) -> String {
        let private = [&[ALG_ED25519][..], self.key.as_bytes()].concat();
        format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.origin,
            self.key_id,
            base64::engine::general_purpose::STANDARD.encode(private)
        )
    }

    /// Reads a signer key encoding; its name is the log's origin.
    pub fn from_secret(secret: &str) -> Result<Self> {
        // Validated by the reference parser first (format, algorithm, key id).
        signed_note::StandardSigner::new(secret.trim())
            .map_err(|e| bad_key(&format!("the log signing key does not parse ({e})")))?;
        let mut parts = secret.trim().splitn(5, '+');
        let (Some(_), Some(_), Some(origin), Some(_), Some(key)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad_key("the log signing key does not parse"));
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(key)
            .map_err(|_| bad_key("the log signing key's key part is not base64"))?;
        let seed: [u8; 32] = raw
            .get(1..)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| bad_key("the log signing key is not an Ed25519 key"))?;
        Self::from_signing_key(origin, SigningKey::from_bytes(&seed))
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The same key signing another log, `origin` (a log's checkpoints name their origin, so
    /// two logs under one key never take each other's checkpoints).
    pub fn for_log(&self, origin: &str) -> Result<Self> {
        Self::from_signing_key(origin, self.key.clone())
    }

    /// The verifier key to publish and pin: `<origin>+<key id>+<base64(0x01||public key)>`.
    pub fn verifier_key(&self) -> &str {
        &self.verifier_key
    }

    /// A verifier for this signer's checkpoints.
    pub fn verifier(&self) -> CheckpointVerifier {
        CheckpointVerifier {
            origin: self.origin.clone(),
            key: self.verifier_key.clone(),
        }
    }

    /// Signs the checkpoint of the tree of `size` entries with root `root`.
    pub fn sign(&self, size: u64, root: Hash) -> Result<SignedCheckpoint> {
        let text = tlog_tiles::Checkpoint::new(&self.origin, size, root, "")
            .map_err(|e| LogError::BadCheckpoint(e.to_string()))?
            .to_bytes();
        let mut note = Note::new(&text, &[]).map_err(|e| LogError::BadCheckpoint(e.to_string()))?;
        note.add_sigs(&[self])
            .map_err(|e| LogError::BadCheckpoint(e.to_string()))?;
        Ok(SignedCheckpoint(note.to_bytes()))
    }
}

/// Verifies one log's checkpoints against its pinned verifier key.
#[derive(Debug, Clone)]
pub struct CheckpointVerifier {
    origin: String,
    key: String,
}

impl CheckpointVerifier {
    /// From the verifier key encoding `<origin>+<key id>+<base64(0x01||public key)>`.
    pub fn new(verifier_key: &str) -> Result<Self> {
        let v = StandardVerifier::new(verifier_key.trim()).map_err(|e| {
            LogError::BadKey(format!(
                "the log verifier key does not parse ({e}); it looks like \
                 <origin>+<8 hex digits>+<base64>"
            ))
        })?;
        Ok(CheckpointVerifier {
            origin: signed_note::Verifier::name(&v).to_owned(),
            key: verifier_key.trim().to_owned(),
        })
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Checks the signature of this log's key and parses the checkpoint. Signatures of other keys
    /// (witnesses' cosignatures) are allowed and ignored; a bad signature of this key fails.
    pub fn open(&self, signed: &[u8]) -> Result<Checkpoint> {
        let note = Note::from_bytes(signed)
            .map_err(|e| LogError::BadCheckpoint(format!("not a signed note: {e}")))?;
        let verifier = StandardVerifier::new(&self.key)
            .map_err(|e| LogError::BadKey(format!("the log verifier key: {e}")))?;
        let known = VerifierList::new(vec![Box::new(verifier)]);
        note.verify(&known).map_err(|e| {
            LogError::BadCheckpoint(format!(
                "not signed by the key of log '{}': {e}",
                self.origin
            ))
        })?;
        let cp = tlog_tiles::Checkpoint::from_bytes(note.text())
            .map_err(|e| LogError::BadCheckpoint(format!("the note is not a checkpoint: {e}")))?;
        if cp.origin() != self.origin {
            return Err(LogError::BadCheckpoint(format!(
                "a checkpoint of log '{}', not of '{}'",
                cp.origin(),
                self.origin
            )));
        }
        if !cp.extension().is_empty() {
            return Err(LogError::BadCheckpoint(
                "a checkpoint with extension lines; this log writes none".into(),
            ));
        }
        Ok(Checkpoint {
            origin: cp.origin().to_owned(),
            size: cp.size(),
            root: *cp.hash(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The example key pair and note of Go's `golang.org/x/mod/sumdb/note` documentation and
    /// tests, the reference of C2SP signed-note.
    const SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                        then you don't know what your problem is.\n";
    const SIG: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    #[test]
    fn the_reference_key_pair_signs_the_reference_note_byte_for_byte() {
        let signer = LogSigner::from_secret(SKEY).unwrap();
        assert_eq!(signer.verifier_key(), VKEY);
        assert_eq!(signer.secret(), SKEY);
        let mut note = Note::new(TEXT.as_bytes(), &[]).unwrap();
        note.add_sigs(&[&signer]).unwrap();
        assert_eq!(
            String::from_utf8(note.to_bytes()).unwrap(),
            format!("{TEXT}\n{SIG}")
        );
    }

    #[test]
    fn a_signed_checkpoint_opens_with_the_pinned_key_only() {
        let (signer, secret) = LogSigner::generate("sealpost.example/keys/acme").unwrap();
        assert_eq!(
            LogSigner::from_secret(&secret).unwrap().verifier_key(),
            signer.verifier_key()
        );
        let root = tlog_tiles::record_hash(b"x");
        let signed = signer.sign(42, root).unwrap();
        let text = String::from_utf8(signed.0.clone()).unwrap();
        assert!(
            text.starts_with(&format!(
                "sealpost.example/keys/acme\n42\n{root}\n\n\u{2014} sealpost.example/keys/acme "
            )),
            "{text}"
        );
        let verifier = CheckpointVerifier::new(signer.verifier_key()).unwrap();
        let cp = verifier.open(&signed.0).unwrap();
        assert_eq!(
            cp,
            Checkpoint {
                origin: "sealpost.example/keys/acme".into(),
                size: 42,
                root
            }
        );
        // Ed25519 is deterministic: the same checkpoint signs to the same bytes.
        assert_eq!(signer.sign(42, root).unwrap(), signed);

        // Another log's key, even under the same name, does not open it.
        let (other, _) = LogSigner::generate("sealpost.example/keys/acme").unwrap();
        let e = other.verifier().open(&signed.0).unwrap_err().to_string();
        assert!(e.contains("not signed by the key"), "{e}");
        // A tampered size or root does not open.
        let tampered = text.replacen("\n42\n", "\n43\n", 1);
        let e = verifier.open(tampered.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("invalid signature"), "{e}");
        let mut flipped = signed.0.clone();
        let sig_at = flipped.len() - 10;
        flipped[sig_at] = if flipped[sig_at] == b'A' { b'B' } else { b'A' };
        assert!(verifier.open(&flipped).is_err());
        // Not a note at all.
        assert!(verifier.open(b"hello").is_err());
    }

    #[test]
    fn keys_that_do_not_parse_are_refused_with_what_they_should_look_like() {
        let e = LogSigner::from_secret("not a key").unwrap_err().to_string();
        assert!(e.contains("PRIVATE+KEY+"), "{e}");
        // A valid key whose key id was changed.
        let e = LogSigner::from_secret(&SKEY.replace("c74f20a3", "c74f20a4"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not parse"), "{e}");
        assert!(CheckpointVerifier::new("PeterNeumann+c74f20a3").is_err());
        assert!(LogSigner::generate("has space").is_err());
    }
}
