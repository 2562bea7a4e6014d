//! Getting batches of requests to the collector as spans, the way the
//! OpenTelemetry collector's exporters do it: a bounded sending queue, a few
//! exports in flight so that a slow collector does not stop the tracer from
//! draining its own queue, and retries with exponential backoff while the
//! collector is away. What does not fit in the queue is dropped, oldest
//! first, and counted; nothing grows without bound.
//!
//! Every instance's batches go through the one queue, under one capacity
//! and one in-flight limit for the whole daemon (the instances share the
//! collector, and its outage). A batch holds one instance's requests only
//! and is exported by that instance's span exporter, which carries its
//! resource: each instance has one from its first batch until it is
//! retired and its last batch is delivered, or dropped and counted.
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use opentelemetry::KeyValue;
use opentelemetry_otlp::SpanExporter;
use opentelemetry_sdk::{error::OTelSdkResult, trace::SpanExporter as _};
use tokio::task::JoinSet;

use super::{instance::Instance, otlp::SpanExporters, routes::Resolved, spans::SpanBuilder};
use crate::{assembly::CompletedRequest, stats::Stats};

/// Requests, each with its metric attributes (built once, for the histogram)
/// and its resolved route and span name.
pub type Batch = Vec<(CompletedRequest, Vec<KeyValue>, Resolved)>;

/// Requests per export at most (three spans each).
pub const BATCH_SIZE: usize = 512;
/// Exports at once while the collector answers; one while it does not.
const MAX_IN_FLIGHT: usize = 2;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One instance's exporter and how many of its requests are held.
struct Lane {
    exporter: Arc<SpanExporter>,
    /// Requests of this instance waiting or in flight.
    held: usize,
    /// Retired: the lane goes once nothing of it is held.
    retired: bool,
    /// Keeps the key (the `Arc`'s address) from being reused meanwhile.
    _instance: Arc<Instance>,
}

/// A waiting batch and the key of its instance's [`Lane`].
type Queued = (usize, Batch);

pub struct Delivery {
    exporters: SpanExporters,
    lanes: HashMap<usize, Lane>,
    builder: Arc<SpanBuilder>,
    stats: Arc<Stats>,
    /// Requests allowed to wait here, in flight included, all instances.
    capacity: usize,
    waiting: VecDeque<Queued>,
    /// Requests in `waiting` and in flight.
    held: usize,
    in_flight: JoinSet<(usize, Batch, usize, OTelSdkResult)>,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// When exports started failing, while they do.
    outage_since: Option<Instant>,
}

impl Delivery {
    pub fn new(
        exporters: SpanExporters,
        builder: SpanBuilder,
        stats: Arc<Stats>,
        capacity: usize,
    ) -> Self {
        Self {
            exporters,
            lanes: HashMap::new(),
            builder: Arc::new(builder),
            stats,
            capacity,
            waiting: VecDeque::new(),
            held: 0,
            in_flight: JoinSet::new(),
            retry_at: None,
            backoff: FIRST_BACKOFF,
            outage_since: None,
        }
    }

    /// Queues a batch of `instance`'s requests, dropping the oldest waiting
    /// requests (of any instance) beyond the capacity.
    pub fn push(&mut self, instance: &Arc<Instance>, batch: Batch) {
        if batch.is_empty() {
            return;
        }
        let key = Instance::key(instance);
        if !self.lanes.contains_key(&key) {
            match self.exporters.build(&instance.resource) {
                Ok(exporter) => {
                    let lane = Lane {
                        exporter: Arc::new(exporter),
                        held: 0,
                        retired: false,
                        _instance: instance.clone(),
                    };
                    self.lanes.insert(key, lane);
                }
                Err(err) => {
                    // The settings built one at start-up: not expected.
                    log::error!("cannot export this instance's spans: {err}");
                    let lost = batch.len() as u64;
                    self.stats.export_dropped.fetch_add(lost, Relaxed);
                    return;
                }
            }
        }
        self.held += batch.len();
        self.lane(key).held += batch.len();
        self.waiting.push_back((key, batch));
        while self.held > self.capacity {
            let Some((oldest_key, oldest)) = self.waiting.front_mut() else {
                break;
            };
            let oldest_key = *oldest_key;
            let excess = (self.held - self.capacity).min(oldest.len());
            oldest.drain(..excess);
            if oldest.is_empty() {
                self.waiting.pop_front();
            }
            self.held -= excess;
            self.release(oldest_key, excess);
            self.stats.export_dropped.fetch_add(excess as u64, Relaxed);
        }
        self.dispatch();
    }

    /// The instance will send nothing more: its exporter goes once what it
    /// has here is delivered or dropped.
    pub fn retire(&mut self, instance: &Arc<Instance>) {
        let key = Instance::key(instance);
        if let Some(lane) = self.lanes.get_mut(&key) {
            lane.retired = true;
        }
        self.release(key, 0);
    }

    /// Instances with an exporter now.
    pub fn exporters(&self) -> usize {
        self.lanes.len()
    }

    fn lane(&mut self, key: usize) -> &mut Lane {
        self.lanes.get_mut(&key).expect("a held batch has a lane")
    }

    /// `count` of the lane's requests left; a retired lane with nothing
    /// left is dropped, and its exporter with it.
    fn release(&mut self, key: usize, count: usize) {
        let Some(lane) = self.lanes.get_mut(&key) else {
            return;
        };
        lane.held -= count;
        if lane.retired && lane.held == 0 {
            self.lanes.remove(&key);
        }
    }

    /// Whether nothing waits or is in flight: no retry or dispatch is due.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.in_flight.is_empty()
    }

    /// Whether exports are in flight (then [`Delivery::finished`] resolves).
    pub fn busy(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// Waits for one export in flight to end and handles its outcome.
    pub async fn finished(&mut self) {
        let Some(outcome) = self.in_flight.join_next().await else {
            return;
        };
        match outcome {
            Ok((key, batch, spans, Ok(()))) => {
                self.held -= batch.len();
                self.release(key, batch.len());
                self.stats.spans_exported.fetch_add(spans as u64, Relaxed);
                if let Some(since) = self.outage_since.take() {
                    log::info!(
                        "OTLP export resumed after {:.0} s",
                        since.elapsed().as_secs_f64()
                    );
                }
                self.backoff = FIRST_BACKOFF;
            }
            Ok((key, batch, _, Err(err))) => {
                if self.outage_since.is_none() {
                    self.outage_since = Some(Instant::now());
                    log::warn!(
                        "OTLP export failed: {err}; keeping up to {} requests and retrying \
                         (oldest dropped and counted beyond that)",
                        self.capacity
                    );
                }
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                self.waiting.push_front((key, batch));
            }
            // Only an abort or a panic: neither happens while running.
            Err(err) => log::error!("an export task failed: {err}"),
        }
        self.dispatch();
    }

    /// Starts exports of waiting batches, as many as the state allows.
    pub fn dispatch(&mut self) {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        self.retry_at = None;
        let limit = if self.outage_since.is_some() {
            1
        } else {
            MAX_IN_FLIGHT
        };
        while self.in_flight.len() < limit {
            let Some((key, mut batch)) = self.waiting.pop_front() else {
                break;
            };
            // Small batches of one instance that queued up behind a slow
            // collector go together.
            while self.waiting.front().is_some_and(|(next_key, next)| {
                *next_key == key && batch.len() + next.len() <= BATCH_SIZE
            }) {
                batch.extend(
                    self.waiting
                        .pop_front()
                        .into_iter()
                        .flat_map(|(_, next)| next),
                );
            }
            let exporter = self.lane(key).exporter.clone();
            let builder = self.builder.clone();
            self.in_flight.spawn(async move {
                let spans: Vec<_> = batch
                    .iter()
                    .flat_map(|(request, attributes, resolved)| {
                        builder.spans(request, attributes.clone(), resolved)
                    })
                    .collect();
                let count = spans.len();
                let result = exporter.export(spans).await;
                (key, batch, count, result)
            });
        }
    }

    /// Sends what is held until `deadline`; what is left then is counted lost.
    pub async fn flush(&mut self, deadline: Instant) {
        self.retry_at = None;
        self.dispatch();
        while self.busy() {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, self.finished()).await.is_err() {
                break;
            }
            // At shutdown a failed export is not retried later: it is lost.
            if self.outage_since.is_some() {
                break;
            }
        }
        self.in_flight.abort_all();
        let lost = self.held as u64;
        if lost > 0 {
            self.stats.export_dropped.fetch_add(lost, Relaxed);
            log::warn!("{lost} requests could not be exported before shutdown");
        }
        self.waiting.clear();
        self.held = 0;
        self.lanes.clear();
    }
}
