//! The NATS micro service `sealpost`: `sealpost.cmd.<tenant>.send`, `sealpost.cmd.<tenant>.cancel`
//! and `sealpost.qry.<tenant>.status`, request/reply, in the queue group so any number of
//! gateways share the load. Errors answer the JSON error body plus the micro-service error
//! headers (`Nats-Service-Error`, `Nats-Service-Error-Code`).

use async_nats::service::{ServiceExt, NATS_SERVICE_ERROR, NATS_SERVICE_ERROR_CODE};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;

use sealpost_eventstore::names::{ServiceOp, ServiceSubject};

use crate::error::{ApiError, ErrorCode};
use crate::gateway::Gateway;
use crate::send::parse_message_id_body;

/// Requests handled at once per endpoint and process.
pub const CONCURRENCY: usize = 256;

/// Runs the service until the client closes or `shutdown` resolves.
pub async fn serve(
    client: async_nats::Client,
    gateway: Gateway,
    ready: Option<tokio::sync::oneshot::Sender<()>>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), async_nats::Error> {
    let service = client
        .service_builder()
        .description("Sealpost: send, cancel and status of end-to-end-encrypted messages")
        .start("sealpost", env!("CARGO_PKG_VERSION"))
        .await?;
    let mut endpoints = Vec::with_capacity(ServiceOp::ALL.len());
    for &op in ServiceOp::ALL {
        let endpoint = service
            .endpoint_builder()
            .name(op.as_str())
            .add(op.endpoint())
            .await?;
        endpoints.push(endpoint.boxed());
    }
    // The subscriptions exist once the server has seen them.
    sealpost_eventstore::server_round_trip(&client).await?;
    if let Some(tx) = ready {
        let _ = tx.send(());
    }
    let requests = futures::stream::select_all(endpoints);
    let work = requests.for_each_concurrent(CONCURRENCY, |request| {
        let gateway = gateway.clone();
        async move {
            let (body, headers) = match handle(&gateway, &request.message).await {
                Ok(body) => (body, HeaderMap::new()),
                Err(e) => {
                    let mut h = HeaderMap::new();
                    h.insert(NATS_SERVICE_ERROR, e.code.as_str());
                    h.insert(
                        NATS_SERVICE_ERROR_CODE,
                        e.http_status().to_string().as_str(),
                    );
                    (Bytes::from(e.to_json()), h)
                }
            };
            if let Err(e) = request.respond_with_headers(Ok(body), headers).await {
                tracing::warn!(error = %e, "could not answer a request; the client will retry");
            }
        }
    });
    tokio::select! {
        () = work => {}
        () = shutdown => {}
    }
    service.stop().await?;
    Ok(())
}

fn json<T: Serialize>(v: &T) -> Result<Bytes, ApiError> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|_| ApiError::unavailable("could not encode the reply; retry"))
}

async fn handle(gateway: &Gateway, message: &async_nats::Message) -> Result<Bytes, ApiError> {
    // The subject names the tenant and the operation. Each tenant's NATS account imports only its
    // own subjects (see `accounts`).
    let subject = ServiceSubject::parse(&message.subject)
        .map_err(|_| ApiError::new(ErrorCode::Unauthorized, "unknown tenant or operation"))?;
    let tenant = gateway.tenant(subject.tenant.as_str())?;
    match subject.op {
        ServiceOp::Send => {
            let r = gateway.send(tenant, &message.payload, None).await;
            crate::gateway::count_send(tenant, "nats", &r);
            json(&r?)
        }
        ServiceOp::Cancel => json(&gateway.cancel(tenant, &message.payload).await?),
        ServiceOp::Status => {
            let id = parse_message_id_body(&message.payload)?;
            json(&gateway.status(tenant, &id).await?)
        }
    }
}
