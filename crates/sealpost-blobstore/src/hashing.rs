//! Hashing while streaming: a body arrives in chunks of any size and leaves as parts of a fixed
//! size, with the SHA-256 of the whole body computed on the way through. At most one part (plus
//! the chunk that completed it) is held in memory.

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

use sealpost_domain::Sha256Hex;

/// Lowercase hex of a raw SHA-256 digest.
pub(crate) fn to_hex(digest: &[u8; 32]) -> Sha256Hex {
    // 32 bytes always give 64 lowercase hex characters, which `Sha256Hex` accepts.
    Sha256Hex::new(hex::encode(digest)).unwrap_or_else(|_| unreachable!("hex of 32 bytes"))
}

/// Standard base64 of a raw digest: the form of `x-amz-checksum-sha256`.
pub(crate) fn to_base64(digest: &[u8; 32]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// The raw digest of a hex digest.
pub(crate) fn from_hex(d: &Sha256Hex) -> [u8; 32] {
    let mut out = [0u8; 32];
    // `Sha256Hex` is 64 hex characters by construction.
    if hex::decode_to_slice(d.as_str(), &mut out).is_err() {
        unreachable!("Sha256Hex holds 64 hex characters");
    }
    out
}

/// An `x-amz-checksum-sha256` value (standard base64 of 32 bytes), as hex; `None` for anything
/// else, e.g. the composite `<base64>-<parts>` checksum of a multipart object, which is not the
/// digest of the object's bytes.
pub(crate) fn checksum_to_hex(checksum: &str) -> Option<Sha256Hex> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(checksum.trim())
        .ok()?;
    let raw: [u8; 32] = raw.try_into().ok()?;
    Some(to_hex(&raw))
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// SHA-256 and length of a body seen in chunks.
#[derive(Debug, Default, Clone)]
pub(crate) struct StreamingDigest {
    hasher: Sha256,
    len: u64,
}

impl StreamingDigest {
    pub(crate) fn update(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
        self.len += chunk.len() as u64;
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn finish(self) -> ([u8; 32], u64) {
        (self.hasher.finalize().into(), self.len)
    }
}

/// Cuts a chunked body into parts of `part_size` bytes (the last one shorter), hashing the whole
/// body as chunks arrive.
#[derive(Debug)]
pub(crate) struct PartSplitter {
    part_size: usize,
    buf: BytesMut,
    whole: StreamingDigest,
}

impl PartSplitter {
    pub(crate) fn new(part_size: usize) -> Self {
        Self {
            part_size,
            buf: BytesMut::new(),
            whole: StreamingDigest::default(),
        }
    }

    /// Bytes seen so far.
    pub(crate) fn total(&self) -> u64 {
        self.whole.len()
    }

    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.whole.update(chunk);
        if self.buf.capacity() == 0 {
            self.buf
                .reserve(self.part_size.min(chunk.len().max(64 * 1024)));
        }
        self.buf.extend_from_slice(chunk);
    }

    /// A full part, but only when more bytes than one part are buffered: then the body is known
    /// to continue after it, and a body of exactly `part_size` bytes stays a single part.
    pub(crate) fn take_full_part(&mut self) -> Option<Bytes> {
        (self.buf.len() > self.part_size).then(|| self.buf.split_to(self.part_size).freeze())
    }

    /// What is left once the body has ended: at most `part_size` bytes after
    /// [`Self::take_full_part`] returned `None`, and the digest and length of the whole body.
    pub(crate) fn finish(self) -> (Bytes, [u8; 32], u64) {
        let (digest, len) = self.whole.finish();
        (self.buf.freeze(), digest, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(len: usize) -> Vec<u8> {
        // Deterministic, not periodic at any part size used here.
        let mut x: u32 = 0x9e37_79b9;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect()
    }

    fn split(data: &[u8], chunk_sizes: &[usize], part_size: usize) -> (Vec<Bytes>, [u8; 32], u64) {
        let mut s = PartSplitter::new(part_size);
        let mut parts = Vec::new();
        let mut rest = data;
        let mut i = 0;
        while !rest.is_empty() {
            let n = chunk_sizes[i % chunk_sizes.len()].min(rest.len());
            i += 1;
            s.push(&rest[..n]);
            rest = &rest[n..];
            while let Some(p) = s.take_full_part() {
                parts.push(p);
            }
        }
        let (last, digest, len) = s.finish();
        if !last.is_empty() || parts.is_empty() {
            parts.push(last);
        }
        (parts, digest, len)
    }

    #[test]
    fn parts_reassemble_the_body_and_the_digest_is_the_whole_bodys() {
        for (len, chunks, part) in [
            (0usize, vec![7usize], 16usize),
            (1, vec![1], 16),
            (15, vec![4], 16),
            (16, vec![16], 16),
            (16, vec![3, 5], 16),
            (17, vec![16], 16),
            (100, vec![1, 2, 3, 50, 7], 16),
            (1000, vec![1000], 16),
            (4096 * 3 + 5, vec![4096], 4096),
        ] {
            let data = body(len);
            let (parts, digest, total) = split(&data, &chunks, part);
            assert_eq!(total, len as u64);
            assert_eq!(to_hex(&digest), Sha256Hex::of(&data), "len {len}");
            assert_eq!(parts.concat(), data, "len {len}");
            let (last, full) = parts.split_last().unwrap();
            assert!(full.iter().all(|p| p.len() == part), "len {len}");
            assert!(last.len() <= part, "len {len}");
            // A body that fits one part is one part, even when it fills it exactly.
            assert_eq!(parts.len() == 1, len <= part, "len {len}");
            if len > part {
                assert!(!last.is_empty());
            }
        }
    }

    #[test]
    fn digest_conversions() {
        let d = sha256(b"abc");
        let hex = to_hex(&d);
        assert_eq!(hex, Sha256Hex::of(b"abc"));
        assert_eq!(from_hex(&hex), d);
        let b64 = to_base64(&d);
        assert_eq!(b64, "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=");
        assert_eq!(checksum_to_hex(&b64), Some(hex));
        // A composite multipart checksum is not the object's digest.
        assert_eq!(checksum_to_hex(&format!("{b64}-3")), None);
        assert_eq!(checksum_to_hex("AAAA"), None);
        let mut streaming = StreamingDigest::default();
        streaming.update(b"a");
        streaming.update(b"");
        streaming.update(b"bc");
        assert_eq!(streaming.finish(), (d, 3));
    }
}
