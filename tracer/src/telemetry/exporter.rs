//! The export task: takes completed requests, each tagged with its
//! [`Instance`], from a bounded queue, prints them as JSON if asked, records
//! the duration histogram (for OTLP and the Prometheus endpoint, whichever
//! is on) under the instance's resource, encodes the spans of the requests
//! the sampler keeps, and hands them, in batches of one instance each, to
//! [`Delivery`], which retries within a bounded queue: a dead or slow
//! collector costs memory only up to the queue size, and drops are counted.
//!
//! Each live instance has its batch, its meter provider (through
//! [`Meters`]) and, in [`Delivery`], its lane; routes are per service.
//! [`ExportItem::Retired`] frees an instance's share of all that.
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use opentelemetry::{
    KeyValue,
    metrics::{Histogram, Meter, MeterProvider as _},
};
use opentelemetry_sdk::{metrics::SdkMeterProvider, trace::Sampler};
use tokio::sync::mpsc;

use super::{
    active::ActiveRequests,
    clock::Clock,
    delivery::{BATCH_SIZE, Delivery},
    encode::EncodedSpans,
    instance::{ExportItem, Instance, ServiceExport, tracer_resource},
    json,
    meters::Meters,
    otel_env::OtlpSignals,
    otlp::{self, ExporterSetupError, TraceClient},
    prometheus,
    routes::Routes,
    sampling::SpanSampler,
    spans::{SpanEncoder, metric_attributes},
};
use crate::{events::Side, stats::Stats};

/// The request duration and response size histograms and the loss counter,
/// as named in OTLP.
pub const DURATION_METRIC: &str = "http.server.request.duration";
pub const BODY_SIZE_METRIC: &str = "http.server.response.body.size";
pub const ACTIVE_METRIC: &str = "http.server.active_requests";
pub const CLIENT_DURATION_METRIC: &str = "http.client.request.duration";
pub const DROPPED_METRIC: &str = "tracer.dropped";
/// Semantic-convention bucket boundaries for `http.server.request.duration`.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// Body sizes in bytes: powers of four from 64 B to 64 MiB (the
/// conventions give no boundaries for sizes; the SDK's defaults are for
/// milliseconds).
pub const BODY_SIZE_BUCKETS: [f64; 11] = [
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
    67108864.0,
];
const BATCH_DELAY: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OtlpProtocol {
    Grpc,
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

#[derive(Clone, Debug)]
pub struct ExportConfig {
    /// `None`: no OTLP export (`--otlp-endpoint none`, `OTEL_SDK_DISABLED`).
    pub otlp: Option<OtlpSignals>,
    /// Which requests become spans (`OTEL_TRACES_SAMPLER`).
    pub sampler: Sampler,
    /// The traced services, indexed by [`Instance::service`].
    pub services: Vec<ServiceExport>,
    pub print_json: bool,
    pub queue_capacity: usize,
    pub metric_interval: Duration,
}

/// The meters' key of the tracer's own provider: no `Arc`'s address.
const TRACER_METERS: usize = 0;

/// Where spans and metrics go: spans encoded by `encoder` through
/// `delivery`, metrics read from each instance's provider by `meters`.
struct Otlp {
    encoder: SpanEncoder,
    delivery: Delivery,
    meters: Meters,
    /// The tracer's own counters, under [`tracer_resource`].
    tracer_meters: SdkMeterProvider,
    /// How long the shutdown flush waits for exports: one export's timeout.
    flush_timeout: Duration,
    sampler: SpanSampler,
}

impl Otlp {
    fn new(
        signals: &OtlpSignals,
        config: &ExportConfig,
        clock: Clock,
        stats: &Arc<Stats>,
    ) -> Result<Self, ExporterSetupError> {
        let client = TraceClient::new(&signals.traces)?;
        let meters = Meters::start(
            otlp::metric_exporter(&signals.metrics)?,
            config.metric_interval,
        )
        .map_err(|source| ExporterSetupError::Thread { source })?;
        let tracer_meters = meters.provider(TRACER_METERS, tracer_resource().clone());
        register_tracer_counters(&tracer_meters.meter("tracer"), stats);
        Ok(Self {
            encoder: SpanEncoder::new(clock),
            delivery: Delivery::new(client, stats.clone(), config.queue_capacity),
            meters,
            tracer_meters,
            flush_timeout: signals.traces.timeout,
            sampler: SpanSampler::new(config.sampler.clone()),
        })
    }
}

/// `tracer.dropped` and `tracer.cardinality_overflow`, read at each collection.
fn register_tracer_counters(meter: &Meter, stats: &Arc<Stats>) {
    let dropped_stats = stats.clone();
    let _dropped = meter
        .u64_observable_counter(DROPPED_METRIC)
        .with_description("Events, requests or spans the tracer could not turn into telemetry")
        .with_callback(move |observer| {
            for (reason, count) in dropped_stats.dropped() {
                observer.observe(count, &[KeyValue::new("reason", reason.as_str())]);
            }
        })
        .build();
    let overflow_stats = stats.clone();
    let _overflow = meter
        .u64_observable_counter("tracer.cardinality_overflow")
        .with_description(
            "Requests exported under a cardinality limit's overflow value, by limit (docs/routes.md)",
        )
        .with_callback(move |observer| {
            for (limit, count) in overflow_stats.overflows() {
                observer.observe(count, &[KeyValue::new("limit", limit.as_str())]);
            }
        })
        .build();
}

/// What the export task keeps for one live instance.
struct Live {
    instance: Arc<Instance>,
    /// Sampled requests' spans not yet handed to delivery.
    batch: EncodedSpans,
    /// Its OTLP meter provider and RED instruments.
    meters: Option<(SdkMeterProvider, Instruments)>,
}

/// An instance's request duration and response body size histograms (its
/// active-requests counter is observed at collection).
struct Instruments {
    duration: Histogram<f64>,
    body_size: Histogram<u64>,
    client_duration: Histogram<f64>,
}

impl Instruments {
    fn new(meter: &Meter, active: ActiveRequests, key: usize) -> Self {
        let _active = meter
            .i64_observable_up_down_counter(ACTIVE_METRIC)
            .with_unit("{request}")
            .with_description("Number of active HTTP server requests.")
            .with_callback(move |observer| {
                for series in active.of(key) {
                    observer.observe(i64::from(series.count), &series.attributes());
                }
            })
            .build();
        Self {
            duration: meter
                .f64_histogram(DURATION_METRIC)
                .with_unit("s")
                .with_description("Duration of HTTP server requests.")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            body_size: meter
                .u64_histogram(BODY_SIZE_METRIC)
                .with_unit("By")
                .with_description("Size of HTTP server response bodies.")
                .with_boundaries(BODY_SIZE_BUCKETS.to_vec())
                .build(),
            client_duration: meter
                .f64_histogram(CLIENT_DURATION_METRIC)
                .with_unit("s")
                .with_description("Duration of HTTP client requests.")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
        }
    }
}

pub struct ExportHandle {
    pub queue: mpsc::Sender<ExportItem>,
    pub task: tokio::task::JoinHandle<()>,
}

pub fn start(
    config: ExportConfig,
    clock: Clock,
    stats: Arc<Stats>,
    prometheus: Option<prometheus::Recorder>,
    active: ActiveRequests,
) -> Result<ExportHandle, ExporterSetupError> {
    let (queue, receiver) = mpsc::channel(config.queue_capacity);
    let export = Export::new(config, clock, stats, prometheus, active)?;
    let task = tokio::spawn(export.run(receiver));
    Ok(ExportHandle { queue, task })
}

struct Export {
    otlp: Option<Otlp>,
    /// One per service, indexed by [`Instance::service`].
    routes: Vec<Routes>,
    prometheus: Option<prometheus::Recorder>,
    print_json: bool,
    clock: Clock,
    live: HashMap<usize, Live>,
    active: ActiveRequests,
}

impl Export {
    fn new(
        config: ExportConfig,
        clock: Clock,
        stats: Arc<Stats>,
        prometheus: Option<prometheus::Recorder>,
        active: ActiveRequests,
    ) -> Result<Self, ExporterSetupError> {
        let otlp = match &config.otlp {
            Some(signals) => Some(Otlp::new(signals, &config, clock, &stats)?),
            None => None,
        };
        let routes = config
            .services
            .iter()
            .map(|service| Routes::new(service.routes.clone(), stats.clone()))
            .collect();
        Ok(Self {
            otlp,
            routes,
            prometheus,
            print_json: config.print_json,
            clock,
            live: HashMap::new(),
            active,
        })
    }

    async fn run(mut self, mut receiver: mpsc::Receiver<ExportItem>) {
        let mut ticker = tokio::time::interval(BATCH_DELAY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let in_flight = self.otlp.as_ref().is_some_and(|otlp| otlp.delivery.busy());
            // Idle, the batch timer sleeps: nothing is due before a request.
            let pending = self.otlp.as_ref().is_some_and(|otlp| {
                !otlp.delivery.is_empty() || self.live.values().any(|live| !live.batch.is_empty())
            });
            tokio::select! {
                item = receiver.recv() => match item {
                    Some(item) => self.handle(item),
                    None => break,
                },
                _ = ticker.tick(), if pending => self.deliver_all(),
                _ = async { self.otlp.as_mut().expect("busy implies OTLP").delivery.finished().await }, if in_flight => {}
            }
        }
        self.shutdown().await;
    }

    fn handle(&mut self, item: ExportItem) {
        match item {
            ExportItem::Request(instance, request) => self.record(instance, request),
            ExportItem::Retired(instance) => self.retire(&instance),
        }
    }

    fn record(&mut self, instance: Arc<Instance>, request: crate::assembly::CompletedRequest) {
        if instance.service >= self.routes.len() {
            log::error!(
                "a request of service #{} of {}: not exported",
                instance.service,
                self.routes.len()
            );
            return;
        }
        if self.print_json {
            use std::io::Write as _;
            let line = json::line(&request, &instance.service_name(), &self.clock);
            let _ = writeln!(std::io::stdout(), "{line}");
        }
        if self.otlp.is_none() && self.prometheus.is_none() {
            return;
        }
        let seconds = request.end_ns.saturating_sub(request.start_ns) as f64 / 1e9;
        // Routes are a server's: a call has none.
        let resolved =
            (request.side == Side::Server).then(|| self.routes[instance.service].resolve(&request));
        let mut attributes = metric_attributes(&request);
        if let Some(resolved) = &resolved {
            resolved.push_metric_attributes(&mut attributes);
        }
        if let Some(prometheus) = &self.prometheus {
            prometheus.record(&instance, &request, seconds, &attributes);
        }
        let Some(otlp) = &mut self.otlp else {
            return;
        };
        let live = self
            .live
            .entry(Instance::key(&instance))
            .or_insert_with(|| {
                let provider = otlp
                    .meters
                    .provider(Instance::key(&instance), instance.resource.clone());
                let instruments = Instruments::new(
                    &provider.meter("tracer"),
                    self.active.clone(),
                    Instance::key(&instance),
                );
                Live {
                    instance,
                    batch: EncodedSpans::default(),
                    meters: Some((provider, instruments)),
                }
            });
        if let Some((_, instruments)) = &live.meters {
            if request.side == Side::Client {
                instruments.client_duration.record(seconds, &attributes);
            } else {
                instruments.duration.record(seconds, &attributes);
                if let Some(bytes) = request.response_body_bytes {
                    instruments.body_size.record(bytes, &attributes);
                }
            }
        }
        if otlp.sampler.keeps(&request.ids) {
            // Past --route-limit the metric's route is the overflow's; the
            // span takes its own from `resolved`.
            match &resolved {
                Some(resolved) => otlp.encoder.push(&request, resolved, &mut live.batch),
                None => otlp.encoder.push_call(&request, &mut live.batch),
            }
            if live.batch.len() >= BATCH_SIZE {
                otlp.delivery.push(&live.instance, live.batch.take());
            }
        }
    }

    /// Hands every instance's batch to delivery.
    fn deliver_all(&mut self) {
        let Some(otlp) = &mut self.otlp else {
            return;
        };
        for live in self.live.values_mut() {
            otlp.delivery.push(&live.instance, live.batch.take());
        }
        otlp.delivery.dispatch();
    }

    fn retire(&mut self, instance: &Arc<Instance>) {
        if let Some(prometheus) = &self.prometheus {
            prometheus.retire(instance);
        }
        let key = Instance::key(instance);
        let (Some(otlp), Some(mut live)) = (&mut self.otlp, self.live.remove(&key)) else {
            return;
        };
        otlp.delivery
            .push(instance, std::mem::take(&mut live.batch));
        otlp.delivery.retire(instance);
        if let Some((provider, _)) = live.meters.take() {
            otlp.meters.retire(key, provider);
        }
    }

    /// Instances with state here (a batch, meters) now.
    #[cfg(test)]
    fn live(&self) -> usize {
        self.live.len()
    }

    async fn shutdown(mut self) {
        let Some(mut otlp) = self.otlp.take() else {
            return;
        };
        for (key, mut live) in self.live.drain() {
            otlp.delivery
                .push(&live.instance, std::mem::take(&mut live.batch));
            if let Some((provider, _)) = live.meters.take() {
                otlp.meters.retire(key, provider);
            }
        }
        otlp.delivery
            .flush(Instant::now() + otlp.flush_timeout)
            .await;
        otlp.meters.retire(TRACER_METERS, otlp.tracer_meters);
        // The final exports run on the metrics thread, over a tonic channel
        // that this runtime drives: waiting for them on the runtime's one
        // thread would stall it until the exports timed out.
        let meters = otlp.meters;
        if let Err(err) = tokio::task::spawn_blocking(move || meters.shutdown()).await {
            log::warn!("final metrics export did not finish: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, net::SocketAddr};

    use harness::sink::{AttrValue, Sink};
    use opentelemetry_sdk::Resource;

    use super::*;
    use crate::{
        assembly::CompletedRequest,
        telemetry::{
            otel_env::{self, Flags},
            routes::RouteConfig,
        },
    };

    fn request(tgid: u32) -> CompletedRequest {
        CompletedRequest {
            tgid,
            side: crate::events::Side::Server,
            ids: crate::trace_context::SpanIds::root(),
            response_cut_short: false,
            tls: false,
            response_body_bytes: Some(60),
            ..crate::telemetry::spans::tests::request_to("/users/42", 200)
        }
    }

    fn instance(id: &str, pid: i64) -> Arc<Instance> {
        Arc::new(Instance {
            service: 0,
            resource: Resource::builder_empty()
                .with_attributes([
                    KeyValue::new("service.instance.id", id.to_owned()),
                    KeyValue::new("process.pid", pid),
                ])
                .with_service_name("web")
                .build(),
        })
    }

    /// An export to the sink's OTLP/gRPC port; metrics only when retired
    /// and at shutdown (the interval is longer than any test).
    async fn export_to(sink: &Sink) -> Export {
        let endpoint = format!("http://{}", sink.grpc_addr());
        let flags = Flags {
            endpoint: Some(&endpoint),
            protocol: None,
            metric_interval: Some(Duration::from_secs(3600)),
        };
        let otel = otel_env::resolve(&flags, |_| None).expect("valid settings");
        let config = ExportConfig {
            otlp: otel.otlp,
            sampler: otel.sampler,
            services: vec![ServiceExport {
                routes: RouteConfig::default(),
            }],
            print_json: false,
            queue_capacity: 1_000,
            metric_interval: Duration::from_secs(3600),
        };
        Export::new(
            config,
            Clock::new(),
            Arc::default(),
            None,
            ActiveRequests::default(),
        )
        .expect("an export")
    }

    async fn sink() -> Sink {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        Sink::start(loopback, loopback).await.expect("a sink")
    }

    fn delivery(export: &mut Export) -> &mut Delivery {
        &mut export.otlp.as_mut().expect("OTLP on").delivery
    }

    async fn delivered(export: &mut Export) {
        export.deliver_all();
        while delivery(export).busy() {
            delivery(export).finished().await;
        }
    }

    #[tokio::test]
    async fn each_instance_exports_under_its_own_resource() {
        let sink = sink().await;
        let mut export = export_to(&sink).await;
        let (one, two) = (instance("one", 10), instance("two", 20));
        export.handle(ExportItem::Request(one.clone(), request(11)));
        export.handle(ExportItem::Request(two.clone(), request(21)));
        export.handle(ExportItem::Request(two.clone(), request(22)));
        delivered(&mut export).await;
        assert!(sink.wait_for_spans(9, Duration::from_secs(10)).await);

        let mut by_instance: BTreeMap<String, Vec<_>> = BTreeMap::new();
        for span in sink.spans() {
            let id = span.resource["service.instance.id"]
                .as_str()
                .unwrap()
                .to_owned();
            by_instance.entry(id).or_default().push(span);
        }
        assert_eq!(by_instance["one"].len(), 3);
        assert_eq!(by_instance["two"].len(), 6);
        for (id, pid) in [("one", 10), ("two", 20)] {
            for span in &by_instance[id] {
                assert_eq!(span.service, "web");
                assert_eq!(span.resource["process.pid"], AttrValue::Int(pid));
            }
        }
        assert_eq!(export.live(), 2);
        assert_eq!(delivery(&mut export).lanes(), 2);

        // Retired, an instance's lane and provider go, and its metrics
        // are exported a last time; the other's at shutdown, with the
        // tracer's own counters under the tracer's resource.
        export.handle(ExportItem::Retired(one.clone()));
        assert_eq!(export.live(), 1);
        assert_eq!(delivery(&mut export).lanes(), 1);
        export.shutdown().await;
        let metrics = sink.metrics();
        let durations = metrics
            .iter()
            .filter(|metric| metric.name == DURATION_METRIC);
        let counts: Vec<u64> = durations
            .inspect(|metric| assert_eq!(metric.service, "web"))
            .map(|metric| metric.points.iter().filter_map(|point| point.count).sum())
            .collect();
        assert_eq!(counts, [1, 2], "one's at retirement, then two's");
        let sizes: Vec<(Option<u64>, Option<f64>)> = metrics
            .iter()
            .filter(|metric| metric.name == BODY_SIZE_METRIC)
            .flat_map(|metric| &metric.points)
            .map(|point| (point.count, point.sum))
            .collect();
        assert_eq!(sizes, [(Some(1), Some(60.0)), (Some(2), Some(120.0))]);
        let dropped = metrics.iter().find(|metric| metric.name == DROPPED_METRIC);
        assert_eq!(dropped.expect("tracer.dropped").service, "tracer");
        sink.shutdown().await;
    }

    #[tokio::test]
    async fn a_retired_instance_keeps_its_lane_until_its_spans_are_delivered() {
        let sink = sink().await;
        let mut export = export_to(&sink).await;
        let one = instance("one", 10);
        export.handle(ExportItem::Request(one.clone(), request(11)));
        export.handle(ExportItem::Retired(one.clone()));
        assert_eq!(export.live(), 0);
        assert_eq!(delivery(&mut export).lanes(), 1, "its batch in flight");
        delivered(&mut export).await;
        assert_eq!(delivery(&mut export).lanes(), 0);
        assert!(sink.wait_for_spans(3, Duration::from_secs(10)).await);
        // A request after retirement starts the instance again.
        export.handle(ExportItem::Request(one.clone(), request(12)));
        assert_eq!(export.live(), 1);
        export.shutdown().await;
        assert!(sink.wait_for_spans(6, Duration::from_secs(10)).await);
        sink.shutdown().await;
    }
}
