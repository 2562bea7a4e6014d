//! The export task: takes completed requests from a bounded queue, prints
//! them as JSON if asked, records the duration histogram, and hands spans in
//! batches to [`Delivery`], which retries within a bounded queue: a dead or
//! slow collector costs memory only up to the queue size, and drops are
//! counted.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use opentelemetry::{
    KeyValue,
    metrics::{Histogram, MeterProvider as _},
};
use opentelemetry_otlp::{MetricExporter, Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::{Resource, metrics::SdkMeterProvider, trace::SpanExporter as _};
use tokio::sync::mpsc;

use super::{
    clock::Clock,
    delivery::{BATCH_SIZE, Batch, Delivery},
    json,
    spans::{SpanBuilder, metric_attributes},
};
use crate::{assembly::CompletedRequest, stats::Stats};

/// Semantic-convention bucket boundaries for `http.server.request.duration`.
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
const BATCH_DELAY: Duration = Duration::from_millis(500);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OtlpProtocol {
    Grpc,
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

#[derive(Clone, Debug)]
pub struct ExportConfig {
    /// `None`: no OTLP export (`--otlp-endpoint none`).
    pub endpoint: Option<String>,
    pub protocol: OtlpProtocol,
    pub resource: Resource,
    pub print_json: bool,
    pub queue_capacity: usize,
    pub metric_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP exporter for {endpoint}: {source}")]
pub struct ExporterSetupError {
    endpoint: String,
    #[source]
    source: opentelemetry_otlp::ExporterBuildError,
}

pub struct ExportHandle {
    pub queue: mpsc::Sender<CompletedRequest>,
    pub task: tokio::task::JoinHandle<()>,
}

pub fn start(
    config: ExportConfig,
    clock: Clock,
    stats: Arc<Stats>,
) -> Result<ExportHandle, ExporterSetupError> {
    let (queue, receiver) = mpsc::channel(config.queue_capacity);
    let mut exporters = None;
    if let Some(endpoint) = &config.endpoint {
        let setup_error = |source| ExporterSetupError {
            endpoint: endpoint.clone(),
            source,
        };
        let (mut spans, metrics) =
            build_exporters(endpoint, config.protocol).map_err(setup_error)?;
        spans.set_resource(&config.resource);
        let meters = SdkMeterProvider::builder()
            .with_resource(config.resource.clone())
            .with_reader(
                opentelemetry_sdk::metrics::PeriodicReader::builder(metrics)
                    .with_interval(config.metric_interval)
                    .build(),
            )
            .build();
        exporters = Some((spans, meters));
    }
    let task = tokio::spawn(run(
        receiver,
        exporters,
        config.print_json,
        config.queue_capacity,
        clock,
        stats,
    ));
    Ok(ExportHandle { queue, task })
}

fn build_exporters(
    endpoint: &str,
    protocol: OtlpProtocol,
) -> Result<(SpanExporter, MetricExporter), opentelemetry_otlp::ExporterBuildError> {
    Ok(match protocol {
        OtlpProtocol::Grpc => (
            SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(EXPORT_TIMEOUT)
                .build()?,
            MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(EXPORT_TIMEOUT)
                .build()?,
        ),
        OtlpProtocol::HttpProtobuf => {
            let base = endpoint.trim_end_matches('/');
            (
                SpanExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_endpoint(format!("{base}/v1/traces"))
                    .with_timeout(EXPORT_TIMEOUT)
                    .build()?,
                MetricExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_endpoint(format!("{base}/v1/metrics"))
                    .with_timeout(EXPORT_TIMEOUT)
                    .build()?,
            )
        }
    })
}

async fn run(
    mut receiver: mpsc::Receiver<CompletedRequest>,
    exporters: Option<(SpanExporter, SdkMeterProvider)>,
    print_json: bool,
    queue_capacity: usize,
    clock: Clock,
    stats: Arc<Stats>,
) {
    let (mut delivery, meters) = match exporters {
        Some((spans, meters)) => {
            let builder = SpanBuilder::new(clock);
            let delivery = Delivery::new(spans, builder, stats.clone(), queue_capacity);
            (Some(delivery), Some(meters))
        }
        None => (None, None),
    };
    let duration: Option<Histogram<f64>> = meters.as_ref().map(|meters| {
        let meter = meters.meter("tracer");
        let dropped_stats = stats.clone();
        let _dropped = meter
            .u64_observable_counter("tracer.dropped")
            .with_description("Events, requests or spans the tracer could not turn into telemetry")
            .with_callback(move |observer| {
                for (reason, count) in dropped_stats.dropped() {
                    observer.observe(count, &[KeyValue::new("reason", reason.as_str())]);
                }
            })
            .build();
        meter
            .f64_histogram("http.server.request.duration")
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
                if let Some(histogram) = &duration {
                    let seconds = request.end_ns.saturating_sub(request.start_ns) as f64 / 1e9;
                    let attributes = metric_attributes(&request);
                    histogram.record(seconds, &attributes);
                    batch.push((request, attributes));
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
        delivery.flush(Instant::now() + EXPORT_TIMEOUT).await;
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
