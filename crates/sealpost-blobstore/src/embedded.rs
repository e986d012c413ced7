//! [`EmbeddedS3`]: an S3 endpoint served in-process by s3s-fs over a local folder.
//!
//! It is the default endpoint for development and tests: SigV4 authentication with one key pair,
//! path-style addressing. A SHA-256 checksum header is verified before the object (or part)
//! becomes visible: s3s-fs itself checks `PutObject` checksums only after moving the file into
//! place, and part checksums not at all. Legal holds are accepted and ignored (Object Lock needs a
//! real implementation; tests use moto).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use sha2::{Digest as _, Sha256};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result, S3};
use s3s_fs::FileSystem;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use sealpost_domain::Secret;

use crate::error::BlobError;
use crate::store::BlobStoreConfig;

/// An in-process S3 server. Stops (with all its connections) when dropped.
pub struct EmbeddedS3 {
    addr: SocketAddr,
    root: PathBuf,
    access_key: String,
    secret: String,
    task: JoinHandle<()>,
}

impl fmt::Debug for EmbeddedS3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedS3")
            .field("addr", &self.addr)
            .field("root", &self.root)
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

impl EmbeddedS3 {
    /// Serves S3 over the folder `root` (created if missing) on `addr` (e.g. `127.0.0.1:0`) with
    /// the one key pair `access_key`/`secret`; returns once it is listening.
    pub async fn start(
        root: &Path,
        addr: SocketAddr,
        access_key: &str,
        secret: &str,
    ) -> Result<Self, BlobError> {
        tokio::fs::create_dir_all(root).await.map_err(|e| {
            BlobError::other(format!(
                "embedded S3: cannot create its data folder {}: {e}; choose a writable folder",
                root.display()
            ))
        })?;
        let fs = FileSystem::new(root).map_err(|e| {
            BlobError::other(format!(
                "embedded S3: cannot use {} as its data folder: {e:?}",
                root.display()
            ))
        })?;
        let service = {
            let mut b = s3s::service::S3ServiceBuilder::new(Embedded { fs });
            b.set_auth(s3s::auth::SimpleAuth::from_single(access_key, secret));
            b.build()
        };
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            BlobError::other(format!(
                "embedded S3: cannot listen on {addr}: {e}; choose another address or port"
            ))
        })?;
        let local = listener.local_addr().map_err(|e| {
            BlobError::other(format!(
                "embedded S3: no local address after binding {addr}: {e}"
            ))
        })?;
        let task = tokio::spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            // Owned by this task: aborting it aborts every connection too.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((socket, _)) => {
                            let conn = http
                                .serve_connection(TokioIo::new(socket), service.clone())
                                .into_owned();
                            connections.spawn(async move {
                                let _ = conn.await;
                            });
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "embedded S3: accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    },
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        tracing::info!(endpoint = %format!("http://{local}"), root = %root.display(), "embedded S3 listening");
        Ok(Self {
            addr: local,
            root: root.to_owned(),
            access_key: access_key.to_owned(),
            secret: secret.to_owned(),
            task,
        })
    }

    /// `http://<ip>:<port>`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A client configuration for `bucket` on this endpoint.
    pub fn config(&self, bucket: &str) -> BlobStoreConfig {
        BlobStoreConfig {
            endpoint: Some(self.endpoint()),
            region: "us-east-1".to_owned(),
            bucket: bucket.to_owned(),
            access_key_id: self.access_key.clone(),
            secret_access_key: Secret::new(self.secret.clone()),
            force_path_style: true,
        }
    }
}

impl Drop for EmbeddedS3 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// s3s-fs, plus SHA-256 checksums verified before a body is stored, and legal-hold calls accepted
/// and ignored (s3s-fs answers NotImplemented).
#[derive(Debug)]
struct Embedded {
    fs: FileSystem,
}

macro_rules! delegate_to_fs {
    ($($op:ident($input:ident) -> $output:ident;)*) => {
        #[async_trait::async_trait]
        impl S3 for Embedded {
            $(
                async fn $op(&self, req: S3Request<$input>) -> S3Result<S3Response<$output>> {
                    self.fs.$op(req).await
                }
            )*

            async fn put_object(
                &self,
                mut req: S3Request<PutObjectInput>,
            ) -> S3Result<S3Response<PutObjectOutput>> {
                let mismatch = verify_body(&mut req.input.body, req.input.checksum_sha256.as_deref());
                let result = self.fs.put_object(req).await;
                checked(result, mismatch)
            }

            async fn upload_part(
                &self,
                mut req: S3Request<UploadPartInput>,
            ) -> S3Result<S3Response<UploadPartOutput>> {
                let mismatch = verify_body(&mut req.input.body, req.input.checksum_sha256.as_deref());
                let result = self.fs.upload_part(req).await;
                checked(result, mismatch)
            }

            async fn put_object_legal_hold(
                &self,
                req: S3Request<PutObjectLegalHoldInput>,
            ) -> S3Result<S3Response<PutObjectLegalHoldOutput>> {
                tracing::debug!(bucket = %req.input.bucket, key = %req.input.key, "embedded S3 ignores legal holds");
                Ok(S3Response::new(PutObjectLegalHoldOutput::default()))
            }

            async fn get_object_legal_hold(
                &self,
                _req: S3Request<GetObjectLegalHoldInput>,
            ) -> S3Result<S3Response<GetObjectLegalHoldOutput>> {
                Ok(S3Response::new(GetObjectLegalHoldOutput::default()))
            }
        }
    };
}

delegate_to_fs! {
    create_bucket(CreateBucketInput) -> CreateBucketOutput;
    copy_object(CopyObjectInput) -> CopyObjectOutput;
    delete_bucket(DeleteBucketInput) -> DeleteBucketOutput;
    delete_object(DeleteObjectInput) -> DeleteObjectOutput;
    delete_objects(DeleteObjectsInput) -> DeleteObjectsOutput;
    get_bucket_location(GetBucketLocationInput) -> GetBucketLocationOutput;
    get_object(GetObjectInput) -> GetObjectOutput;
    head_bucket(HeadBucketInput) -> HeadBucketOutput;
    head_object(HeadObjectInput) -> HeadObjectOutput;
    list_buckets(ListBucketsInput) -> ListBucketsOutput;
    list_objects(ListObjectsInput) -> ListObjectsOutput;
    list_objects_v2(ListObjectsV2Input) -> ListObjectsV2Output;
    create_multipart_upload(CreateMultipartUploadInput) -> CreateMultipartUploadOutput;
    upload_part_copy(UploadPartCopyInput) -> UploadPartCopyOutput;
    list_parts(ListPartsInput) -> ListPartsOutput;
    complete_multipart_upload(CompleteMultipartUploadInput) -> CompleteMultipartUploadOutput;
    abort_multipart_upload(AbortMultipartUploadInput) -> AbortMultipartUploadOutput;
}

/// Wraps `body` so that it fails at its end when its SHA-256 differs from `checksum` (base64, the
/// `x-amz-checksum-sha256` header): s3s-fs then drops its temp file instead of storing the body.
/// Returns the flag that tells the failure apart from other body errors.
fn verify_body(body: &mut Option<StreamingBlob>, checksum: Option<&str>) -> Arc<AtomicBool> {
    let mismatch = Arc::new(AtomicBool::new(false));
    if let Some(expected) = checksum {
        if let Some(inner) = body.take() {
            *body = Some(StreamingBlob::wrap(VerifiedBody {
                inner,
                hasher: Some(Sha256::new()),
                expected: expected.trim().to_owned(),
                mismatch: mismatch.clone(),
            }));
        }
    }
    mismatch
}

/// The operation's result, or `BadDigest` when the body failed its checksum.
fn checked<T>(result: S3Result<T>, mismatch: Arc<AtomicBool>) -> S3Result<T> {
    if mismatch.load(Ordering::SeqCst) {
        return Err(s3_error!(
            BadDigest,
            "The SHA-256 of the body does not match the x-amz-checksum-sha256 header."
        ));
    }
    result
}

struct VerifiedBody {
    inner: StreamingBlob,
    hasher: Option<Sha256>,
    expected: String,
    mismatch: Arc<AtomicBool>,
}

impl Stream for VerifiedBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(h) = this.hasher.as_mut() {
                    h.update(&chunk);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(std::io::Error::other(e)))),
            Poll::Ready(None) => {
                if let Some(h) = this.hasher.take() {
                    let actual: [u8; 32] = h.finalize().into();
                    if crate::hashing::to_base64(&actual) != this.expected {
                        this.mismatch.store(true, Ordering::SeqCst);
                        return Poll::Ready(Some(Err(std::io::Error::other(
                            "body does not match its x-amz-checksum-sha256",
                        ))));
                    }
                }
                Poll::Ready(None)
            }
        }
    }
}
