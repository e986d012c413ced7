//! The consumer loop every delivery role shares: pull from a durable consumer, run a handler per
//! message with bounded concurrency, then ack, NAK with a delay, or terminate it as the handler
//! says. A broken connection or a deleted consumer is logged and the loop starts over; nothing is
//! acked unless its handler finished.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use sealpost_eventstore::names::Durable;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::error::DeliveryError;

/// One message as a handler sees it.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub subject: String,
    pub headers: Option<HeaderMap>,
    pub payload: Bytes,
    pub stream_seq: u64,
    /// 1 on first delivery.
    pub delivered: i64,
}

impl Job {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.as_ref()?.get(name).map(|v| v.as_str())
    }
}

/// What to do with a message once its handler finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobEnd {
    Ack,
    /// Redeliver after this delay.
    Nak(Duration),
    /// Never redeliver (the message can never be handled; the reason is logged).
    Term,
}

/// Consumer tasks of this process; dropping it stops them (unacked work is redelivered).
#[derive(Debug, Default)]
pub struct RunningConsumers {
    handles: Vec<JoinHandle<()>>,
}

impl RunningConsumers {
    pub(crate) fn push(&mut self, h: JoinHandle<()>) {
        self.handles.push(h);
    }

    pub fn extend(&mut self, other: RunningConsumers) {
        let mut other = other;
        self.handles.append(&mut other.handles);
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }
}

impl Drop for RunningConsumers {
    fn drop(&mut self) {
        for h in &self.handles {
            h.abort();
        }
    }
}

/// Runs `handler` over the durable consumer `durable` until the task is aborted.
pub(crate) fn spawn_consumer<F, Fut>(
    js: jetstream::Context,
    durable: Durable,
    concurrency: usize,
    handler: F,
) -> JoinHandle<()>
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = JobEnd> + Send + 'static,
{
    let handler = Arc::new(handler);
    // The drain-rate series exists (at 0) from the start, not from the first finished job.
    let done = sealpost_telemetry::jobs_done(durable.as_str());
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        let stream = durable.stream().as_str();
        loop {
            match consume(&js, durable, concurrency, handler.clone(), &done).await {
                Ok(()) => {
                    tracing::warn!(stream, consumer = %durable, "consumer stream ended; restarting")
                }
                Err(e) => {
                    tracing::warn!(stream, consumer = %durable, error = %e, "consumer failed; retrying (is the stream provisioned? run `sealpost provision`)")
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    })
}

async fn consume<F, Fut>(
    js: &jetstream::Context,
    durable: Durable,
    concurrency: usize,
    handler: Arc<F>,
    done: &sealpost_telemetry::Counter,
) -> Result<(), DeliveryError>
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = JobEnd> + Send + 'static,
{
    let stream = durable.stream();
    let consumer: jetstream::consumer::PullConsumer = js
        .get_stream(stream.as_str())
        .await
        .map_err(DeliveryError::nats(format!("stream {stream}")))?
        .get_consumer(durable.as_str())
        .await
        .map_err(DeliveryError::nats(format!("consumer {stream}/{durable}")))?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(concurrency.clamp(1, 1000))
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(DeliveryError::nats(format!(
            "pulling from {stream}/{durable}"
        )))?;
    // Each job is a task of its own, so jobs run on every runtime thread. A permit bounds how
    // many run at once; the set aborts them with the consumer (an unfinished job is redelivered
    // after ack_wait). The consumer task is woken only to take the next message, not when a
    // job ends.
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut jobs = tokio::task::JoinSet::new();
    let mut messages = std::pin::pin!(messages);
    loop {
        // The semaphore is never closed.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let Some(m) = messages.next().await else {
            break;
        };
        while let Some(ended) = jobs.try_join_next() {
            reaped(ended);
        }
        // The handler is called here, in delivery order, so that what it does before its
        // first await (the receipts consumer takes its message's turn) follows the stream.
        let (msg, job) = match m {
            Ok(msg) => match start_job(&*handler, msg) {
                Some(started) => started,
                None => continue,
            },
            Err(e) => {
                tracing::debug!(error = %e, "pull consumer hiccup");
                continue;
            }
        };
        let done = done.clone();
        jobs.spawn(
            async move {
                answer(&done, msg, job.await).await;
                drop(permit);
            }
            .in_current_span(),
        );
    }
    // The stream ended (the caller starts it over): the jobs under way finish and answer first.
    while let Some(ended) = jobs.join_next().await {
        reaped(ended);
    }
    Ok(())
}

/// A finished job's task: a panic (or abort) is logged; its message is redelivered.
fn reaped(ended: Result<(), tokio::task::JoinError>) {
    if let Err(e) = ended {
        tracing::warn!(error = %e, "a job's task ended without an answer; it is redelivered after ack_wait");
    }
}

/// Turns a consumer message into a job and calls the handler on it.
///
/// The handler's future is boxed: it is kilobytes (a whole job), and a task moves its future
/// into place, writes its output over it and reads the output out again, each a copy of the
/// whole future; boxed, each of those copies a pointer.
fn start_job<F, Fut>(
    handler: &F,
    msg: jetstream::Message,
) -> Option<(jetstream::Message, std::pin::Pin<Box<Fut>>)>
where
    F: Fn(Job) -> Fut,
{
    let Ok(info) = msg.info() else {
        tracing::warn!(subject = %msg.subject, "a consumer message without JetStream metadata; ignoring it");
        return None;
    };
    let job = Job {
        subject: msg.subject.to_string(),
        headers: msg.headers.clone(),
        payload: msg.payload.clone(),
        stream_seq: info.stream_sequence,
        delivered: info.delivered,
    };
    let fut = Box::pin(handler(job));
    Some((msg, fut))
}

/// Answers the server as the handler said, and counts a job that is done
/// (`sealpost_queue_jobs_done_total{consumer}`: what the queue-drain alert divides by).
async fn answer(done: &sealpost_telemetry::Counter, msg: jetstream::Message, end: JobEnd) {
    if !matches!(end, JobEnd::Nak(_)) {
        done.inc();
    }
    let acked = match end {
        JobEnd::Ack => msg.ack().await,
        JobEnd::Nak(d) => msg.ack_with(AckKind::Nak(Some(d))).await,
        JobEnd::Term => msg.ack_with(AckKind::Term).await,
    };
    if let Err(e) = acked {
        // The job is redelivered after ack_wait and found done; nothing is lost.
        tracing::debug!(error = %e, "ack not sent");
    }
}

/// A NAK delay that grows with redeliveries: `base·2^(n-1)`, capped.
pub(crate) fn growing_delay(base: Duration, delivered: i64, cap: Duration) -> Duration {
    let n = u32::try_from(delivered.clamp(1, 20) - 1).unwrap_or(0);
    base.saturating_mul(1u32 << n.min(16)).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_are_capped() {
        let b = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        assert_eq!(growing_delay(b, 1, cap), b);
        assert_eq!(growing_delay(b, 3, cap), Duration::from_millis(400));
        assert_eq!(growing_delay(b, 50, cap), cap);
    }
}
