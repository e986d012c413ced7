//! OTLP traces (off by default): the spans of each message, exported over OTLP/HTTP (protobuf).
//!
//! **One trace per message, without propagation.** Every process that works on a message binds
//! its span to the message's trace with [`bind`]: the trace id and a virtual root span id are
//! derived from the tenant and message id, so the gateway, the delivery worker, the receipts,
//! expiry and fallback roles all put their spans in the same trace although no trace context
//! travels with the events or the carrier's webhooks:
//!
//! ```text
//! d        = SHA-256("sealpost/trace/v1\n" || tenant || "\n" || message_id)
//! trace_id = d[0..16]
//! root     = d[16..24]   (the parent span id of every message span; no span has it, so trace
//!                          viewers show the spans under one missing root: the message)
//! ```
//!
//! **Sampling per tenant, consistent across processes.** Whether a message is sampled is decided
//! from its trace id alone, as OpenTelemetry's `TraceIdRatioBased` does (the trace id's last
//! eight bytes, big-endian, shifted right by one, below `ratio × 2^63`), with the tenant's ratio
//! (`[[tenants]] trace_sample_ratio`, else `[telemetry] trace_sample_ratio`). Every process
//! decides the same for the same message. Spans that belong to no message are never exported
//! (the provider's sampler is parent-based, always off at the root).
//!
//! **What a span carries.** Only the fields the code puts on spans: tenant, message id,
//! correlation id, attempt, outcome codes. Never a ciphertext, key, presigned or device link,
//! token or phone number: the leak test scans the exported spans for them.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use sha2::{Digest as _, Sha256};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Where and how much to trace.
#[derive(Debug, Clone)]
pub struct TracesConfig {
    /// The OTLP/HTTP traces URL, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub endpoint: String,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// The share of messages traced (0.0 to 1.0) for tenants without their own ratio.
    pub sample_ratio: f64,
    /// Per-tenant ratios.
    pub tenant_ratios: HashMap<String, f64>,
}

#[derive(Debug)]
struct Ratios {
    default: f64,
    tenants: HashMap<String, f64>,
}

static RATIOS: OnceLock<Ratios> = OnceLock::new();

/// Keeps the exporter running; dropping it flushes the spans not yet sent and stops it.
#[derive(Debug)]
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Sends every span ended so far.
    pub fn flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!(error = %e, "flushing the OTLP spans failed");
        }
    }
}

impl Drop for Traces {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// The exporter and the layer that feeds it. Call once per process, within the tokio runtime
/// (the batch exporter runs on it).
pub fn layer<S>(
    cfg: &TracesConfig,
) -> Result<
    (
        tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
        Traces,
    ),
    String,
>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    if !(cfg.endpoint.starts_with("http://") || cfg.endpoint.starts_with("https://")) {
        return Err("the OTLP endpoint must be an http:// or https:// URL".into());
    }
    let client = http_client()?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(cfg.endpoint.clone())
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(cfg.service_name.clone())
                .with_attribute(KeyValue::new("service.namespace", "sealpost"))
                .build(),
        )
        .build();
    let _ = RATIOS.set(Ratios {
        default: cfg.sample_ratio,
        tenants: cfg.tenant_ratios.clone(),
    });
    let tracer = provider.tracer("sealpost");
    Ok((
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_tracked_inactivity(false),
        Traces { provider },
    ))
}

/// The OTLP client: reqwest on rustls with ring and the platform's roots, as every other client
/// of Sealpost.
fn http_client() -> Result<reqwest::Client, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let loaded = rustls_native_certs::load_native_certs();
    let _ = roots.add_parsable_certificates(loaded.certs);
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("cannot build the OTLP HTTP client: {e}"))
}

/// The digest the message's trace ids come from.
fn digest(tenant: &str, message_id: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"sealpost/trace/v1\n");
    h.update(tenant.as_bytes());
    h.update(b"\n");
    h.update(message_id.as_bytes());
    h.finalize().into()
}

/// The message's trace id (16 bytes) and virtual root span id (8 bytes).
pub fn message_trace(tenant: &str, message_id: &str) -> ([u8; 16], [u8; 8]) {
    let d = digest(tenant, message_id);
    let mut trace = [0u8; 16];
    trace.copy_from_slice(&d[..16]);
    let mut root = [0u8; 8];
    root.copy_from_slice(&d[16..24]);
    if root == [0u8; 8] {
        root[7] = 1;
    }
    (trace, root)
}

/// Whether a trace id falls within `ratio` (OpenTelemetry's `TraceIdRatioBased`).
pub fn within_ratio(trace_id: &[u8; 16], ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 || ratio.is_nan() {
        return false;
    }
    let upper = (ratio * (1u64 << 63) as f64) as u64;
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..16]);
    (u64::from_be_bytes(low) >> 1) < upper
}

/// Puts `span` (not yet entered) in its message's trace. Does nothing when traces are off.
pub fn bind(span: &tracing::Span, tenant: &str, message_id: &str) {
    let Some(ratios) = RATIOS.get() else {
        return;
    };
    let (trace, root) = message_trace(tenant, message_id);
    let ratio = ratios
        .tenants
        .get(tenant)
        .copied()
        .unwrap_or(ratios.default);
    let flags = if within_ratio(&trace, ratio) {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let parent = opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_bytes(trace),
        SpanId::from_bytes(root),
        flags,
        true,
        TraceState::default(),
    ));
    let _ = span.set_parent(parent);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_messages_trace_ids_are_its_digest() {
        // Vector, from Python's hashlib:
        // sha256(b"sealpost/trace/v1\nacme\nm1") = dafa127e0c17562e0082d9f19a6ed209 7b7678f43973c3ce ...
        let (trace, root) = message_trace("acme", "m1");
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(hex(&trace), "dafa127e0c17562e0082d9f19a6ed209");
        assert_eq!(hex(&root), "7b7678f43973c3ce");
        assert_ne!(message_trace("acme", "m2").0, trace);
        assert_ne!(message_trace("acme2", "m1").0, trace);
    }

    #[test]
    fn ratios_sample_that_share_of_trace_ids_and_the_ends_are_exact() {
        let ids: Vec<[u8; 16]> = (0..10_000)
            .map(|i| message_trace("acme", &format!("m{i}")).0)
            .collect();
        assert!(ids.iter().all(|t| within_ratio(t, 1.0)));
        assert!(ids.iter().all(|t| !within_ratio(t, 0.0)));
        let tenth = ids.iter().filter(|t| within_ratio(t, 0.1)).count();
        assert!((800..1200).contains(&tenth), "{tenth} of 10000 at 0.1");
        // Monotone: what a lower ratio samples, a higher one samples too.
        assert!(ids
            .iter()
            .all(|t| !within_ratio(t, 0.1) || within_ratio(t, 0.5)));
    }
}
