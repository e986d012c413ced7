//! The log's Merkle tree, its proofs and their verification (RFC 9162 §2.1).
//!
//! The tree keeps the "stored hashes" of Go's `sumdb/tlog` layout (Crosby and Wallach's dense
//! ordering: every leaf hash and every hash of a complete subtree, about two per entry), from
//! which the root of any earlier size and every proof are computed. The proofs are RFC 9162's
//! `inclusion_path` and `consistency_path`: lists of 32-byte hashes, deepest first, which any RFC
//! 9162 verifier checks (the tests check them with a second, independent implementation).

use tlog_tiles::{
    check_record, check_tree, prove_record, prove_tree, record_hash, stored_hashes_for_record_hash,
    tree_hash, Hash, HashReader, HASH_SIZE,
};

use crate::{LogError, Result};

/// The leaf hash of an entry: `SHA-256(0x00 || entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    record_hash(entry)
}

/// An append-only Merkle tree of entry hashes, in memory.
#[derive(Debug, Default, Clone)]
pub struct Tree {
    /// Stored hashes in `tlog` order: index `stored_hash_index(level, n)`.
    hashes: Vec<Hash>,
    size: u64,
}

/// Reads stored hashes out of the vector (the `HashReader` the proof functions ask).
struct Stored<'a>(&'a [Hash]);

impl HashReader for Stored<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|i| {
                usize::try_from(*i)
                    .ok()
                    .and_then(|i| self.0.get(i))
                    .copied()
                    .ok_or(tlog_tiles::Error::IndexesNotInTree)
            })
            .collect()
    }
}

fn invalid(e: tlog_tiles::Error) -> LogError {
    LogError::Invalid(e.to_string())
}

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of entries.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends an entry; returns its index.
    pub fn append(&mut self, entry: &[u8]) -> u64 {
        self.append_leaf_hash(leaf_hash(entry))
    }

    /// Appends an entry by its leaf hash; returns its index.
    pub fn append_leaf_hash(&mut self, leaf: Hash) -> u64 {
        let n = self.size;
        // Reads only hashes of complete subtrees already stored, so it cannot fail.
        let new = stored_hashes_for_record_hash(n, leaf, &Stored(&self.hashes))
            .unwrap_or_else(|e| unreachable!("stored hashes of a consistent tree: {e}"));
        self.hashes.extend(new);
        self.size += 1;
        n
    }

    fn check_size(&self, size: u64) -> Result<()> {
        if size > self.size {
            return Err(LogError::Invalid(format!(
                "tree size {size} is larger than the log ({} entries)",
                self.size
            )));
        }
        Ok(())
    }

    /// The root hash of the first `size` entries (the empty tree's is `SHA-256("")`).
    pub fn root(&self, size: u64) -> Result<Hash> {
        self.check_size(size)?;
        tree_hash(size, &Stored(&self.hashes)).map_err(invalid)
    }

    /// The leaf hash of entry `index`.
    pub fn leaf(&self, index: u64) -> Result<Hash> {
        if index >= self.size {
            return Err(LogError::Invalid(format!(
                "entry {index} is not in the log ({} entries)",
                self.size
            )));
        }
        let i = tlog_tiles::stored_hash_index(0, index);
        Stored(&self.hashes)
            .read_hashes(&[i])
            .map_err(invalid)
            .map(|h| h[0])
    }

    /// RFC 9162 inclusion proof of entry `index` in the tree of the first `size` entries.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>> {
        self.check_size(size)?;
        if index >= size {
            return Err(LogError::Invalid(format!(
                "entry {index} is not in a tree of size {size}"
            )));
        }
        prove_record(size, index, &Stored(&self.hashes)).map_err(invalid)
    }

    /// RFC 9162 consistency proof from the tree of size `old` to the tree of size `new`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>> {
        self.check_size(new)?;
        if old > new {
            return Err(LogError::Invalid(format!(
                "a tree of size {old} cannot be a prefix of one of size {new}"
            )));
        }
        if old == 0 || old == new {
            // RFC 9162 §2.1.4: no proof is needed (or defined) for these.
            return Ok(vec![]);
        }
        prove_tree(new, old, &Stored(&self.hashes)).map_err(invalid)
    }
}

/// Checks that `leaf` (a [`leaf_hash`]) is entry `index` of the tree of `size` entries whose root
/// is `root`.
pub fn verify_inclusion(
    proof: &[Hash],
    size: u64,
    root: Hash,
    index: u64,
    leaf: Hash,
) -> Result<()> {
    if index >= size {
        return Err(LogError::ProofFailed(format!(
            "entry {index} cannot be in a tree of size {size}"
        )));
    }
    check_record(&proof.to_vec(), size, root, index, leaf).map_err(|e| {
        LogError::ProofFailed(format!(
            "entry {index} is not in the tree of size {size} with that root ({e})"
        ))
    })
}

/// Checks that the tree of `old_size` entries with root `old_root` is a prefix of the tree of
/// `new_size` entries with root `new_root`: the log only appended in between.
pub fn verify_consistency(
    proof: &[Hash],
    old_size: u64,
    old_root: Hash,
    new_size: u64,
    new_root: Hash,
) -> Result<()> {
    let fail = |why: String| {
        Err(LogError::ProofFailed(format!(
            "the tree of size {old_size} is not a prefix of the tree of size {new_size}: {why}"
        )))
    };
    if old_size > new_size {
        return fail("the old tree is larger".into());
    }
    if old_size == new_size {
        if !proof.is_empty() || old_root != new_root {
            return fail("two different roots for one size (a split view)".into());
        }
        return Ok(());
    }
    if old_size == 0 {
        if !proof.is_empty() || old_root != tlog_tiles::EMPTY_HASH {
            return fail("the empty tree has root SHA-256(\"\") and needs no proof".into());
        }
        return Ok(());
    }
    check_tree(&proof.to_vec(), new_size, new_root, old_size, old_root)
        .or_else(|e| fail(e.to_string()))
}

/// A proof as bytes: its hashes concatenated, 32 bytes each, in order.
pub fn encode_proof(proof: &[Hash]) -> Vec<u8> {
    proof.iter().flat_map(|h| h.0).collect()
}

/// The inverse of [`encode_proof`]; the length must be a multiple of 32.
pub fn decode_proof(bytes: &[u8]) -> Result<Vec<Hash>> {
    if !bytes.len().is_multiple_of(HASH_SIZE) {
        return Err(LogError::Invalid(format!(
            "a proof is a sequence of {HASH_SIZE}-byte hashes; got {} bytes",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(HASH_SIZE)
        .map(|c| {
            let mut h = [0u8; HASH_SIZE];
            h.copy_from_slice(c);
            Hash(h)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn h(hex_str: &str) -> Hash {
        let mut out = [0u8; 32];
        out.copy_from_slice(&hex::decode(hex_str).unwrap());
        Hash(out)
    }

    /// The RFC 6962 test vectors of the Certificate Transparency reference implementation, as
    /// kept in transparency-dev/merkle (`testonly/constants.go`): eight leaves and the root of
    /// every prefix.
    const LEAVES: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn vector_tree() -> Tree {
        let mut t = Tree::new();
        for (i, l) in LEAVES.iter().enumerate() {
            assert_eq!(t.append(l), i as u64);
        }
        t
    }

    #[test]
    fn roots_of_every_prefix_match_the_rfc_6962_vectors() {
        let t = vector_tree();
        for (size, root) in ROOTS.iter().enumerate() {
            assert_eq!(t.root(size as u64).unwrap(), h(root), "size {size}");
        }
    }

    #[test]
    fn inclusion_proofs_match_the_reference_vectors_and_verify() {
        let t = vector_tree();
        let root8 = h(ROOTS[8]);
        // (index, size, path) from transparency-dev/merkle's inclusion-proof vectors.
        let cases: [(u64, u64, &[&str]); 3] = [
            (
                0,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (0, 1, &[]),
        ];
        for (index, size, path) in cases {
            let want: Vec<Hash> = path.iter().map(|p| h(p)).collect();
            let proof = t.inclusion_proof(index, size).unwrap();
            assert_eq!(proof, want, "inclusion of {index} in {size}");
            let root = t.root(size).unwrap();
            let leaf = leaf_hash(LEAVES[index as usize]);
            verify_inclusion(&proof, size, root, index, leaf).unwrap();
        }
        // The wrong leaf, index, size or root fails.
        let proof = t.inclusion_proof(5, 8).unwrap();
        let leaf5 = leaf_hash(LEAVES[5]);
        assert!(verify_inclusion(&proof, 8, root8, 5, leaf_hash(b"other")).is_err());
        assert!(verify_inclusion(&proof, 8, root8, 4, leaf5).is_err());
        // The size-8 proof against the size-7 tree. (Against root8 with size 7 it passes: RFC
        // 9162 paths do not bind the size, which is why a checkpoint signs size and root together.)
        assert!(verify_inclusion(&proof, 7, h(ROOTS[7]), 5, leaf5).is_err());
        assert!(verify_inclusion(&proof, 8, h(ROOTS[7]), 5, leaf5).is_err());
        assert!(verify_inclusion(&proof, 8, root8, 8, leaf5).is_err());
        let mut bent = proof.clone();
        bent[1].0[0] ^= 1;
        assert!(verify_inclusion(&bent, 8, root8, 5, leaf5).is_err());
    }

    #[test]
    fn consistency_proofs_match_the_reference_vectors_and_verify() {
        let t = vector_tree();
        // (old, new, path) from transparency-dev/merkle's consistency-proof vectors.
        let cases: [(u64, u64, &[&str]); 4] = [
            (1, 1, &[]),
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (old, new, path) in cases {
            let want: Vec<Hash> = path.iter().map(|p| h(p)).collect();
            let proof = t.consistency_proof(old, new).unwrap();
            assert_eq!(proof, want, "consistency {old} -> {new}");
            verify_consistency(
                &proof,
                old,
                h(ROOTS[old as usize]),
                new,
                h(ROOTS[new as usize]),
            )
            .unwrap();
        }
        // A split view: another tree of size 6 is not a prefix of this one of size 8.
        let mut other = Tree::new();
        for l in &LEAVES[..5] {
            other.append(l);
        }
        other.append(b"a different sixth entry");
        let forked_root = other.root(6).unwrap();
        let proof = t.consistency_proof(6, 8).unwrap();
        assert!(verify_consistency(&proof, 6, forked_root, 8, h(ROOTS[8])).is_err());
        // Two roots for one size never verify, and the empty tree needs the empty root.
        assert!(verify_consistency(&[], 6, forked_root, 6, h(ROOTS[6])).is_err());
        verify_consistency(&[], 0, tlog_tiles::EMPTY_HASH, 8, h(ROOTS[8])).unwrap();
        assert!(verify_consistency(&[], 0, h(ROOTS[1]), 8, h(ROOTS[8])).is_err());
        assert!(verify_consistency(&[], 8, h(ROOTS[8]), 6, h(ROOTS[6])).is_err());
    }

    #[test]
    fn proofs_verify_with_an_independent_rfc_9162_implementation() {
        use ct_merkle::{ConsistencyProof, InclusionProof, RootHash};
        type Sha = sha2_011::Sha256;
        let mut t = Tree::new();
        let entries: Vec<Vec<u8>> = (0..77u32)
            .map(|i| format!("entry {i}").into_bytes())
            .collect();
        for e in &entries {
            t.append(e);
        }
        let digest = |h: Hash| ct_merkle::digest::Output::<Sha>::from(h.0);
        for size in 1..=77u64 {
            let root = t.root(size).unwrap();
            let ct_root = RootHash::<Sha>::new(digest(root), size);
            for index in [0, size / 2, size - 1] {
                let proof = t.inclusion_proof(index, size).unwrap();
                let ct = InclusionProof::<Sha>::try_from_bytes(encode_proof(&proof)).unwrap();
                ct_root
                    .verify_inclusion(&entries[index as usize], index, &ct)
                    .unwrap_or_else(|e| panic!("inclusion {index} in {size}: {e:?}"));
            }
            for old in [1, size / 3, size - 1]
                .into_iter()
                .filter(|o| *o >= 1 && *o < size)
            {
                let proof = t.consistency_proof(old, size).unwrap();
                let ct = ConsistencyProof::<Sha>::try_from_bytes(encode_proof(&proof)).unwrap();
                let old_root = RootHash::<Sha>::new(digest(t.root(old).unwrap()), old);
                ct_root
                    .verify_consistency(&old_root, &ct)
                    .unwrap_or_else(|e| panic!("consistency {old} -> {size}: {e:?}"));
            }
        }
    }

    #[test]
    fn proofs_round_trip_through_bytes_and_refuse_a_ragged_length() {
        let t = vector_tree();
        let proof = t.inclusion_proof(3, 7).unwrap();
        assert_eq!(decode_proof(&encode_proof(&proof)).unwrap(), proof);
        assert!(decode_proof(&[0u8; 33]).is_err());
    }

    #[test]
    fn out_of_range_requests_are_refused_with_the_sizes() {
        let t = vector_tree();
        let e = t.root(9).unwrap_err().to_string();
        assert!(e.contains("9") && e.contains("8 entries"), "{e}");
        assert!(t.inclusion_proof(8, 8).is_err());
        assert!(t.consistency_proof(5, 4).is_err());
        assert!(t.leaf(8).is_err());
        assert_eq!(t.leaf(5).unwrap(), leaf_hash(LEAVES[5]));
    }
}
