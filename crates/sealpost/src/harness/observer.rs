//! The observer of a harness run: an ordered consumer on the run's tenant's events, folded
//! into per-message tracks (first final event, when displayed, acked) and per-type counts.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use sealpost_domain::events::{AttemptFailed, ErrorClass};
use sealpost_domain::{EventType, Status};
use sealpost_eventstore::names::EventSubject;

use super::report::{histogram, Summary};

#[derive(Debug, Default)]
pub(crate) struct Track {
    /// Set by the driver for messages it sent (the observer may see events first).
    pub(crate) ours: bool,
    sent: Option<Instant>,
    accepted: Option<Instant>,
    /// The latest event type seen.
    status: Option<EventType>,
    /// The first final event and when the observer saw it.
    terminal: Option<(EventType, Instant)>,
    displayed: Option<Instant>,
    pub(crate) acked: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Observed {
    pub(crate) tracks: HashMap<String, Track>,
    events: BTreeMap<EventType, u64>,
    failed_by: BTreeMap<(ErrorClass, String), u64>,
    after_terminal: BTreeMap<EventType, u64>,
    /// Messages sent by the driver that are terminal.
    terminal_ours: usize,
    /// Per event type: when the observer saw the first and the last one.
    seen: BTreeMap<EventType, (Instant, Instant)>,
    pub(crate) progress: Option<ProgressBar>,
}

impl Observed {
    pub(crate) fn apply(&mut self, subject: &str, payload: &[u8], now: Instant) {
        let Ok(EventSubject {
            message_id,
            event_type: ty,
            ..
        }) = EventSubject::parse(subject)
        else {
            return;
        };
        *self.events.entry(ty).or_default() += 1;
        self.seen
            .entry(ty)
            .and_modify(|(_, last)| *last = now)
            .or_insert((now, now));
        if ty == EventType::AttemptFailed {
            if let Ok(f) = serde_json::from_slice::<AttemptFailed>(payload) {
                *self.failed_by.entry((f.class, f.code)).or_default() += 1;
            }
        }
        let t = self.tracks.entry(message_id.into()).or_default();
        if t.terminal.is_some() {
            *self.after_terminal.entry(ty).or_default() += 1;
        }
        t.status = Some(ty);
        match ty {
            EventType::CarrierAcked => t.acked = true,
            EventType::Displayed => t.displayed = Some(now),
            _ => {}
        }
        if t.terminal.is_none() && Status::after(ty).is_some_and(Status::is_final) {
            t.terminal = Some((ty, now));
            if t.ours {
                self.terminal_ours += 1;
            }
            if let Some(pb) = &self.progress {
                pb.inc(1);
            }
        }
    }

    pub(crate) fn terminal_ours(&self) -> usize {
        self.terminal_ours
    }

    /// The driver learnt that `id` is one of its messages.
    pub(crate) fn mark_ours(&mut self, id: String, sent: Instant, replied: Instant) {
        let t = self.tracks.entry(id).or_default();
        t.sent = Some(sent);
        t.accepted = Some(replied);
        if !t.ours {
            t.ours = true;
            if t.terminal.is_some() {
                self.terminal_ours += 1;
            }
        }
    }

    pub(crate) fn summary(
        &self,
        n: usize,
        accepted: usize,
        started: Instant,
        sends_done: Duration,
        send_us: Histogram<u64>,
        timed_out: bool,
    ) -> Summary {
        let mut s = Summary {
            messages: n,
            accepted,
            timed_out,
            sends_elapsed: sends_done,
            send_latency_us: send_us,
            to_terminal_us: histogram(),
            to_displayed_us: histogram(),
            events: self.events.clone(),
            failed_by: self.failed_by.clone(),
            after_terminal: self.after_terminal.clone(),
            stages: self
                .seen
                .iter()
                .map(|(ty, (first, last))| {
                    (
                        *ty,
                        (
                            first.saturating_duration_since(started),
                            last.saturating_duration_since(started),
                        ),
                    )
                })
                .collect(),
            ..Summary::default()
        };
        let mut last = started;
        for t in self.tracks.values().filter(|t| t.ours) {
            let from = t.accepted.or(t.sent).unwrap_or(started);
            match &t.terminal {
                Some((ty, at)) => {
                    s.terminal += 1;
                    *s.by_state.entry(ty.as_str().to_owned()).or_default() += 1;
                    last = last.max(*at);
                    let us = at.saturating_duration_since(from).as_micros().max(1) as u64;
                    s.to_terminal_us.saturating_record(us);
                }
                None => {
                    let st = t.status.map_or("unseen", EventType::as_str);
                    *s.by_state
                        .entry(format!("{st} (not terminal)"))
                        .or_default() += 1;
                }
            }
            if let Some(at) = t.displayed {
                let us = at.saturating_duration_since(from).as_micros().max(1) as u64;
                s.to_displayed_us.saturating_record(us);
            }
        }
        s.elapsed = last.saturating_duration_since(started);
        s
    }
}
