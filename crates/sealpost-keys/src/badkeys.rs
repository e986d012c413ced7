//! The bad-key list: fingerprints a tenant's admins or the platform marked bad, in an
//! append-only log of their own (`sealpost.klog.<tenant>.bad` on `SEALPOST_KEYS`), whose
//! checkpoints the directory's key signs under the origin `<checkpoint origin>/bad`.
//!
//! An entry (ASCII, each line ending in `\n`):
//!
//! ```text
//! sealpost-keys/bad/v1
//! <scope: "tenant" or "platform">
//! <the key's fingerprint, 64 lowercase hex digits>
//! <reason: 1 to 64 of [a-z0-9_]>
//! ```
//!
//! Marking a fingerprint bad appends its entry (once), then revokes the key, with reason
//! `marked_bad`, wherever the tenant's recipients published it; a key with a listed fingerprint
//! is refused at publish (`key_marked_bad`). A client verifies the list whole: the entries'
//! RFC 9162 root must be the signed checkpoint's.

use sealpost_tlog::{JetStreamLog, LogSigner, SignedCheckpoint, Tree};

use crate::EpochError;

const BAD_TAG: &str = "sealpost-keys/bad/v1";

/// Who marked a key bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadScope {
    /// The tenant's admins.
    Tenant,
    /// The platform (applied to every tenant's list).
    Platform,
}

/// One entry of the bad-key list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadKey {
    pub scope: BadScope,
    pub fingerprint: [u8; 32],
    pub reason: String,
}

impl BadKey {
    /// A mark, if the reason is 1 to 64 of `[a-z0-9_]`.
    pub fn new(scope: BadScope, fingerprint: [u8; 32], reason: &str) -> Option<Self> {
        let ok = !reason.is_empty()
            && reason.len() <= 64
            && reason
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        ok.then(|| BadKey {
            scope,
            fingerprint,
            reason: reason.to_owned(),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let scope = match self.scope {
            BadScope::Tenant => "tenant",
            BadScope::Platform => "platform",
        };
        format!(
            "{BAD_TAG}\n{scope}\n{}\n{}\n",
            hex::encode(self.fingerprint),
            self.reason
        )
        .into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EpochError> {
        let bad = |why: &str| EpochError::BadEntry(format!("bad-key entry: {why}"));
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
        let lines: Vec<&str> = text
            .strip_suffix('\n')
            .ok_or_else(|| bad("no final newline"))?
            .split('\n')
            .collect();
        let [tag, scope, fingerprint, reason] = lines[..] else {
            return Err(bad("not four lines"));
        };
        if tag != BAD_TAG {
            return Err(bad("not a sealpost-keys/bad/v1 entry"));
        }
        let scope = match scope {
            "tenant" => BadScope::Tenant,
            "platform" => BadScope::Platform,
            _ => return Err(bad("unknown scope")),
        };
        let fingerprint: [u8; 32] = hex::decode(fingerprint)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("the fingerprint is not 64 hex digits"))?;
        let entry = BadKey::new(scope, fingerprint, reason).ok_or_else(|| bad("bad reason"))?;
        if entry.encode() != bytes {
            return Err(bad("not in canonical form"));
        }
        Ok(entry)
    }
}

/// A tenant's bad-key list with its signer.
#[derive(Debug)]
pub struct BadKeyList {
    log: JetStreamLog,
    signer: LogSigner,
}

impl BadKeyList {
    /// The list in `log` (opened with its entries); `directory_signer` is the directory's
    /// checkpoint signer, whose key signs the list under `<its origin>/bad`.
    pub fn new(log: JetStreamLog, directory_signer: &LogSigner) -> Result<Self, EpochError> {
        let signer = directory_signer.for_log(&bad_keys_origin(directory_signer.origin()))?;
        Ok(Self { log, signer })
    }

    /// Reads entries appended by other processes.
    pub async fn refresh(&mut self) -> Result<(), EpochError> {
        self.log.refresh().await?;
        Ok(())
    }

    pub fn entries(&self) -> Result<Vec<BadKey>, EpochError> {
        (0..self.log.size())
            .map(|i| {
                BadKey::decode(self.log.entry(i).ok_or_else(|| {
                    EpochError::BadEntry("the bad-key list was opened without its entries".into())
                })?)
            })
            .collect()
    }

    /// The index of the fingerprint's entry, if it is listed.
    pub fn find(&self, fingerprint: &[u8; 32]) -> Result<Option<u64>, EpochError> {
        Ok(self
            .entries()?
            .iter()
            .position(|e| &e.fingerprint == fingerprint)
            .map(|i| i as u64))
    }

    /// Lists the fingerprint (once: a listed one is not appended again); returns its index.
    pub async fn mark(&mut self, entry: &BadKey) -> Result<u64, EpochError> {
        if let Some(i) = self.find(&entry.fingerprint)? {
            return Ok(i);
        }
        Ok(self.log.append(&entry.encode()).await?)
    }

    pub fn size(&self) -> u64 {
        self.log.size()
    }

    pub fn tree(&self) -> &Tree {
        self.log.tree()
    }

    pub fn checkpoint(&self) -> Result<SignedCheckpoint, EpochError> {
        Ok(self.log.checkpoint(&self.signer)?)
    }

    /// The verifier key of the list's checkpoints.
    pub fn verifier_key(&self) -> &str {
        self.signer.verifier_key()
    }
}

/// The origin of a directory's bad-key list checkpoints.
pub fn bad_keys_origin(directory_origin: &str) -> String {
    format!("{directory_origin}/bad")
}

/// Verifies a whole list against its signed checkpoint: the entries' tree root must be the
/// checkpoint's, so nothing was left out or added. Returns the entries.
pub fn verify_bad_keys(
    verifier: &sealpost_tlog::CheckpointVerifier,
    entries: &[Vec<u8>],
    checkpoint: &[u8],
) -> Result<Vec<BadKey>, EpochError> {
    let refused = |what: String| EpochError::Refused(what);
    let cp = verifier
        .open(checkpoint)
        .map_err(|e| refused(format!("the bad-key list's checkpoint: {e}")))?;
    let mut tree = Tree::new();
    for e in entries {
        tree.append(e);
    }
    if tree.size() != cp.size || tree.root(cp.size)? != cp.root {
        return Err(refused(format!(
            "the bad-key list's {} entries are not the {} its checkpoint signs",
            entries.len(),
            cp.size
        )));
    }
    entries.iter().map(|e| BadKey::decode(e)).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn entries_round_trip_and_only_the_canonical_form_decodes() {
        let e = BadKey::new(BadScope::Platform, [0xab; 32], "leaked_in_breach").unwrap();
        let bytes = e.encode();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            format!(
                "sealpost-keys/bad/v1\nplatform\n{}\nleaked_in_breach\n",
                "ab".repeat(32)
            )
        );
        assert_eq!(BadKey::decode(&bytes).unwrap(), e);
        for bad in [
            "sealpost-keys/bad/v1\nplatform\nAB\nx\n".to_owned(),
            format!("sealpost-keys/bad/v1\nsomeone\n{}\nx\n", "ab".repeat(32)),
            format!(
                "sealpost-keys/bad/v1\ntenant\n{}\nNot Lower\n",
                "ab".repeat(32)
            ),
            format!("sealpost-keys/bad/v1\ntenant\n{}\nx", "ab".repeat(32)),
            format!("sealpost-keys/bad/v2\ntenant\n{}\nx\n", "ab".repeat(32)),
        ] {
            assert!(BadKey::decode(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(BadKey::new(BadScope::Tenant, [0; 32], "").is_none());
    }

    #[test]
    fn a_list_verifies_whole_and_a_missing_or_added_entry_is_refused() {
        let (directory, _) = LogSigner::generate("sealpost.test/keys/acme").unwrap();
        let signer = directory
            .for_log(&bad_keys_origin("sealpost.test/keys/acme"))
            .unwrap();
        let entries: Vec<Vec<u8>> = (0..3u8)
            .map(|i| {
                BadKey::new(BadScope::Tenant, [i; 32], "compromised")
                    .unwrap()
                    .encode()
            })
            .collect();
        let mut tree = Tree::new();
        for e in &entries {
            tree.append(e);
        }
        let cp = signer.sign(3, tree.root(3).unwrap()).unwrap();
        let v = signer.verifier();
        assert_eq!(
            verify_bad_keys(&v, &entries, cp.as_bytes()).unwrap().len(),
            3
        );
        assert!(verify_bad_keys(&v, &entries[..2], cp.as_bytes()).is_err());
        let mut more = entries.clone();
        more.push(
            BadKey::new(BadScope::Tenant, [9; 32], "x")
                .unwrap()
                .encode(),
        );
        assert!(verify_bad_keys(&v, &more, cp.as_bytes()).is_err());
        // The directory's epoch-log verifier (same key, other origin) does not take them.
        assert!(verify_bad_keys(&directory.verifier(), &entries, cp.as_bytes()).is_err());
    }
}
