//! Running the gateway: the NATS service and the HTTP listener as tasks of this process, for
//! `sealpost serve`, the bench and the tests.

use std::net::SocketAddr;

use tokio::task::JoinHandle;

use crate::gateway::Gateway;

/// A running gateway. Dropping it stops both transports.
#[derive(Debug)]
pub struct RunningGateway {
    pub http_addr: SocketAddr,
    nats_task: JoinHandle<()>,
    http_task: JoinHandle<()>,
}

impl RunningGateway {
    /// Serves `gateway` on NATS (the `sealpost` micro service) and on HTTP at `http_listen`
    /// (port 0 picks a free port: see [`RunningGateway::http_addr`]).
    pub async fn start(
        client: async_nats::Client,
        gateway: Gateway,
        http_listen: SocketAddr,
    ) -> std::io::Result<Self> {
        Self::start_with(client, gateway, http_listen, axum::Router::new()).await
    }

    /// [`RunningGateway::start`], with `extra` routes (e.g. the dashboard) merged into the HTTP
    /// router. `extra` must not define a route the gateway has (axum panics on an overlap).
    pub async fn start_with(
        client: async_nats::Client,
        gateway: Gateway,
        http_listen: SocketAddr,
        extra: axum::Router,
    ) -> std::io::Result<Self> {
        // The NATS service is registered before HTTP listens, so `/readyz` never answers
        // `ready` (nor a caller sends) before the service can take requests.
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let nats_task = {
            let (client, gateway) = (client.clone(), gateway.clone());
            tokio::spawn(async move {
                if let Err(e) =
                    crate::nats::serve(client, gateway, Some(ready_tx), std::future::pending())
                        .await
                {
                    tracing::error!(error = %e, "NATS service stopped");
                }
            })
        };
        if ready_rx.await.is_err() {
            return Err(std::io::Error::other(
                "the NATS service could not start; check the connection and permissions",
            ));
        }
        let bound = match tokio::net::TcpListener::bind(http_listen).await {
            Ok(l) => l.local_addr().map(|a| (l, a)),
            Err(e) => Err(e),
        };
        let (listener, http_addr) = match bound {
            Ok(b) => b,
            Err(e) => {
                nats_task.abort();
                return Err(e);
            }
        };
        let router = crate::http::router(gateway, client).merge(extra);
        let http_task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        });
        Ok(Self {
            http_addr,
            nats_task,
            http_task,
        })
    }

    /// Waits until either transport stops (it only stops on an error).
    pub async fn wait(&mut self) {
        tokio::select! {
            _ = &mut self.nats_task => {}
            _ = &mut self.http_task => {}
        }
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        self.nats_task.abort();
        self.http_task.abort();
    }
}
