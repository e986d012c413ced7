//! The HTTP client every adapter (and the simulator's webhook sender) uses: reqwest on rustls with
//! ring as the only crypto provider, no redirects, and helpers that keep secrets out of logs.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::CarrierError;

/// A reqwest client on rustls + ring with the platform's root certificates.
///
/// Redirects are not followed: a carrier that redirects is misconfigured, and following would
/// carry the bearer token elsewhere. `timeout` bounds each whole request (connect, send, answer).
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, CarrierError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CarrierError::Client(e.to_string()))?
        .with_root_certificates(roots().clone())
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| CarrierError::Client(e.to_string()))
}

/// The platform's roots, loaded once per process. Unreadable certificates are skipped: plain-HTTP
/// endpoints (tests, the simulator) need none, and a TLS endpoint then fails to verify, visibly.
fn roots() -> &'static rustls::RootCertStore {
    static ROOTS: OnceLock<rustls::RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut store = rustls::RootCertStore::empty();
        let loaded = rustls_native_certs::load_native_certs();
        let (added, ignored) = store.add_parsable_certificates(loaded.certs);
        if !loaded.errors.is_empty() || ignored > 0 {
            tracing::warn!(
                added,
                ignored,
                errors = loaded.errors.len(),
                "some platform root certificates could not be loaded"
            );
        }
        store
    })
}

/// A phone number as logs may show it: `+` and one `*` per hidden character, then the last two
/// characters (the same shape as `sealpost_domain::Recipient`'s Display).
pub fn mask_recipient(number: &str) -> String {
    let digits = number.strip_prefix('+').unwrap_or(number);
    let n = digits.chars().count();
    if n <= 2 {
        return format!("+{}", "*".repeat(n));
    }
    let shown: String = digits.chars().skip(n - 2).collect();
    format!("+{}{}", "*".repeat(n - 2), shown)
}

/// Percent-encodes one URL path segment (RFC 3986 unreserved characters stay as they are), so
/// `+447700900123` becomes `%2B447700900123` as RBM expects.
pub(crate) fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Trims a configured base URL so `{base}/v1/...` never doubles a slash.
pub(crate) fn base_url(raw: &str, what: &str) -> Result<String, CarrierError> {
    let base = raw.trim().trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(CarrierError::Config(format!(
            "{what} base URL must start with http:// or https://"
        )));
    }
    Ok(base.to_owned())
}

/// The body of `resp` (as far as it came, if it broke off), or none when it is larger than `max`
/// bytes: an answer's code is all the adapters read from it.
pub(crate) async fn read_limited(resp: reqwest::Response, max: usize) -> Option<Vec<u8>> {
    let mut resp = resp;
    let mut buf = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                buf.extend_from_slice(&chunk);
                if buf.len() > max {
                    return None;
                }
            }
            Ok(None) | Err(_) => return Some(buf),
        }
    }
}

/// Maps a reqwest error (no answer at all) to a code that carries no URL.
pub(crate) fn transport_code(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "request"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_all_but_the_last_two_digits() {
        assert_eq!(mask_recipient("+447700900123"), "+**********23");
        assert_eq!(mask_recipient("15551234567"), "+*********67");
        assert_eq!(mask_recipient("+1"), "+*");
        assert_eq!(mask_recipient(""), "+");
    }

    #[test]
    fn encodes_path_segments() {
        assert_eq!(path_segment("+447700900123"), "%2B447700900123");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(path_segment("msg-1_2.3~"), "msg-1_2.3~");
    }

    #[test]
    fn base_urls() {
        assert_eq!(
            base_url("http://127.0.0.1:80/", "rbm").unwrap(),
            "http://127.0.0.1:80"
        );
        assert!(base_url("127.0.0.1", "rbm").is_err());
    }

    #[test]
    fn client_builds_with_ring() {
        http_client(Duration::from_secs(1)).unwrap();
    }
}
