//! The OpenAPI 3.1 description of the HTTP API, served at `GET /openapi.json`.
//!
//! The paths and operations are generated from the axum routes: every handler in [`crate::http`]
//! carries a `#[utoipa::path]` and is registered through `utoipa-axum`, so a route cannot exist
//! without its description. The bodies they refer to are the contract's own JSON Schemas
//! (`schemas/commands/*.json`), put into `components.schemas` verbatim (OpenAPI 3.1 schemas are
//! JSON Schema 2020-12), so the API description and the schemas the tests validate against are
//! the same files. A copy of the document is kept in `docs/openapi.json`; a test fails when it
//! differs from what the gateway serves.

use std::borrow::Cow;

use serde_json::{json, Value};
use utoipa::openapi::schema::{ObjectBuilder, Schema};
use utoipa::openapi::RefOr;

/// `(component name, JSON Schema)`: the bodies of the API, from `schemas/commands/`.
pub const CONTRACT_SCHEMAS: &[(&str, &str)] = &[
    (
        "SendCommand",
        include_str!("../../../schemas/commands/send.v1.json"),
    ),
    (
        "SendReply",
        include_str!("../../../schemas/commands/send_reply.v1.json"),
    ),
    (
        "Error",
        include_str!("../../../schemas/commands/error.v1.json"),
    ),
    (
        "StatusRow",
        include_str!("../../../schemas/commands/status_row.v3.json"),
    ),
    (
        "CancelReply",
        include_str!("../../../schemas/commands/cancel_reply.v1.json"),
    ),
    (
        "BlobReply",
        include_str!("../../../schemas/commands/blob_reply.v1.json"),
    ),
    (
        "PresignRequest",
        include_str!("../../../schemas/commands/presign_request.v1.json"),
    ),
    (
        "PresignReply",
        include_str!("../../../schemas/commands/presign_reply.v1.json"),
    ),
    (
        "DevicePayload",
        include_str!("../../../schemas/commands/device_payload.v1.json"),
    ),
    (
        "DecryptionReport",
        include_str!("../../../schemas/commands/decryption_report.v1.json"),
    ),
    (
        "DecryptionReportReply",
        include_str!("../../../schemas/commands/decryption_report_reply.v1.json"),
    ),
];

/// Names a component whose schema is one of [`CONTRACT_SCHEMAS`]: utoipa refers to it by name,
/// and [`document`] puts the file's schema in its place.
macro_rules! contract_schema {
    ($($ty:ident),+ $(,)?) => {
        $(
            #[doc = concat!("The `", stringify!($ty), "` component (see [`CONTRACT_SCHEMAS`]).")]
            #[derive(Debug)]
            pub struct $ty;

            impl utoipa::PartialSchema for $ty {
                fn schema() -> RefOr<Schema> {
                    ObjectBuilder::new().into()
                }
            }

            impl utoipa::ToSchema for $ty {
                fn name() -> Cow<'static, str> {
                    Cow::Borrowed(stringify!($ty))
                }
            }
        )+
    };
}

/// The components of the API, by name.
pub mod schemas {
    use super::*;

    contract_schema!(
        SendCommand,
        SendReply,
        Error,
        StatusRow,
        CancelReply,
        BlobReply,
        PresignRequest,
        PresignReply,
        DevicePayload,
        DecryptionReport,
        DecryptionReportReply,
    );
}

/// Why the description could not be built (only a broken build can cause it).
#[derive(Debug, thiserror::Error)]
pub enum OpenApiError {
    #[error("encoding the generated OpenAPI document")]
    Encode(#[source] serde_json::Error),
    #[error("schemas/commands: the schema of component {name} is not JSON")]
    Schema {
        name: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// The finished document: the generated paths, the API's metadata and security scheme, and the
/// contract schemas as components.
pub fn document(generated: utoipa::openapi::OpenApi) -> Result<Value, OpenApiError> {
    let mut doc = serde_json::to_value(&generated).map_err(OpenApiError::Encode)?;
    doc["info"] = json!({
        "title": "Sealpost",
        "version": env!("CARGO_PKG_VERSION"),
        "description": "The HTTP API of Sealpost, a delivery engine for end-to-end-encrypted RCS \
            business messaging. The same operations exist on NATS (`sealpost.cmd.<tenant>.send`, \
            `.cancel`, `sealpost.qry.<tenant>.status`) with the same bodies. Every error is \
            `{\"error\":{\"code\",\"message\"[,\"retry_after_ms\"]}}`.",
        "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
    });
    doc["components"]["securitySchemes"] = json!({
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "The tenant's API key (`Authorization: Bearer <key>`); only its SHA-256 is configured.",
        }
    });
    for (name, text) in CONTRACT_SCHEMAS {
        let mut schema: Value =
            serde_json::from_str(text).map_err(|source| OpenApiError::Schema { name, source })?;
        if let Some(obj) = schema.as_object_mut() {
            // The component is identified by its place in the document.
            obj.remove("$schema");
            obj.remove("$id");
        }
        doc["components"]["schemas"][*name] = schema;
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` in `v`.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    #[test]
    fn the_document_describes_every_route_and_every_reference_resolves() {
        let doc = crate::http::openapi_document().unwrap();
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..4]), Some("3.1."));
        let paths: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for p in [
            "/v1/messages",
            "/v1/messages/{id}",
            "/v1/messages/{id}/cancel",
            "/v1/blobs",
            "/v1/blobs/presign",
            "/v1/receipts/{carrier}",
            "/healthz",
            "/readyz",
            "/metrics",
        ] {
            assert!(paths.contains(&p), "{p} is not described: {paths:?}");
        }
        let mut all = vec![];
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected reference {r}"));
            let schema = &doc["components"]["schemas"][name];
            assert!(
                schema["properties"].is_object() || schema["type"].is_string(),
                "{r} does not resolve to a schema: {schema}"
            );
        }
    }

    /// `docs/openapi.json` is what the gateway serves. Regenerate it with
    /// `SEALPOST_UPDATE_OPENAPI=1 cargo test -p sealpost-gateway openapi`.
    #[test]
    fn docs_openapi_json_is_the_served_document() {
        let doc = crate::http::openapi_document().unwrap();
        let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        if std::env::var_os("SEALPOST_UPDATE_OPENAPI").is_some() {
            std::fs::write(path, &text).unwrap();
        }
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == text,
            "docs/openapi.json differs from the served document; regenerate it with \
             SEALPOST_UPDATE_OPENAPI=1 cargo test -p sealpost-gateway openapi"
        );
    }
}
