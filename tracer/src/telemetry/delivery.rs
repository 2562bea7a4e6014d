//! Getting batches of requests to the collector as spans, the way the
//! OpenTelemetry collector's exporters do it: a bounded sending queue, a few
//! exports in flight so that a slow collector does not stop the tracer from
//! draining its own queue, and retries with exponential backoff while the
//! collector is away. What does not fit in the queue is dropped, oldest
//! first, and counted; nothing grows without bound.
//!
//! Every instance's batches go through the one queue, under one capacity
//! and one in-flight limit for the whole daemon (the instances share the
//! collector, and its outage), and one client. A batch holds one
//! instance's requests only, their spans encoded already, and is exported
//! under that instance's resource: each instance has a lane, with its
//! resource encoded once, from its first batch until it is retired and its
//! last batch is delivered, or dropped and counted.
//!
//! Spans the collector refuses in a partial success are counted as
//! `spans_rejected` (and logged the first time): the export succeeded, so
//! nothing is retried.
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use tokio::task::JoinSet;

use super::{
    encode::{EncodedSpans, Envelope},
    instance::Instance,
    otlp::{ExportError, Rejected, TraceClient},
    spans,
};
use crate::stats::{DropReason, Stats};

/// Requests per export at most (three spans each).
pub const BATCH_SIZE: usize = 512;
/// Exports at once while the collector answers; one while it does not.
const MAX_IN_FLIGHT: usize = 2;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One instance's encoded resource and how many of its requests are held.
struct Lane {
    envelope: Arc<Envelope>,
    /// Requests of this instance waiting or in flight.
    held: usize,
    /// Retired: the lane goes once nothing of it is held.
    retired: bool,
    /// Keeps the key (the `Arc`'s address) from being reused meanwhile.
    _instance: Arc<Instance>,
}

/// A waiting batch and the key of its instance's [`Lane`].
type Queued = (usize, EncodedSpans);

pub struct Delivery {
    client: Arc<TraceClient>,
    lanes: HashMap<usize, Lane>,
    stats: Arc<Stats>,
    /// Requests allowed to wait here, in flight included, all instances.
    capacity: usize,
    waiting: VecDeque<Queued>,
    /// Requests in `waiting` and in flight.
    held: usize,
    in_flight: JoinSet<(usize, EncodedSpans, Result<Rejected, ExportError>)>,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// When exports started failing, while they do.
    outage_since: Option<Instant>,
    /// A partial success was logged: later ones are only counted.
    rejection_logged: bool,
}

impl Delivery {
    pub fn new(client: TraceClient, stats: Arc<Stats>, capacity: usize) -> Self {
        Self {
            client: Arc::new(client),
            lanes: HashMap::new(),
            stats,
            capacity,
            waiting: VecDeque::new(),
            held: 0,
            in_flight: JoinSet::new(),
            retry_at: None,
            backoff: FIRST_BACKOFF,
            outage_since: None,
            rejection_logged: false,
        }
    }

    /// Queues a batch of `instance`'s requests, dropping the oldest waiting
    /// requests (of any instance) beyond the capacity.
    pub fn push(&mut self, instance: &Arc<Instance>, batch: EncodedSpans) {
        if batch.is_empty() {
            return;
        }
        let key = Instance::key(instance);
        self.lanes.entry(key).or_insert_with(|| Lane {
            envelope: Arc::new(Envelope::new(&instance.resource, &spans::scope())),
            held: 0,
            retired: false,
            _instance: instance.clone(),
        });
        self.held += batch.len();
        self.lane(key).held += batch.len();
        self.waiting.push_back((key, batch));
        while self.held > self.capacity {
            let Some((oldest_key, oldest)) = self.waiting.front_mut() else {
                break;
            };
            let oldest_key = *oldest_key;
            let excess = (self.held - self.capacity).min(oldest.len());
            oldest.drop_oldest(excess);
            if oldest.is_empty() {
                self.waiting.pop_front();
            }
            self.held -= excess;
            self.release(oldest_key, excess);
            self.stats.export_dropped.fetch_add(excess as u64, Relaxed);
        }
        self.dispatch();
    }

    /// The instance will send nothing more: its lane goes once what it has
    /// here is delivered or dropped.
    pub fn retire(&mut self, instance: &Arc<Instance>) {
        let key = Instance::key(instance);
        if let Some(lane) = self.lanes.get_mut(&key) {
            lane.retired = true;
        }
        self.release(key, 0);
    }

    /// Instances with a lane now.
    #[cfg(test)]
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    fn lane(&mut self, key: usize) -> &mut Lane {
        self.lanes.get_mut(&key).expect("a held batch has a lane")
    }

    /// `count` of the lane's requests left; a retired lane with nothing
    /// left is dropped.
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
            Ok((key, batch, Ok(rejected))) => {
                self.held -= batch.len();
                self.release(key, batch.len());
                self.count_exported(batch.spans(), rejected);
                if let Some(since) = self.outage_since.take() {
                    log::info!(
                        "OTLP export resumed after {:.0} s",
                        since.elapsed().as_secs_f64()
                    );
                }
                self.backoff = FIRST_BACKOFF;
            }
            Ok((key, batch, Err(err))) => {
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

    fn count_exported(&mut self, spans: usize, rejected: Rejected) {
        let spans = spans as u64;
        let refused = rejected.spans.min(spans);
        self.stats
            .spans_exported
            .fetch_add(spans - refused, Relaxed);
        if refused == 0 {
            return;
        }
        self.stats.spans_rejected.fetch_add(refused, Relaxed);
        if !self.rejection_logged {
            self.rejection_logged = true;
            log::warn!(
                "the collector rejected {refused} of {spans} spans ({:?}); counted as {}, \
                 and from now on only counted",
                rejected.message,
                DropReason::SpansRejected
            );
        }
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
                if let Some((_, next)) = self.waiting.pop_front() {
                    batch.append(next);
                }
            }
            let envelope = self.lane(key).envelope.clone();
            let client = self.client.clone();
            self.in_flight.spawn(async move {
                let result = client.export(envelope.export_request(&batch)).await;
                (key, batch, result)
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use harness::sink::{Sink, SinkOptions};
    use opentelemetry_sdk::Resource;

    use super::*;
    use crate::telemetry::{
        clock::Clock,
        exporter::OtlpProtocol,
        otel_env::{self, Flags},
        routes::{RouteConfig, Routes},
        spans::{SpanEncoder, tests::request_to},
    };

    const PROTOCOLS: [OtlpProtocol; 2] = [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf];

    async fn sink(options: SinkOptions) -> Sink {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        Sink::start_with(loopback, loopback, options)
            .await
            .expect("a sink")
    }

    /// A delivery to the sink, as `--otlp-endpoint` would set it up, or to
    /// `traces_endpoint` if given.
    fn delivery(sink: &Sink, protocol: OtlpProtocol, traces_endpoint: Option<String>) -> Delivery {
        let endpoint = match protocol {
            OtlpProtocol::Grpc => format!("http://{}", sink.grpc_addr()),
            OtlpProtocol::HttpProtobuf => format!("http://{}", sink.http_addr()),
        };
        let flags = Flags {
            endpoint: traces_endpoint.is_none().then_some(endpoint.as_str()),
            protocol: Some(protocol),
            metric_interval: None,
        };
        let lookup = |name: &str| {
            (name == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .then(|| traces_endpoint.clone())
                .flatten()
        };
        let otlp = otel_env::resolve(&flags, lookup)
            .expect("valid settings")
            .otlp
            .expect("OTLP on");
        let client = TraceClient::new(&otlp.traces).expect("a client");
        Delivery::new(client, Arc::default(), 1_000)
    }

    /// Two requests of one instance, encoded.
    fn two_requests() -> (Arc<Instance>, EncodedSpans) {
        let instance = Arc::new(Instance {
            service: 0,
            resource: Resource::builder_empty().with_service_name("web").build(),
        });
        let mut routes = Routes::new(RouteConfig::default(), Arc::default());
        let mut encoder = SpanEncoder::new(Clock::new());
        let mut batch = EncodedSpans::default();
        for path in ["/a", "/b"] {
            let request = request_to(path, 200);
            encoder.push(&request, &routes.resolve(&request), &mut batch);
        }
        (instance, batch)
    }

    async fn settle(delivery: &mut Delivery) {
        while delivery.busy() {
            delivery.finished().await;
        }
    }

    #[tokio::test]
    async fn spans_rejected_in_a_partial_success_are_counted_not_retried() {
        for protocol in PROTOCOLS {
            let sink = sink(SinkOptions {
                reject_spans: 2,
                ..SinkOptions::default()
            })
            .await;
            let mut delivery = delivery(&sink, protocol, None);
            let (instance, batch) = two_requests();
            delivery.push(&instance, batch);
            settle(&mut delivery).await;
            assert!(delivery.is_empty(), "{protocol:?}: nothing to retry");
            let stats = &delivery.stats;
            assert_eq!(stats.spans_exported.load(Relaxed), 4, "{protocol:?}");
            assert!(
                stats
                    .dropped()
                    .any(|counted| counted == (DropReason::SpansRejected, 2)),
                "{protocol:?}"
            );
            assert_eq!(stats.export_dropped.load(Relaxed), 0, "{protocol:?}");
            assert_eq!(sink.spans().len(), 4, "{protocol:?}");
            sink.shutdown().await;
        }
    }

    /// An HTTP error status (404 off the traces path) or a failed gRPC call
    /// (the HTTP/1 port answers no HTTP/2) is a failed export: its
    /// requests wait for a retry, and a shutdown in the outage counts them.
    #[tokio::test]
    async fn a_refused_export_is_held_for_a_retry() {
        for protocol in PROTOCOLS {
            let sink = sink(SinkOptions::default()).await;
            let wrong = match protocol {
                OtlpProtocol::Grpc => format!("http://{}", sink.http_addr()),
                OtlpProtocol::HttpProtobuf => format!("http://{}/v1/spans", sink.http_addr()),
            };
            let mut delivery = delivery(&sink, protocol, Some(wrong));
            let (instance, batch) = two_requests();
            delivery.push(&instance, batch);
            settle(&mut delivery).await;
            assert!(!delivery.is_empty(), "{protocol:?}: held for a retry");
            assert_eq!(delivery.held, 2, "{protocol:?}");
            assert_eq!(delivery.stats.spans_exported.load(Relaxed), 0);
            delivery
                .flush(Instant::now() + Duration::from_secs(5))
                .await;
            let stats = &delivery.stats;
            assert_eq!(stats.export_dropped.load(Relaxed), 2, "{protocol:?}");
            assert!(sink.spans().is_empty(), "{protocol:?}");
            sink.shutdown().await;
        }
    }
}
