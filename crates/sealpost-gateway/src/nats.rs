//! The NATS micro service `sealpost`: `sealpost.cmd.<tenant>.send`, `sealpost.cmd.<tenant>.cancel`
//! and `sealpost.qry.<tenant>.status`, request/reply, in the queue group so any number of
//! gateways share the load. Errors answer the JSON error body plus the micro-service error
//! headers (`Nats-Service-Error`, `Nats-Service-Error-Code`).

use async_nats::service::{ServiceExt, NATS_SERVICE_ERROR, NATS_SERVICE_ERROR_CODE};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;

use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::send::parse_message_id_body;

/// Requests handled at once per endpoint and process.
pub const CONCURRENCY: usize = 256;

#[derive(Debug, Clone, Copy)]
enum Op {
    Send,
    Cancel,
    Status,
}

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
    let send = service
        .endpoint_builder()
        .name("send")
        .add("sealpost.cmd.*.send")
        .await?;
    let cancel = service
        .endpoint_builder()
        .name("cancel")
        .add("sealpost.cmd.*.cancel")
        .await?;
    let status = service
        .endpoint_builder()
        .name("status")
        .add("sealpost.qry.*.status")
        .await?;
    // The subscriptions exist once the server has seen them.
    client.flush().await?;
    if let Some(tx) = ready {
        let _ = tx.send(());
    }
    let requests = futures::stream::select_all([
        send.map(|r| (Op::Send, r)).boxed(),
        cancel.map(|r| (Op::Cancel, r)).boxed(),
        status.map(|r| (Op::Status, r)).boxed(),
    ]);
    let work = requests.for_each_concurrent(CONCURRENCY, |(op, request)| {
        let gateway = gateway.clone();
        async move {
            let (body, headers) = match handle(&gateway, op, &request.message).await {
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

async fn handle(
    gateway: &Gateway,
    op: Op,
    message: &async_nats::Message,
) -> Result<Bytes, ApiError> {
    // sealpost.cmd.<tenant>.send: the tenant is the third token. NATS permissions limit each
    // tenant's user to its own subjects.
    let tenant_id = message.subject.split('.').nth(2).unwrap_or_default();
    let tenant = gateway.tenant(tenant_id)?;
    match op {
        Op::Send => {
            let r = gateway.send(tenant, &message.payload, None).await;
            crate::gateway::count_send(tenant, "nats", &r);
            json(&r?)
        }
        Op::Cancel => json(&gateway.cancel(tenant, &message.payload).await?),
        Op::Status => {
            let id = parse_message_id_body(&message.payload)?;
            json(&gateway.status(tenant, &id).await?)
        }
    }
}
