//! # sealpost-blobstore
//!
//! Object storage of the opaque ciphertext that messages refer to.
//!
//! **Owns:**
//! - [`BlobStore`]: the S3 client (aws-sdk-s3 on the smithy hyper client with rustls + ring).
//!   Objects live under `tenants/<tenant>/` in one bucket and are named by references
//!   `s3://<bucket>/tenants/<tenant>/<name>`; [`BlobStore::parse_ref`] refuses anything outside the
//!   tenant's own prefix. Streaming uploads hash while they stream (single `PutObject` up to
//!   [`MULTIPART_THRESHOLD`], multipart in 8 MiB parts above it, every request carrying its
//!   SHA-256 checksum), presigned PUTs, existence and digest checks, deletes and legal holds.
//! - [`EmbeddedS3`]: an in-process S3 endpoint (s3s-fs over a local folder), the default endpoint
//!   for development and tests. It accepts and ignores legal holds; Object Lock is tested against
//!   moto.
//!
//! **Must not:** read, log or decrypt payload bytes beyond hashing them; log object bodies or put
//! them in errors; log credentials; talk to NATS or SQL. Only references, sizes and SHA-256
//! digests leave this crate.

mod embedded;
mod error;
mod hashing;
mod objects;
mod presign;
mod records;
mod reference;
mod s3_error;
mod store;
mod upload;

pub use embedded::EmbeddedS3;
pub use error::{BlobError, BlobErrorKind};
pub use records::RECORDS_PREFIX;
pub use reference::BlobRef;
pub use store::{
    BlobStore, BlobStoreConfig, ObjectInfo, PresignedPut, StoredBlob, MULTIPART_THRESHOLD,
};
