//! The blob store against real S3 endpoints: the embedded s3s-fs server in-process, and moto for
//! Object Lock (legal holds), which the embedded server ignores.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures::{stream, StreamExt as _};
use sealpost_blobstore::{BlobErrorKind, BlobRef, BlobStore, MULTIPART_THRESHOLD};
use sealpost_domain::{Sha256Hex, TenantId};
use sealpost_testkit::{embedded_s3, MotoServer};

const BUCKET: &str = "sealpost-payloads";

fn tenant() -> TenantId {
    TenantId::new("acme-corp").expect("token-safe tenant")
}

/// Deterministic bytes that look random (ciphertext-like) and do not repeat per part.
fn ciphertext(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8
        })
        .collect()
}

/// `data` as a body stream of `chunk`-sized pieces, as an HTTP server would hand it over.
fn chunked(
    data: &[u8],
    chunk: usize,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Unpin + Send {
    let chunks: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    stream::iter(chunks)
}

async fn embedded_store() -> (BlobStore, sealpost_blobstore::EmbeddedS3, tempfile::TempDir) {
    let (s3, dir) = embedded_s3().await.expect("embedded S3 starts");
    let store = BlobStore::new(&s3.config(BUCKET)).expect("client");
    store.ensure_bucket().await.expect("create bucket");
    store
        .ensure_bucket()
        .await
        .expect("ensure_bucket is idempotent");
    (store, s3, dir)
}

fn parse(store: &BlobStore, reference: &str) -> BlobRef {
    store
        .parse_ref(&tenant(), reference)
        .expect("own reference")
}

/// Every regular file of the embedded server's folder that belongs to an object or an upload.
fn stored_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let entry = entry.expect("dir entry");
            let path = entry.path();
            if entry.file_type().expect("file type").is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root.join(BUCKET), &mut out);
    for entry in std::fs::read_dir(root).expect("read root") {
        let name = entry.expect("dir entry").file_name();
        let name = name.to_string_lossy().into_owned();
        let path = root.join(&name);
        if name.starts_with(".upload_id-") || name.contains(".upload-") {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn small_put_verifies_digest_and_existence() {
    let (store, _s3, _dir) = embedded_store().await;
    let data = ciphertext(1024, 1);
    let digest = Sha256Hex::of(&data);

    let stored = store
        .put_stream(&tenant(), chunked(&data, 100), 1 << 20)
        .await
        .expect("put");
    assert_eq!(stored.size, 1024);
    assert_eq!(stored.sha256, digest);
    assert!(
        stored
            .reference
            .starts_with(&format!("s3://{BUCKET}/tenants/acme-corp/")),
        "{}",
        stored.reference
    );
    assert!(stored.reference.ends_with(".enc"));

    let r = parse(&store, &stored.reference);
    let info = store.head(&r).await.expect("head").expect("exists");
    assert_eq!(info.size, 1024);
    assert_eq!(
        info.sha256.as_ref(),
        Some(&digest),
        "digest known from HEAD"
    );

    let verified = store.verify(&r, Some(&digest)).await.expect("right digest");
    assert_eq!(verified.sha256.as_ref(), Some(&digest));
    assert_eq!(verified.size, 1024);
    store.verify(&r, None).await.expect("exists");

    let wrong = Sha256Hex::of(b"something else");
    let err = store.verify(&r, Some(&wrong)).await.unwrap_err();
    assert_eq!(err.kind(), BlobErrorKind::DigestMismatch, "{err}");
    assert!(err.to_string().contains(wrong.as_str()), "{err}");

    let missing = parse(
        &store,
        "s3://sealpost-payloads/tenants/acme-corp/missing.enc",
    );
    assert_eq!(store.head(&missing).await.expect("head"), None);
    let err = store.verify(&missing, Some(&digest)).await.unwrap_err();
    assert_eq!(err.kind(), BlobErrorKind::NotFound, "{err}");
    let err = store.verify(&missing, None).await.unwrap_err();
    assert_eq!(err.kind(), BlobErrorKind::NotFound, "{err}");

    // An empty body is a valid (if odd) payload.
    let empty = store
        .put_stream(&tenant(), chunked(&[], 1), 10)
        .await
        .expect("empty put");
    assert_eq!(empty.size, 0);
    assert_eq!(empty.sha256, Sha256Hex::of(b""));

    store.delete(&r).await.expect("delete");
    assert_eq!(store.head(&r).await.expect("head"), None);
    store
        .delete(&r)
        .await
        .expect("deleting a missing object is fine");
    // The embedded endpoint accepts and ignores legal holds.
    store
        .set_legal_hold(&parse(&store, &empty.reference), true)
        .await
        .expect("legal hold accepted");
}

#[tokio::test]
async fn large_put_goes_multipart_and_keeps_size_and_digest() {
    let (store, _s3, dir) = embedded_store().await;
    let len = 20 * 1024 * 1024 + 12_345;
    let data = ciphertext(len, 2);
    let digest = Sha256Hex::of(&data);

    let stored = store
        .put_stream(&tenant(), chunked(&data, 64 * 1024), 64 << 20)
        .await
        .expect("multipart put");
    assert_eq!(stored.size, len as u64);
    assert_eq!(stored.sha256, digest);

    let r = parse(&store, &stored.reference);
    let info = store.head(&r).await.expect("head").expect("exists");
    assert_eq!(info.size, len as u64);
    assert_eq!(
        info.sha256.as_ref(),
        Some(&digest),
        "digest recorded after completion"
    );
    let verified = store.verify(&r, Some(&digest)).await.expect("verify");
    assert_eq!(verified.size, len as u64);
    let err = store
        .verify(&r, Some(&Sha256Hex::of(b"x")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), BlobErrorKind::DigestMismatch);

    // The bytes on disk are the bytes sent, and no upload parts are left over.
    let on_disk = std::fs::read(dir.path().join(BUCKET).join(&r.key)).unwrap();
    assert!(on_disk == data, "stored bytes differ from the body");
    let files = stored_files(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");

    // A body of exactly the threshold stays one PutObject; one byte more goes multipart.
    for n in [MULTIPART_THRESHOLD, MULTIPART_THRESHOLD + 1] {
        let data = ciphertext(n, n as u64);
        let stored = store
            .put_stream(&tenant(), chunked(&data, 1 << 20), n as u64)
            .await
            .expect("put at the threshold");
        assert_eq!(stored.size, n as u64);
        let r = parse(&store, &stored.reference);
        store
            .verify(&r, Some(&Sha256Hex::of(&data)))
            .await
            .expect("verify at the threshold");
    }
}

#[tokio::test]
async fn too_large_bodies_leave_nothing_behind() {
    let (store, _s3, dir) = embedded_store().await;
    assert!(stored_files(dir.path()).is_empty());

    let small = ciphertext(2048, 3);
    let err = store
        .put_stream(&tenant(), chunked(&small, 512), 2047)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), BlobErrorKind::TooLarge, "{err}");
    assert!(err.to_string().contains("2047"), "{err}");

    // Past the limit after two parts were uploaded: the multipart upload is aborted.
    let big = ciphertext(3 * MULTIPART_THRESHOLD, 4);
    let err = store
        .put_stream(
            &tenant(),
            chunked(&big, 64 * 1024),
            (2 * MULTIPART_THRESHOLD + 100) as u64,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), BlobErrorKind::TooLarge, "{err}");

    // A failing body stream is an error too, and also leaves nothing.
    let failing = stream::iter(vec![
        Ok(Bytes::from(ciphertext(MULTIPART_THRESHOLD + 10, 5))),
        Err(std::io::Error::other("client went away")),
    ]);
    let err = store
        .put_stream(&tenant(), failing, u64::MAX)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), BlobErrorKind::Other, "{err}");
    assert!(err.to_string().contains("client went away"), "{err}");

    let files = stored_files(dir.path());
    assert!(files.is_empty(), "left behind: {files:?}");
}

#[tokio::test]
async fn cancelled_upload_is_aborted() {
    let (store, _s3, dir) = embedded_store().await;
    // Two parts' worth arrive, then the client stalls; the request is cancelled (future dropped).
    let first = Bytes::from(ciphertext(2 * MULTIPART_THRESHOLD + 1, 10));
    let body = stream::iter(vec![Ok::<_, std::io::Error>(first)]).chain(stream::pending());
    let acme = tenant();
    let mut put = Box::pin(store.put_stream(&acme, Box::pin(body), u64::MAX));
    // Drive the upload until both full parts are stored (then it waits for more body, with no
    // request in flight), then cancel it. Cancelled while a part is in flight, the part may
    // still land after the abort: S3 says in-progress parts "might or might not succeed", and
    // the bucket's lifecycle rule for incomplete uploads is the backstop for that.
    tokio::select! {
        r = &mut put => panic!("the body never ends, so the put cannot finish: {r:?}"),
        uploaded = sealpost_testkit::eventually(Duration::from_secs(30), "two parts uploaded", || {
            let files = stored_files(dir.path());
            let parts = files
                .iter()
                .filter(|f| f.to_string_lossy().contains(".part-"))
                .count();
            async move { (parts == 2).then_some(files) }
        }) => { uploaded.unwrap(); }
    }
    drop(put);
    // The abort runs in a task spawned on drop; this test's runtime has one thread and has not
    // yielded since, so the uploaded parts are still there.
    assert!(!stored_files(dir.path()).is_empty(), "parts were uploaded");
    sealpost_testkit::eventually(Duration::from_secs(10), "the upload to be aborted", || {
        let files = stored_files(dir.path());
        async move { files.is_empty().then_some(()) }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_presigned_get_downloads_the_object_and_a_tampered_one_is_refused() {
    let (store, _s3, _dir) = embedded_store().await;
    let data = ciphertext(3000, 11);
    let stored = store
        .put_stream(&tenant(), chunked(&data, 1000), 1 << 20)
        .await
        .expect("put");
    let r = parse(&store, &stored.reference);
    let url = store
        .presign_get(&r, Duration::from_secs(60))
        .await
        .expect("presign");
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let http = reqwest::Client::new();
    // The embedded endpoint checks the SigV4 query signature like S3 does.
    let got = http.get(&url).send().await.expect("http");
    assert!(got.status().is_success(), "{}", got.status());
    assert_eq!(got.bytes().await.expect("body").as_ref(), data.as_slice());
    let tampered = url.replace("X-Amz-Expires=60", "X-Amz-Expires=61");
    assert_ne!(tampered, url);
    let refused = http.get(&tampered).send().await.expect("http");
    assert_eq!(refused.status().as_u16(), 403, "a tampered URL was served");
}

#[tokio::test]
async fn presigned_put_uploads_into_the_tenant_prefix() {
    let (store, _s3, _dir) = embedded_store().await;
    let http = reqwest::Client::new();
    let data = ciphertext(4096, 6);
    let digest = Sha256Hex::of(&data);

    // With a digest: the URL requires the checksum header, and S3 refuses other bytes.
    let p = store
        .presign_put(&tenant(), Some(&digest), Duration::from_secs(300))
        .await
        .expect("presign");
    assert_eq!(p.method, "PUT");
    assert!(p
        .reference
        .starts_with("s3://sealpost-payloads/tenants/acme-corp/"));
    assert!(p.expires_at > time::OffsetDateTime::now_utc());
    assert!(
        p.headers.contains_key("x-amz-checksum-sha256"),
        "{:?}",
        p.headers
    );
    let r = parse(&store, &p.reference);

    let put = |body: Vec<u8>| {
        let mut req = http.put(&p.url).body(body);
        for (k, v) in &p.headers {
            req = req.header(k, v);
        }
        req.send()
    };
    let refused = put(ciphertext(4096, 7)).await.expect("http");
    assert!(
        refused.status().is_client_error(),
        "wrong bytes accepted: {}",
        refused.status()
    );
    assert_eq!(store.head(&r).await.expect("head"), None);

    let ok = put(data.clone()).await.expect("http");
    assert!(ok.status().is_success(), "{}", ok.status());
    let info = store.head(&r).await.expect("head").expect("uploaded");
    assert_eq!(info.size, 4096);
    assert_eq!(info.sha256.as_ref(), Some(&digest));
    store.verify(&r, Some(&digest)).await.expect("verify");

    // Without a digest: HEAD knows none, so verify hashes the object.
    let p2 = store
        .presign_put(&tenant(), None, Duration::from_secs(60))
        .await
        .expect("presign");
    let mut req = http.put(&p2.url).body(data.clone());
    for (k, v) in &p2.headers {
        req = req.header(k, v);
    }
    let resp = req.send().await.expect("http");
    assert!(resp.status().is_success(), "{}", resp.status());
    let r2 = parse(&store, &p2.reference);
    assert_eq!(
        store.head(&r2).await.expect("head").expect("exists").sha256,
        None
    );
    let verified = store.verify(&r2, Some(&digest)).await.expect("hashed");
    assert_eq!(verified.sha256.as_ref(), Some(&digest));
    assert_eq!(verified.size, 4096);
    let err = store
        .verify(&r2, Some(&Sha256Hex::of(b"nope")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), BlobErrorKind::DigestMismatch);

    // A tampered URL is refused by the endpoint's signature check.
    let tampered = p2.url.replace("/tenants/acme-corp/", "/tenants/other/");
    let resp = http.put(&tampered).body(data).send().await.expect("http");
    assert!(resp.status().is_client_error(), "{}", resp.status());

    store.delete(&r).await.expect("delete");
    store.delete(&r2).await.expect("delete");
    assert_eq!(store.head(&r).await.expect("head"), None);
    assert_eq!(store.head(&r2).await.expect("head"), None);
}

#[tokio::test]
async fn unreachable_endpoint_is_unavailable() {
    let port = sealpost_testkit::free_port().unwrap();
    let store = BlobStore::new(&sealpost_blobstore::BlobStoreConfig {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        region: "us-east-1".into(),
        bucket: BUCKET.into(),
        access_key_id: "k".into(),
        secret_access_key: "very-secret-value".into(),
        force_path_style: true,
    })
    .unwrap();
    let r = parse(&store, "s3://sealpost-payloads/tenants/acme-corp/x.enc");
    let err = store.head(&r).await.unwrap_err();
    assert_eq!(err.kind(), BlobErrorKind::Unavailable, "{err}");
    assert!(!err.to_string().contains("very-secret-value"), "{err}");
}

#[tokio::test]
async fn legal_hold_blocks_delete_on_object_lock_bucket() {
    let moto = MotoServer::start().await.expect("moto starts");
    let store = BlobStore::new(&moto.config("locked-payloads")).expect("client");
    store
        .client()
        .create_bucket()
        .bucket("locked-payloads")
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .expect("create Object Lock bucket");
    store.ensure_bucket().await.expect("already there");

    let data = ciphertext(1500, 8);
    let stored = store
        .put_stream(&tenant(), chunked(&data, 256), 1 << 20)
        .await
        .expect("put");
    let r = parse(&store, &stored.reference);
    let info = store
        .verify(&r, Some(&Sha256Hex::of(&data)))
        .await
        .expect("verify");
    assert_eq!(info.size, 1500);

    store.set_legal_hold(&r, true).await.expect("hold on");
    let err = store.delete(&r).await.unwrap_err();
    assert_eq!(err.kind(), BlobErrorKind::LegalHold, "{err}");
    assert!(
        store.head(&r).await.expect("head").is_some(),
        "held object survives"
    );
    store
        .verify(&r, Some(&Sha256Hex::of(&data)))
        .await
        .expect("still intact");

    store.set_legal_hold(&r, false).await.expect("hold off");
    store.delete(&r).await.expect("delete after release");
    assert_eq!(store.head(&r).await.expect("head"), None);

    // Multipart against a stricter S3 implementation: part checksums and completion.
    let big = ciphertext(MULTIPART_THRESHOLD + 4096, 9);
    let stored = store
        .put_stream(&tenant(), chunked(&big, 256 * 1024), 64 << 20)
        .await
        .expect("multipart put on moto");
    let r = parse(&store, &stored.reference);
    let info = store
        .verify(&r, Some(&Sha256Hex::of(&big)))
        .await
        .expect("verify multipart");
    assert_eq!(info.size, big.len() as u64);
    let head = store.head(&r).await.expect("head").expect("exists");
    assert_eq!(
        head.sha256,
        Some(Sha256Hex::of(&big)),
        "digest recorded after completion"
    );
    // Recording the digest copies the object onto itself; the superseded version is gone.
    assert_eq!(versions(&store, &r).await, 1);
    store.delete(&r).await.expect("delete multipart object");
    assert_eq!(versions(&store, &r).await, 0);

    // A presigned URL used twice makes two versions; delete removes every one of them.
    let p = store
        .presign_put(&tenant(), None, Duration::from_secs(60))
        .await
        .expect("presign");
    for body in [ciphertext(100, 11), ciphertext(200, 12)] {
        let resp = reqwest::Client::new()
            .put(&p.url)
            .body(body)
            .send()
            .await
            .expect("http");
        assert!(resp.status().is_success(), "{}", resp.status());
    }
    let r = parse(&store, &p.reference);
    assert_eq!(versions(&store, &r).await, 2);
    assert_eq!(
        store.head(&r).await.expect("head").expect("exists").size,
        200
    );
    store.delete(&r).await.expect("delete all versions");
    assert_eq!(versions(&store, &r).await, 0);
}

/// Versions and delete markers of exactly `r.key`.
async fn versions(store: &BlobStore, r: &BlobRef) -> usize {
    let page = store
        .client()
        .list_object_versions()
        .bucket(&r.bucket)
        .prefix(&r.key)
        .send()
        .await
        .expect("list versions");
    let versions = page.versions().iter().filter(|v| v.key() == Some(&r.key));
    let markers = page
        .delete_markers()
        .iter()
        .filter(|m| m.key() == Some(&r.key));
    versions.count() + markers.count()
}

#[tokio::test]
async fn records_are_locked_in_compliance_mode_where_the_bucket_has_object_lock() {
    let moto = MotoServer::start().await.expect("moto starts");
    let plain = BlobStore::new(&moto.config("plain-records")).expect("client");
    plain.ensure_bucket().await.expect("bucket");
    assert!(!plain.object_lock_enabled().await.unwrap());

    let store = BlobStore::new(&moto.config("locked-records")).expect("client");
    store
        .client()
        .create_bucket()
        .bucket("locked-records")
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .expect("create Object Lock bucket");
    assert!(store.object_lock_enabled().await.unwrap());
    let until = time::OffsetDateTime::now_utc() + time::Duration::days(30);
    store
        .put_record(
            "keys/acme/checkpoints/1.txt",
            b"a checkpoint".to_vec(),
            "text/plain",
            Some(until),
        )
        .await
        .expect("stored locked");
    assert_eq!(
        store
            .get_record("keys/acme/checkpoints/1.txt")
            .await
            .unwrap(),
        b"a checkpoint"
    );
    let key = format!(
        "{}keys/acme/checkpoints/1.txt",
        sealpost_blobstore::RECORDS_PREFIX
    );
    // The object carries its lock (moto answers GetObjectRetention with the object itself, so
    // the lock is read from HEAD, which S3 answers the same way).
    let head = store
        .client()
        .head_object()
        .bucket("locked-records")
        .key(&key)
        .send()
        .await
        .expect("head");
    assert_eq!(
        head.object_lock_mode().map(|m| m.as_str()),
        Some("COMPLIANCE")
    );
    assert_eq!(
        head.object_lock_retain_until_date().map(|d| d.secs()),
        Some(until.unix_timestamp())
    );
    // The locked version cannot be deleted.
    let version = store
        .client()
        .head_object()
        .bucket("locked-records")
        .key(&key)
        .send()
        .await
        .unwrap()
        .version_id
        .expect("a versioned bucket");
    let deleted = store
        .client()
        .delete_object()
        .bucket("locked-records")
        .key(&key)
        .version_id(version)
        .send()
        .await;
    assert!(deleted.is_err(), "a record under retention is not deleted");
}
