//! The export task: takes completed requests from a bounded queue, prints
//! them as JSON if asked, records the duration histogram (for OTLP and the
//! Prometheus endpoint, whichever is on), and hands the requests the sampler
//! keeps, in batches, to [`Delivery`], which retries within a bounded queue:
//! a dead or slow collector costs memory only up to the queue size, and
//! drops are counted.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use opentelemetry::{
    KeyValue,
    metrics::{Histogram, MeterProvider as _},
};
use opentelemetry_otlp::SpanExporter;
use opentelemetry_sdk::{
    Resource,
    metrics::{PeriodicReader, SdkMeterProvider},
    trace::{Sampler, SpanExporter as _},
};
use tokio::sync::mpsc;

use super::{
    clock::Clock,
    delivery::{BATCH_SIZE, Batch, Delivery},
    json,
    otel_env::OtlpSignals,
    otlp::{self, ExporterSetupError},
    prometheus,
    routes::{RouteConfig, Routes},
    sampling::SpanSampler,
    spans::{SpanBuilder, metric_attributes},
};
use crate::{assembly::CompletedRequest, stats::Stats};

/// The request duration histogram and the loss counter, as named in OTLP.
pub const DURATION_METRIC: &str = "http.server.request.duration";
pub const DROPPED_METRIC: &str = "tracer.dropped";
/// Semantic-convention bucket boundaries for `http.server.request.duration`.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
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
    pub resource: Resource,
    pub print_json: bool,
    pub queue_capacity: usize,
    pub metric_interval: Duration,
    pub routes: RouteConfig,
}

/// Where spans go: delivery through `spans`, metrics read by `meters`.
struct Otlp {
    spans: SpanExporter,
    meters: SdkMeterProvider,
    /// How long the shutdown flush waits for exports: one export's timeout.
    flush_timeout: Duration,
    sampler: SpanSampler,
}

impl Otlp {
    fn new(signals: &OtlpSignals, config: &ExportConfig) -> Result<Self, ExporterSetupError> {
        let mut spans = otlp::span_exporter(&signals.traces)?;
        spans.set_resource(&config.resource);
        let reader = PeriodicReader::builder(otlp::metric_exporter(&signals.metrics)?)
            .with_interval(config.metric_interval)
            .build();
        let meters = SdkMeterProvider::builder()
            .with_resource(config.resource.clone())
            .with_reader(reader)
            .build();
        Ok(Self {
            spans,
            meters,
            flush_timeout: signals.traces.timeout,
            sampler: SpanSampler::new(config.sampler.clone()),
        })
    }
}

/// How each request is named and labelled for metrics: its route, and the
/// Prometheus endpoint's recorder when it is on.
struct Labels {
    routes: Routes,
    prometheus: Option<prometheus::Recorder>,
}

pub struct ExportHandle {
    pub queue: mpsc::Sender<CompletedRequest>,
    pub task: tokio::task::JoinHandle<()>,
}

pub fn start(
    config: ExportConfig,
    clock: Clock,
    stats: Arc<Stats>,
    prometheus: Option<prometheus::Recorder>,
) -> Result<ExportHandle, ExporterSetupError> {
    let (queue, receiver) = mpsc::channel(config.queue_capacity);
    let otlp = match &config.otlp {
        Some(signals) => Some(Otlp::new(signals, &config)?),
        None => None,
    };
    let labels = Labels {
        routes: Routes::new(config.routes, stats.clone()),
        prometheus,
    };
    let task = tokio::spawn(run(
        receiver,
        otlp,
        config.print_json,
        config.queue_capacity,
        labels,
        clock,
        stats,
    ));
    Ok(ExportHandle { queue, task })
}

async fn run(
    mut receiver: mpsc::Receiver<CompletedRequest>,
    otlp: Option<Otlp>,
    print_json: bool,
    queue_capacity: usize,
    labels: Labels,
    clock: Clock,
    stats: Arc<Stats>,
) {
    let Labels {
        mut routes,
        prometheus,
    } = labels;
    let (mut delivery, meters, flush_timeout, sampler) = match otlp {
        Some(Otlp {
            spans,
            meters,
            flush_timeout,
            sampler,
        }) => {
            let builder = SpanBuilder::new(clock);
            let delivery = Delivery::new(spans, builder, stats.clone(), queue_capacity);
            (Some(delivery), Some(meters), flush_timeout, Some(sampler))
        }
        None => (None, None, Duration::ZERO, None),
    };
    let duration: Option<Histogram<f64>> = meters.as_ref().map(|meters| {
        let meter = meters.meter("tracer");
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
        meter
            .f64_histogram(DURATION_METRIC)
            .with_unit("s")
            .with_description("Duration of HTTP server requests.")
            .with_boundaries(DURATION_BUCKETS.to_vec())
            .build()
    });
    let mut batch: Batch = Vec::with_capacity(BATCH_SIZE);
    let mut ticker = tokio::time::interval(BATCH_DELAY);
    loop {
        let in_flight = delivery.as_ref().is_some_and(Delivery::busy);
        tokio::select! {
            request = receiver.recv() => {
                let Some(request) = request else { break };
                if print_json {
                    use std::io::Write as _;
                    let _ = writeln!(std::io::stdout(), "{}", json::line(&request, &clock));
                }
                if duration.is_some() || prometheus.is_some() {
                    let seconds = request.end_ns.saturating_sub(request.start_ns) as f64 / 1e9;
                    let resolved = routes.resolve(&request);
                    let mut attributes = metric_attributes(&request);
                    let shared = attributes.len();
                    resolved.push_metric_attributes(&mut attributes);
                    if let Some(prometheus) = &prometheus {
                        prometheus.record(seconds, &attributes);
                    }
                    if let Some(histogram) = &duration {
                        histogram.record(seconds, &attributes);
                        if sampler.as_ref().is_some_and(SpanSampler::keeps) {
                            // Past --route-limit the metric's route is the
                            // overflow's; the span takes its own from `resolved`.
                            attributes.truncate(shared);
                            batch.push((request, attributes, resolved));
                        }
                    }
                }
                if batch.len() < BATCH_SIZE {
                    continue;
                }
            }
            _ = ticker.tick() => {}
            _ = async { delivery.as_mut().expect("busy implies a delivery").finished().await }, if in_flight => {
                continue;
            }
        }
        if let Some(delivery) = &mut delivery {
            delivery.push(std::mem::take(&mut batch));
            delivery.dispatch();
        }
    }
    if let Some(delivery) = &mut delivery {
        delivery.push(std::mem::take(&mut batch));
        delivery.flush(Instant::now() + flush_timeout).await;
    }
    if let Some(meters) = meters {
        // The final export runs on the metrics reader's thread, over a tonic
        // channel that this runtime drives: waiting for it on the runtime's
        // one thread would stall it until the export timed out.
        match tokio::task::spawn_blocking(move || meters.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => log::warn!("final metrics export failed: {err}"),
            Err(err) => log::warn!("final metrics export did not finish: {err}"),
        }
    }
}
