//! One mapping from a carrier's HTTP answer to a [`CarrierOutcome`], so both adapters (and the
//! delivery policy behind them) agree on what is worth a retry.

use std::time::{Duration, SystemTime};

use sealpost_domain::CarrierOutcome;

/// Classifies one HTTP answer to a send.
///
/// - 2xx: `Acked`. The carrier message id is the submission's own `message_id`, which the adapter
///   fills in (this function returns an empty id for it to replace: see the adapters).
/// - 409: `Acked`: the carrier already accepted this message id earlier.
/// - 429: `Throttled`, with `Retry-After` (seconds or an HTTP date); the code is the carrier's error
///   status (`RESOURCE_EXHAUSTED`) when it sent one, else `http_429`.
/// - 401, 403: `AuthFailed { "http_<n>" }`: the carrier refused *us* (credentials wrong, expired
///   or revoked; agent not allowed), which says nothing about the message. The adapter has
///   already refreshed its token once before it reports this.
/// - 404: `NotRcsCapable` (RBM's answer for a phone without RCS). The SMS adapter turns it into
///   `Permanent { "http_404" }`, since there it only means a bad endpoint.
/// - other 4xx: `Permanent { "http_<n>" }`: the request for this message is wrong.
/// - 5xx: `Transient { "http_<n>" }`, with `Retry-After` when the carrier sent one (503).
/// - anything else (1xx, 3xx: redirects are not followed): `Transient { "http_<n>" }`: a proxy
///   or a misconfigured endpoint, which retries and then expiry surface without losing the message.
///
/// `body_code` is only used when it looks like an RBM status (`[A-Z_]`, at most 64 bytes), so a
/// code can never carry a phone number or a URL from a carrier's error message.
pub fn classify(status: u16, retry_after: Option<&str>, body_code: Option<&str>) -> CarrierOutcome {
    let http_code = || format!("http_{status}");
    match status {
        200..=299 | 409 => CarrierOutcome::Acked {
            carrier_message_id: String::new(),
        },
        429 => CarrierOutcome::Throttled {
            code: body_code
                .filter(|c| is_status_word(c))
                .map(str::to_owned)
                .unwrap_or_else(http_code),
            retry_after: retry_after.and_then(|v| parse_retry_after(v, SystemTime::now())),
        },
        401 | 403 => CarrierOutcome::AuthFailed { code: http_code() },
        404 => CarrierOutcome::NotRcsCapable,
        400..=499 => CarrierOutcome::Permanent { code: http_code() },
        500..=599 => CarrierOutcome::Transient {
            code: http_code(),
            retry_after: retry_after.and_then(|v| parse_retry_after(v, SystemTime::now())),
        },
        _ => CarrierOutcome::Transient {
            code: http_code(),
            retry_after: None,
        },
    }
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3), relative to `now`. A date in
/// the past means "now" (zero); anything unparseable is ignored.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn is_status_word(c: &str) -> bool {
    !c.is_empty() && c.len() <= 64 && c.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transient(code: &str, retry_after: Option<Duration>) -> CarrierOutcome {
        CarrierOutcome::Transient {
            code: code.into(),
            retry_after,
        }
    }

    #[test]
    fn success_and_conflict_are_acked() {
        for status in [200, 201, 202, 204, 299, 409] {
            assert!(
                matches!(classify(status, None, None), CarrierOutcome::Acked { .. }),
                "{status}"
            );
        }
        assert!(matches!(
            classify(409, None, Some("ALREADY_EXISTS")),
            CarrierOutcome::Acked { .. }
        ));
    }

    #[test]
    fn too_many_requests_is_throttled_with_retry_after() {
        assert_eq!(
            classify(429, Some("7"), Some("RESOURCE_EXHAUSTED")),
            CarrierOutcome::Throttled {
                code: "RESOURCE_EXHAUSTED".into(),
                retry_after: Some(Duration::from_secs(7)),
            }
        );
        assert_eq!(
            classify(429, None, None),
            CarrierOutcome::Throttled {
                code: "http_429".into(),
                retry_after: None,
            }
        );
        // A body code that is not a status word (could hold anything) is not used.
        assert_eq!(
            classify(429, Some("garbage"), Some("quota for +447700900123")),
            CarrierOutcome::Throttled {
                code: "http_429".into(),
                retry_after: None,
            }
        );
    }

    #[test]
    fn throttled_with_http_date() {
        let far = SystemTime::now() + Duration::from_secs(3600);
        let header = httpdate::fmt_http_date(far);
        match classify(429, Some(&header), None) {
            CarrierOutcome::Throttled {
                retry_after: Some(d),
                ..
            } => assert!(d > Duration::from_secs(3500) && d <= Duration::from_secs(3600)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn not_found_is_not_rcs_capable() {
        assert_eq!(
            classify(404, None, Some("NOT_FOUND")),
            CarrierOutcome::NotRcsCapable
        );
    }

    #[test]
    fn unauthorized_and_forbidden_are_auth_failures_not_message_failures() {
        for status in [401, 403] {
            assert_eq!(
                classify(status, Some("5"), Some("UNAUTHENTICATED")),
                CarrierOutcome::AuthFailed {
                    code: format!("http_{status}")
                },
                "{status}"
            );
        }
    }

    #[test]
    fn other_client_errors_are_permanent() {
        for status in [400, 402, 405, 410, 413, 422, 499] {
            assert_eq!(
                classify(status, Some("5"), Some("INVALID_ARGUMENT")),
                CarrierOutcome::Permanent {
                    code: format!("http_{status}")
                },
                "{status}"
            );
        }
    }

    #[test]
    fn server_errors_are_transient() {
        assert_eq!(
            classify(500, None, Some("INTERNAL")),
            transient("http_500", None)
        );
        assert_eq!(
            classify(503, Some("3"), Some("UNAVAILABLE")),
            transient("http_503", Some(Duration::from_secs(3)))
        );
        assert_eq!(
            classify(502, Some("nope"), None),
            transient("http_502", None)
        );
        assert_eq!(classify(599, None, None), transient("http_599", None));
    }

    #[test]
    fn unexpected_statuses_are_transient() {
        for status in [100, 301, 302, 307, 600, 0] {
            assert_eq!(
                classify(status, Some("1"), None),
                transient(&format!("http_{status}"), None)
            );
        }
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }
}
