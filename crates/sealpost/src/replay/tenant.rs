//! The stream a replay reads, and in a tenant's account its creation and catch-up.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, response::Response, stream};
use sealpost_domain::TenantId;
use sealpost_eventstore::names::{Stream, TenantAccount};
use serde_json::{json, Value};

const STREAM: Stream = Stream::Events;

/// The header a sourced message carries: `<origin stream>[:<hash>] <origin sequence> ...`.
pub(super) const SOURCE_HEADER: &str = "Nats-Stream-Source";

/// How long a tenant's stream may take to catch up before the replay gives up.
const CATCH_UP: Duration = Duration::from_secs(60);

/// The origin sequence in a `Nats-Stream-Source` header.
pub(super) fn source_sequence(header: &str) -> Option<u64> {
    header.split_whitespace().nth(1)?.parse().ok()
}

/// The events stream of the connected account, and whether it is a tenant's sourced copy. In the
/// service's account that is the stream itself. In a tenant's account it is the tenant's own
/// stream, created on the first replay and caught up with the service's stream before it is read.
pub(super) async fn open_stream(
    js: &jetstream::Context,
    tenant: Option<&TenantId>,
) -> anyhow::Result<(stream::Stream, bool)> {
    match stream_info(js).await? {
        Some(info) => {
            let Some(source) = info["config"]["sources"].get(0) else {
                return Ok((js.get_stream(STREAM.as_str()).await?, false)); // the service's
            };
            let sourced = source["consumer"]["name"].as_str().unwrap_or_default();
            if let Some(t) = tenant {
                let wanted = TenantAccount::new(t.clone()).source_durable();
                if sourced != wanted {
                    anyhow::bail!(
                        "this account's {STREAM} sources {sourced}, not {wanted}: it holds another                          tenant's events; replay tenant {t} with that tenant's credentials"
                    );
                }
            }
        }
        None => {
            let Some(tenant) = tenant else {
                anyhow::bail!(
                    "stream {STREAM} does not exist in this account: with the service's \
                     credentials run `sealpost provision`; with a tenant's, pass --tenant"
                );
            };
            create(js, &TenantAccount::new(tenant.clone())).await?;
        }
    }
    catch_up(js).await?;
    Ok((js.get_stream(STREAM.as_str()).await?, true))
}

/// The raw stream info (the client's types do not carry a source's consumer or error), or
/// `None` when the account has no such stream.
async fn stream_info(js: &jetstream::Context) -> anyhow::Result<Option<Value>> {
    let info: Response<Value> = js
        .request(format!("STREAM.INFO.{STREAM}"), &json!({}))
        .await
        .with_context(|| format!("reading stream {STREAM}'s info"))?;
    match info {
        Response::Ok(v) => Ok(Some(v)),
        Response::Err { error } if error.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND => {
            Ok(None)
        }
        Response::Err { error } => anyhow::bail!("reading stream {STREAM}'s info: {error}"),
    }
}

/// Rewinds the tenant's source consumer to the first event (so a new stream holds the whole
/// history, not only what follows the last stream's position), then creates the tenant's stream
/// sourcing from it. Both go through the imports of the tenant's account alone.
async fn create(js: &jetstream::Context, t: &TenantAccount) -> anyhow::Result<()> {
    let durable = t.source_durable();
    let reset = format!(
        "{}.CONSUMER.RESET.{STREAM}.{durable}",
        TenantAccount::SERVICE_API
    );
    let reply = js
        .client()
        .request(reset, json!({ "seq": 1 }).to_string().into())
        .await
        .with_context(|| {
            format!(
                "this account imports no event source for tenant {tenant}: connect with the \
                 tenant's nkey, include the output of `sealpost tenants nats-config` in the \
                 server config, and run `sealpost provision` (which creates the source consumer)",
                tenant = t.tenant
            )
        })?;
    if let Ok(Response::Err { error }) = serde_json::from_slice::<Response<Value>>(&reply.payload) {
        anyhow::bail!(
            "rewinding the source consumer {durable} of tenant {} failed: {error}; run `sealpost \
             provision` with the service's credentials",
            t.tenant
        );
    }
    let config = json!({
        "name": STREAM.as_str(),
        "description": format!("the events of tenant {}, sourced from the service's {STREAM}", t.tenant),
        "storage": "file",
        "retention": "limits",
        "sources": [{
            "name": STREAM.as_str(),
            "consumer": { "name": durable, "deliver_subject": t.deliver_subject() },
            "external": { "api": TenantAccount::SERVICE_API, "deliver": "" },
        }],
    });
    let created: Response<Value> = js
        .request(format!("STREAM.CREATE.{STREAM}"), &config)
        .await
        .context("creating the tenant's events stream")?;
    if let Response::Err { error } = created {
        anyhow::bail!(
            "the server refused tenant {}'s events stream: {error}",
            t.tenant
        );
    }
    Ok(())
}

/// Waits until the tenant's stream has everything its source consumer has to deliver.
async fn catch_up(js: &jetstream::Context) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let info = stream_info(js)
            .await?
            .context("the tenant's stream disappeared while catching up")?;
        let source = &info["sources"][0];
        if let Some(e) = source.get("error").filter(|e| !e.is_null()) {
            anyhow::bail!("the tenant's stream cannot source its events: {e}");
        }
        let lag = source["lag"].as_u64();
        if lag == Some(0) && source["active"].as_i64().is_some_and(|a| a >= 0) {
            return Ok(());
        }
        if start.elapsed() > CATCH_UP {
            anyhow::bail!(
                "the tenant's stream has not caught up after {CATCH_UP:?} (lag {}); check that \
                 the server config includes `sealpost tenants nats-config`'s output and that \
                 `sealpost provision` ran",
                lag.map_or("unknown".to_owned(), |l| l.to_string())
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_origin_sequence_is_the_second_token_of_the_source_header() {
        assert_eq!(source_sequence("SEALPOST_EVENTS 42 > >"), Some(42));
        assert_eq!(source_sequence("SEALPOST_EVENTS:a1b2 7"), Some(7));
        assert_eq!(source_sequence("SEALPOST_EVENTS"), None);
        assert_eq!(source_sequence("SEALPOST_EVENTS x"), None);
    }
}
