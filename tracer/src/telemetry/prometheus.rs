//! `--prometheus-port`: GET /metrics for Prometheus to scrape. It serves the
//! duration histogram the OTLP exporter records, from the same attributes
//! into the same buckets, and the tracer's own counters, named by the
//! OpenTelemetry-to-Prometheus compatibility rules: dots become
//! underscores, the unit and `_total` become suffixes, and the resource's
//! attributes are the labels of `target_info`. prometheus-client encodes
//! the OpenMetrics text; a small hyper server on the daemon's runtime
//! serves it.
use std::{
    convert::Infallible,
    fmt,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use hyper::{
    Method, Request, Response, StatusCode, body::Incoming, header, server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use opentelemetry::{Key, KeyValue, Value};
use opentelemetry_sdk::Resource;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, text},
    metrics::{
        MetricType, counter::ConstCounter, family::Family, gauge::Gauge, histogram::Histogram,
        info::Info,
    },
    registry::{Registry, Unit},
};
use tokio::net::TcpListener;

use super::exporter::{DROPPED_METRIC, DURATION_BUCKETS, DURATION_METRIC};
use crate::stats::Stats;

const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// After a failed accept (out of file descriptors, say), the pause before
/// the next try, so the failure does not spin the daemon's one thread.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Label sets beyond this many are recorded as one overflow series, as the
/// OpenTelemetry SDK does with its default cardinality limit: a client that
/// makes up methods cannot grow the tracer's memory.
const MAX_SERIES: usize = 2000;

type Labels = Vec<(String, String)>;
type Durations = Family<Labels, Histogram, fn() -> Histogram>;

#[derive(Debug, thiserror::Error)]
#[error("cannot serve Prometheus metrics on {address}: {source}")]
pub struct ListenError {
    address: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// What the export task records each completed request into.
#[derive(Clone)]
pub struct Recorder {
    durations: Durations,
    series: Arc<AtomicUsize>,
}

impl Recorder {
    /// `attributes` are the request's `metric_attributes`, exactly as the
    /// OTLP histogram records them, so both carry the same label sets.
    pub fn record(&self, seconds: f64, attributes: &[KeyValue]) {
        let labels = labels(attributes.iter().map(|kv| (&kv.key, &kv.value)));
        if let Some(histogram) = self.durations.get(&labels) {
            histogram.observe(seconds);
            return;
        }
        let labels = if self.series.fetch_add(1, Relaxed) < MAX_SERIES {
            labels
        } else {
            overflow_labels()
        };
        self.durations.get_or_create(&labels).observe(seconds);
    }
}

/// The running endpoint's inputs: the recorder for the export task and the
/// gauge the daemon keeps equal to the traced tree's size.
pub struct Endpoint {
    recorder: Recorder,
    traced_processes: Gauge,
}

impl Endpoint {
    pub fn recorder(&self) -> Recorder {
        self.recorder.clone()
    }

    pub fn set_traced_processes(&self, count: usize) {
        self.traced_processes
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}

/// Binds `address` (so a port in use fails here, at start-up) and serves
/// the metrics from a task of its own.
pub async fn start(
    address: SocketAddr,
    resource: &Resource,
    stats: Arc<Stats>,
) -> Result<Endpoint, ListenError> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| ListenError { address, source })?;
    let (registry, endpoint) = metrics(resource, stats);
    log::info!("serving Prometheus metrics on http://{address}/metrics");
    tokio::spawn(serve(listener, Arc::new(registry)));
    Ok(endpoint)
}

/// The registry a scrape encodes, and the handles that feed it.
fn metrics(resource: &Resource, stats: Arc<Stats>) -> (Registry, Endpoint) {
    let durations = Durations::new_with_constructor(|| Histogram::new(DURATION_BUCKETS));
    let traced_processes = Gauge::default();
    let mut registry = Registry::default();
    registry.register_with_unit(
        prometheus_name(DURATION_METRIC),
        "Duration of HTTP server requests",
        Unit::Seconds,
        durations.clone(),
    );
    registry.register(
        "tracer_traced_processes",
        "Processes in the traced tree",
        traced_processes.clone(),
    );
    let mut resource_labels = labels(resource.iter());
    resource_labels.sort();
    registry.register("target", "Target metadata", Info::new(resource_labels));
    registry.register_collector(Box::new(TracerCounters(stats)));
    let endpoint = Endpoint {
        recorder: Recorder {
            durations,
            series: Arc::default(),
        },
        traced_processes,
    };
    (registry, endpoint)
}

/// An OpenTelemetry metric or attribute name as Prometheus allows it: each
/// run of characters outside `[a-zA-Z0-9_]`, and of underscores, becomes
/// one `_`, and a name that starts with a digit gets a `_` before it.
fn prometheus_name(name: &str) -> String {
    let mut sanitized = String::with_capacity(name.len() + 1);
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        sanitized.push('_');
    }
    for c in name.chars() {
        let c = if c.is_ascii_alphanumeric() { c } else { '_' };
        if c != '_' || !sanitized.ends_with('_') {
            sanitized.push(c);
        }
    }
    sanitized
}

/// Attributes as labels: names by [`prometheus_name`], values as strings.
fn labels<'a>(attributes: impl Iterator<Item = (&'a Key, &'a Value)>) -> Labels {
    attributes
        .map(|(key, value)| (prometheus_name(key.as_str()), value.as_str().into_owned()))
        .collect()
}

/// The OpenTelemetry SDK's overflow attribute, `otel.metric.overflow=true`.
fn overflow_labels() -> Labels {
    let overflow = KeyValue::new("otel.metric.overflow", true);
    labels(std::iter::once((&overflow.key, &overflow.value)))
}

/// The tracer's own counters, read from [`Stats`] at each scrape. The
/// kernel's and assembly's counts in it are as of the last
/// `--stats-interval` report, as in the OTLP export.
struct TracerCounters(Arc<Stats>);

impl fmt::Debug for TracerCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TracerCounters")
    }
}

impl Collector for TracerCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let stats = &self.0;
        let totals = [
            (
                "tracer_requests",
                "HTTP requests the tracer assembled from the kernel's records.",
                stats.requests.load(Relaxed),
            ),
            (
                "tracer_spans_exported",
                "Server spans the OTLP collector accepted.",
                stats.spans_exported.load(Relaxed),
            ),
        ];
        for (name, help, total) in totals {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(total).encode(metric)?;
        }
        let dropped_name = prometheus_name(DROPPED_METRIC);
        let mut dropped = encoder.encode_descriptor(
            &dropped_name,
            "Events, requests or spans the tracer could not turn into telemetry, by reason.",
            None,
            MetricType::Counter,
        )?;
        for (reason, count) in stats.dropped() {
            let reason = [("reason", reason.as_str())];
            ConstCounter::new(count).encode(dropped.encode_family(&reason)?)?;
        }
        Ok(())
    }
}

async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(err) => {
                log::warn!("Prometheus endpoint: cannot accept a connection: {err}");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn(|request: Request<Incoming>| {
                let response = respond(request.method(), request.uri().path(), &registry);
                std::future::ready(Ok::<_, Infallible>(response))
            });
            // The timer enables hyper's header read timeout (30 s), so
            // silent connections do not pile up.
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            if let Err(err) = connection.await {
                log::debug!("Prometheus scrape connection ended: {err}");
            }
        });
    }
}

fn respond(method: &Method, path: &str, registry: &Registry) -> Response<String> {
    let status = |status: StatusCode| {
        let mut response = Response::new(String::new());
        *response.status_mut() = status;
        response
    };
    if path != "/metrics" {
        return status(StatusCode::NOT_FOUND);
    }
    if method != Method::GET {
        let mut response = status(StatusCode::METHOD_NOT_ALLOWED);
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return response;
    }
    let mut exposition = String::new();
    if let Err(err) = text::encode(&mut exposition, registry) {
        log::warn!("cannot encode the Prometheus metrics: {err}");
        return status(StatusCode::INTERNAL_SERVER_ERROR);
    }
    let mut response = Response::new(exposition);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(OPENMETRICS_TEXT),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::DropReason;

    #[test]
    fn names_follow_the_opentelemetry_to_prometheus_rules() {
        for (otel, prometheus) in [
            (
                "http.server.request.duration",
                "http_server_request_duration",
            ),
            ("http.response.status_code", "http_response_status_code"),
            ("http.route", "http_route"),
            ("server.port", "server_port"),
            ("a..b__c-d/é", "a_b_c_d_"),
            ("2xx.count", "_2xx_count"),
        ] {
            assert_eq!(prometheus_name(otel), prometheus, "{otel}");
        }
    }

    fn get(registry: &Registry, path: &str) -> Response<String> {
        respond(&Method::GET, path, registry)
    }

    #[test]
    fn the_exposition_has_the_otlp_histogram_and_the_tracer_counters() {
        let stats = Arc::new(Stats::default());
        stats.queue_full.store(3, Relaxed);
        stats.requests.store(5, Relaxed);
        let resource = Resource::builder_empty()
            .with_attributes([KeyValue::new("service.name", "shop")])
            .build();
        let (registry, endpoint) = metrics(&resource, stats);
        let recorder = endpoint.recorder();
        let ok = [
            KeyValue::new("http.request.method", "GET"),
            KeyValue::new("http.response.status_code", 200_i64),
            KeyValue::new("server.port", 8000_i64),
        ];
        // Powers of two, so the sum is exact.
        for seconds in [0.00390625, 0.125, 20.0] {
            recorder.record(seconds, &ok);
        }
        recorder.record(
            0.001,
            &[
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("http.response.status_code", 500_i64),
            ],
        );
        endpoint.set_traced_processes(4);

        let response = get(&registry, "/metrics");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], OPENMETRICS_TEXT);
        let exposition = response.into_body();
        let lines: Vec<&str> = exposition.lines().collect();
        let ok_labels =
            r#"http_request_method="GET",http_response_status_code="200",server_port="8000""#;
        let histogram = "http_server_request_duration_seconds";
        for expected in [
            format!("# TYPE {histogram} histogram"),
            format!("# UNIT {histogram} seconds"),
            format!(r#"{histogram}_bucket{{le="0.005",{ok_labels}}} 1"#),
            format!(r#"{histogram}_bucket{{le="0.25",{ok_labels}}} 2"#),
            format!(r#"{histogram}_bucket{{le="10.0",{ok_labels}}} 2"#),
            format!(r#"{histogram}_bucket{{le="+Inf",{ok_labels}}} 3"#),
            format!("{histogram}_count{{{ok_labels}}} 3"),
            format!("{histogram}_sum{{{ok_labels}}} 20.12890625"),
            format!(
                r#"{histogram}_count{{http_request_method="POST",http_response_status_code="500"}} 1"#
            ),
            "tracer_requests_total 5".into(),
            r#"tracer_dropped_total{reason="export_queue_full"} 3"#.into(),
            "tracer_traced_processes 4".into(),
            r#"target_info{service_name="shop"} 1"#.into(),
        ] {
            assert!(
                lines.contains(&expected.as_str()),
                "no {expected:?} in\n{exposition}"
            );
        }
        let boundaries: Vec<&str> = lines
            .iter()
            .filter(|line| line.contains(ok_labels))
            .filter_map(|line| {
                line.strip_prefix(&format!("{histogram}_bucket{{le=\""))?
                    .split('"')
                    .next()
            })
            .collect();
        let expected: Vec<String> = DURATION_BUCKETS
            .iter()
            .map(|bound| format!("{bound:?}"))
            .chain(["+Inf".to_owned()])
            .collect();
        assert_eq!(boundaries, expected, "the OTLP histogram's boundaries");
        for reason in DropReason::ALL {
            let sample = format!(r#"tracer_dropped_total{{reason="{reason}"}} "#);
            assert!(exposition.contains(&sample), "no {sample:?}");
        }
        assert_eq!(lines.last(), Some(&"# EOF"));
    }

    #[test]
    fn label_sets_beyond_the_limit_share_the_overflow_series() {
        let (registry, endpoint) = metrics(&Resource::builder_empty().build(), Arc::default());
        let recorder = endpoint.recorder();
        for method in 0..MAX_SERIES + 5 {
            let attributes = [KeyValue::new("http.request.method", format!("M{method}"))];
            recorder.record(0.1, &attributes);
            recorder.record(0.1, &attributes);
        }
        let exposition = get(&registry, "/metrics").into_body();
        let counts: Vec<&str> = exposition
            .lines()
            .filter(|line| line.starts_with("http_server_request_duration_seconds_count"))
            .collect();
        assert_eq!(counts.len(), MAX_SERIES + 1);
        assert!(counts.contains(
            &r#"http_server_request_duration_seconds_count{http_request_method="M0"} 2"#
        ));
        assert!(counts.contains(
            &r#"http_server_request_duration_seconds_count{otel_metric_overflow="true"} 10"#
        ));
    }

    #[test]
    fn only_get_metrics_is_served() {
        let (registry, _) = metrics(&Resource::builder_empty().build(), Arc::default());
        assert_eq!(get(&registry, "/").status(), StatusCode::NOT_FOUND);
        let post = respond(&Method::POST, "/metrics", &registry);
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[header::ALLOW], "GET");
    }
}
