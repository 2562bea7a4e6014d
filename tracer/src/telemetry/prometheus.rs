//! `--prometheus-port`: GET /metrics for Prometheus to scrape. It serves the
//! duration and body size histograms the OTLP exporter records, from the
//! same attributes into the same buckets, and the tracer's own counters, named by the
//! OpenTelemetry-to-Prometheus compatibility rules: dots become
//! underscores, the unit and `_total` become suffixes. One endpoint serves
//! several instances (and the tracer's own counters, under
//! [`tracer_resource`]), as the OpenTelemetry collector's Prometheus
//! exporter does: every series carries its resource's `job`
//! (`service.namespace/service.name`) and `instance`
//! (`service.instance.id`) labels, and `target_info` has one series per
//! resource with its other attributes. (A scrape config must then keep
//! these labels: `honor_labels: true`.) A retired instance's series stay
//! [`RETIRED_SERIES_TTL`] for scrapes to see their last values, then go.
//! prometheus-client encodes the OpenMetrics text; a small hyper server on
//! the daemon's runtime serves it.
use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
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
        MetricType,
        counter::ConstCounter,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
        info::Info,
    },
    registry::{Registry, Unit},
};
use tokio::net::TcpListener;

use super::{
    active::ActiveRequests,
    exporter::{
        ACTIVE_METRIC, BODY_SIZE_BUCKETS, BODY_SIZE_METRIC, CLIENT_DURATION_METRIC, DROPPED_METRIC,
        DURATION_BUCKETS, DURATION_METRIC,
    },
    instance::{Instance, tracer_resource},
};
use crate::{assembly::CompletedRequest, events::Side, stats::Stats};

const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// After a failed accept (out of file descriptors, say), the pause before
/// the next try, so the failure does not spin the daemon's one thread.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Label sets of one instance beyond this many are recorded as one overflow
/// series, as the OpenTelemetry SDK does with its default cardinality
/// limit (per meter provider, so per instance): a client that makes up
/// methods cannot grow the tracer's memory.
const MAX_SERIES: usize = 2000;
/// How long a retired instance's series are still served: the
/// OpenTelemetry collector's Prometheus exporter's default expiration.
pub const RETIRED_SERIES_TTL: Duration = Duration::from_secs(300);

type Labels = Vec<(String, String)>;

/// The histogram families: name, help, unit, the side whose label sets
/// have it, and which of [`Series::histograms`] it is.
const HISTOGRAM_FAMILIES: [(&str, &str, Unit, Side, usize); 3] = [
    (
        DURATION_METRIC,
        "Duration of HTTP server requests",
        Unit::Seconds,
        Side::Server,
        0,
    ),
    (
        BODY_SIZE_METRIC,
        "Size of HTTP server response bodies",
        Unit::Bytes,
        Side::Server,
        1,
    ),
    (
        CLIENT_DURATION_METRIC,
        "Duration of HTTP client requests",
        Unit::Seconds,
        Side::Client,
        0,
    ),
];

/// The histograms of one label set: a served request's duration and body
/// size, or a call's duration.
struct Series {
    duration: Histogram,
    body_size: Histogram,
}

impl Series {
    fn new() -> Self {
        Self {
            duration: Histogram::new(DURATION_BUCKETS),
            body_size: Histogram::new(BODY_SIZE_BUCKETS),
        }
    }

    fn histograms(&self) -> [&Histogram; 2] {
        [&self.duration, &self.body_size]
    }

    fn observe(&self, seconds: f64, body_bytes: Option<u64>) {
        self.duration.observe(seconds);
        if let Some(bytes) = body_bytes {
            self.body_size.observe(bytes as f64);
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot serve Prometheus metrics on {address}: {source}")]
pub struct ListenError {
    address: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// One resource's series: its `job` and `instance` labels, its
/// `target_info` labels, and (an instance's) histograms by label set.
struct Target {
    identity: Labels,
    info: Labels,
    /// A served request's label sets and a call's are apart.
    series: HashMap<(Side, Labels), Series>,
    retired_at: Option<Instant>,
    /// Keeps the key (the `Arc`'s address) from being reused meanwhile.
    _instance: Arc<Instance>,
}

impl Target {
    fn new(instance: &Arc<Instance>) -> Self {
        let (identity, info) = identity_and_info(&instance.resource);
        Self {
            identity,
            info,
            series: HashMap::new(),
            retired_at: None,
            _instance: instance.clone(),
        }
    }
}

/// Every instance's series, by [`Instance::key`].
#[derive(Clone, Default)]
struct Targets(Arc<Mutex<BTreeMap<usize, Target>>>);

impl Targets {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<usize, Target>> {
        // Plain data: a panic while holding the lock leaves it usable.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Drops the series of instances retired more than [`RETIRED_SERIES_TTL`] ago.
fn expire(targets: &mut BTreeMap<usize, Target>, now: Instant) {
    targets.retain(|_, target| {
        target
            .retired_at
            .is_none_or(|at| now.duration_since(at) < RETIRED_SERIES_TTL)
    });
}

/// What the export task records each completed request into.
#[derive(Clone)]
pub struct Recorder {
    targets: Targets,
}

impl Recorder {
    /// `attributes` are the request's `metric_attributes`, exactly as the
    /// OTLP histograms record them, so both carry the same label sets.
    pub fn record(
        &self,
        instance: &Arc<Instance>,
        request: &CompletedRequest,
        seconds: f64,
        attributes: &[KeyValue],
    ) {
        let side = request.side;
        let body_bytes = request.response_body_bytes.filter(|_| side == Side::Server);
        let key = (
            side,
            labels(attributes.iter().map(|kv| (&kv.key, &kv.value))),
        );
        let mut targets = self.targets.lock();
        let target = targets
            .entry(Instance::key(instance))
            .or_insert_with(|| Target::new(instance));
        // A request that was on its way when the instance was retired.
        target.retired_at = None;
        if let Some(series) = target.series.get(&key) {
            series.observe(seconds, body_bytes);
            return;
        }
        let key = if target.series.len() < MAX_SERIES {
            key
        } else {
            (side, overflow_labels())
        };
        target
            .series
            .entry(key)
            .or_insert_with(Series::new)
            .observe(seconds, body_bytes);
    }

    /// The instance is gone: its series go after [`RETIRED_SERIES_TTL`].
    pub fn retire(&self, instance: &Arc<Instance>) {
        let now = Instant::now();
        let mut targets = self.targets.lock();
        if let Some(target) = targets.get_mut(&Instance::key(instance)) {
            target.retired_at = Some(now);
        }
        expire(&mut targets, now);
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
    stats: Arc<Stats>,
    active: ActiveRequests,
) -> Result<Endpoint, ListenError> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| ListenError { address, source })?;
    let (registry, endpoint) = metrics(tracer_resource(), stats, active);
    log::info!("serving Prometheus metrics on http://{address}/metrics");
    tokio::spawn(serve(listener, Arc::new(registry)));
    Ok(endpoint)
}

/// The registry a scrape encodes, and the handles that feed it; `tracer`
/// is the resource of the tracer's own series.
fn metrics(tracer: &Resource, stats: Arc<Stats>, active: ActiveRequests) -> (Registry, Endpoint) {
    let targets = Targets::default();
    let traced_processes = Gauge::default();
    let (identity, info) = identity_and_info(tracer);
    let mut registry = Registry::default();
    registry.register_collector(Box::new(InstanceSeries {
        targets: targets.clone(),
        tracer: (identity.clone(), info),
        active,
    }));
    registry.register_collector(Box::new(TracerCounters {
        stats,
        identity,
        traced_processes: traced_processes.clone(),
    }));
    let endpoint = Endpoint {
        recorder: Recorder { targets },
        traced_processes,
    };
    (registry, endpoint)
}

/// A resource's `job` and `instance` labels, and its `target_info` labels:
/// the other attributes, sorted (the compatibility specification's
/// resource-attribute rules).
fn identity_and_info(resource: &Resource) -> (Labels, Labels) {
    let value = |key: &'static str| {
        resource
            .get(&Key::from_static_str(key))
            .map(|value| value.as_str().into_owned())
    };
    let job = match (value("service.namespace"), value("service.name")) {
        (Some(namespace), Some(name)) if !namespace.is_empty() => format!("{namespace}/{name}"),
        (_, name) => name.unwrap_or_default(),
    };
    let instance = value("service.instance.id").unwrap_or_default();
    let identity = vec![("job".to_owned(), job), ("instance".to_owned(), instance)];
    let mut info = identity.clone();
    let mut rest = labels(resource.iter().filter(|(key, _)| {
        !matches!(
            key.as_str(),
            "service.name" | "service.namespace" | "service.instance.id"
        )
    }));
    rest.sort();
    info.extend(rest);
    (identity, info)
}

/// The instances' histograms and active requests, and every resource's
/// `target_info`.
struct InstanceSeries {
    targets: Targets,
    /// The tracer's own `job`/`instance` and `target_info` labels.
    tracer: (Labels, Labels),
    active: ActiveRequests,
}

impl fmt::Debug for InstanceSeries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InstanceSeries")
    }
}

impl Collector for InstanceSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut targets = self.targets.lock();
        expire(&mut targets, Instant::now());
        for (metric, help, unit, side, index) in &HISTOGRAM_FAMILIES {
            let name = prometheus_name(metric);
            let mut family =
                encoder.encode_descriptor(&name, help, Some(unit), MetricType::Histogram)?;
            for target in targets.values() {
                let of_side = target.series.iter().filter(|((of, _), _)| of == side);
                for ((_, labels), series) in of_side {
                    let labels: Labels = target.identity.iter().chain(labels).cloned().collect();
                    series.histograms()[*index].encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let active_name = prometheus_name(ACTIVE_METRIC);
        let mut active = encoder.encode_descriptor(
            &active_name,
            "Number of active HTTP server requests",
            None,
            MetricType::Gauge,
        )?;
        for (key, target) in targets.iter() {
            for series in self.active.of(*key) {
                let attributes = series.attributes();
                let labels: Labels = target
                    .identity
                    .iter()
                    .cloned()
                    .chain(labels(attributes.iter().map(|kv| (&kv.key, &kv.value))))
                    .collect();
                let gauge = ConstGauge::new(i64::from(series.count));
                gauge.encode(active.encode_family(&labels)?)?;
            }
        }
        let mut info =
            encoder.encode_descriptor("target", "Target metadata", None, MetricType::Info)?;
        let no_labels = Labels::new();
        let tracer = std::iter::once(&self.tracer.1);
        for labels in tracer.chain(targets.values().map(|target| &target.info)) {
            Info::new(labels.clone()).encode(info.encode_family(&no_labels)?)?;
        }
        Ok(())
    }
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

/// The tracer's own counters, read from [`Stats`] at each scrape, and the
/// traced-process gauge, under the tracer's `job` and `instance`. The
/// kernel's and assembly's counts in it are as of the last
/// `--stats-interval` report, as in the OTLP export.
struct TracerCounters {
    stats: Arc<Stats>,
    identity: Labels,
    traced_processes: Gauge,
}

impl fmt::Debug for TracerCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TracerCounters")
    }
}

impl Collector for TracerCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let stats = &self.stats;
        let identity = &self.identity;
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
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(total).encode(metric.encode_family(identity)?)?;
        }
        let mut traced = encoder.encode_descriptor(
            "tracer_traced_processes",
            "Processes in the traced tree",
            None,
            MetricType::Gauge,
        )?;
        self.traced_processes
            .encode(traced.encode_family(identity)?)?;
        let dropped_name = prometheus_name(DROPPED_METRIC);
        let mut dropped = encoder.encode_descriptor(
            &dropped_name,
            "Events, requests or spans the tracer could not turn into telemetry, by reason.",
            None,
            MetricType::Counter,
        )?;
        for (reason, count) in stats.dropped() {
            let mut labels = identity.clone();
            labels.push(("reason".into(), reason.as_str().into()));
            ConstCounter::new(count).encode(dropped.encode_family(&labels)?)?;
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

    /// Records a served request of `seconds` and `body` bytes.
    fn record(
        recorder: &Recorder,
        instance: &Arc<Instance>,
        seconds: f64,
        body: Option<u64>,
        attributes: &[KeyValue],
    ) {
        let mut request = crate::telemetry::spans::tests::request_to("/", 200);
        request.response_body_bytes = body;
        recorder.record(instance, &request, seconds, attributes);
    }

    fn instance(attributes: &[(&'static str, &'static str)]) -> Arc<Instance> {
        let attributes = attributes
            .iter()
            .map(|&(key, value)| KeyValue::new(key, value));
        Arc::new(Instance {
            service: 0,
            resource: Resource::builder_empty()
                .with_attributes(attributes)
                .build(),
        })
    }

    fn tracer() -> Resource {
        Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", "tracer"),
                KeyValue::new("service.instance.id", "host:1"),
            ])
            .build()
    }

    #[test]
    fn the_exposition_has_the_otlp_histogram_and_the_tracer_counters() {
        let stats = Arc::new(Stats::default());
        stats.queue_full.store(3, Relaxed);
        stats.requests.store(5, Relaxed);
        let shop = instance(&[("service.name", "shop"), ("service.instance.id", "a")]);
        let (registry, endpoint) = metrics(&tracer(), stats, ActiveRequests::default());
        let recorder = endpoint.recorder();
        let ok = [
            KeyValue::new("http.request.method", "GET"),
            KeyValue::new("http.response.status_code", 200_i64),
            KeyValue::new("server.port", 8000_i64),
        ];
        // Powers of two, so the sum is exact.
        for (seconds, body) in [(0.00390625, Some(100)), (0.125, Some(5000)), (20.0, None)] {
            record(&recorder, &shop, seconds, body, &ok);
        }
        record(
            &recorder,
            &shop,
            0.001,
            Some(0),
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
        let ok_labels = r#"job="shop",instance="a",http_request_method="GET",http_response_status_code="200",server_port="8000""#;
        let tracer = r#"job="tracer",instance="host:1""#;
        let histogram = "http_server_request_duration_seconds";
        let sizes = "http_server_response_body_size_bytes";
        for expected in [
            format!("# TYPE {histogram} histogram"),
            format!("# UNIT {histogram} seconds"),
            format!(r#"{histogram}_bucket{{le="0.005",{ok_labels}}} 1"#),
            format!(r#"{histogram}_bucket{{le="0.25",{ok_labels}}} 2"#),
            format!(r#"{histogram}_bucket{{le="10.0",{ok_labels}}} 2"#),
            format!(r#"{histogram}_bucket{{le="+Inf",{ok_labels}}} 3"#),
            format!("{histogram}_count{{{ok_labels}}} 3"),
            format!("{histogram}_sum{{{ok_labels}}} 20.12890625"),
            // A body of unknown size is not counted in the size histogram.
            format!("# UNIT {sizes} bytes"),
            format!(r#"{sizes}_bucket{{le="256.0",{ok_labels}}} 1"#),
            format!(r#"{sizes}_bucket{{le="16384.0",{ok_labels}}} 2"#),
            format!("{sizes}_count{{{ok_labels}}} 2"),
            format!("{sizes}_sum{{{ok_labels}}} 5100.0"),
            format!(
                r#"{histogram}_count{{job="shop",instance="a",http_request_method="POST",http_response_status_code="500"}} 1"#
            ),
            format!("tracer_requests_total{{{tracer}}} 5"),
            format!(r#"tracer_dropped_total{{{tracer},reason="export_queue_full"}} 3"#),
            format!("tracer_traced_processes{{{tracer}}} 4"),
            r#"target_info{job="shop",instance="a"} 1"#.into(),
            format!("target_info{{{tracer}}} 1"),
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
            let sample = format!(r#"tracer_dropped_total{{{tracer},reason="{reason}"}} "#);
            assert!(exposition.contains(&sample), "no {sample:?}");
        }
        assert_eq!(lines.last(), Some(&"# EOF"));
    }

    #[test]
    fn label_sets_beyond_the_limit_share_the_overflow_series() {
        let (registry, endpoint) = metrics(&tracer(), Arc::default(), ActiveRequests::default());
        let recorder = endpoint.recorder();
        let shop = instance(&[("service.name", "shop")]);
        for method in 0..MAX_SERIES + 5 {
            let attributes = [KeyValue::new("http.request.method", format!("M{method}"))];
            record(&recorder, &shop, 0.1, None, &attributes);
            record(&recorder, &shop, 0.1, None, &attributes);
        }
        let exposition = get(&registry, "/metrics").into_body();
        let counts: Vec<&str> = exposition
            .lines()
            .filter(|line| line.starts_with("http_server_request_duration_seconds_count"))
            .collect();
        assert_eq!(counts.len(), MAX_SERIES + 1);
        assert!(counts.contains(
            &r#"http_server_request_duration_seconds_count{job="shop",instance="",http_request_method="M0"} 2"#
        ));
        assert!(counts.contains(
            &r#"http_server_request_duration_seconds_count{job="shop",instance="",otel_metric_overflow="true"} 10"#
        ));
    }

    #[test]
    fn only_get_metrics_is_served() {
        let (registry, _) = metrics(&tracer(), Arc::default(), ActiveRequests::default());
        assert_eq!(get(&registry, "/").status(), StatusCode::NOT_FOUND);
        let post = respond(&Method::POST, "/metrics", &registry);
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[header::ALLOW], "GET");
    }

    #[test]
    fn instances_have_their_own_job_instance_and_target_info() {
        let (registry, endpoint) = metrics(&tracer(), Arc::default(), ActiveRequests::default());
        let recorder = endpoint.recorder();
        let one = instance(&[
            ("service.namespace", "shop"),
            ("service.name", "web"),
            ("service.instance.id", "one"),
            ("process.pid", "10"),
        ]);
        let two = instance(&[
            ("service.namespace", "shop"),
            ("service.name", "web"),
            ("service.instance.id", "two"),
            ("process.pid", "20"),
        ]);
        let get = [KeyValue::new("http.request.method", "GET")];
        record(&recorder, &one, 0.1, None, &get);
        record(&recorder, &two, 0.1, None, &get);
        record(&recorder, &two, 0.1, None, &get);
        let exposition = super::tests::get(&registry, "/metrics").into_body();
        let lines: Vec<&str> = exposition.lines().collect();
        let histogram = "http_server_request_duration_seconds";
        for expected in [
            format!(
                r#"{histogram}_count{{job="shop/web",instance="one",http_request_method="GET"}} 1"#
            ),
            format!(
                r#"{histogram}_count{{job="shop/web",instance="two",http_request_method="GET"}} 2"#
            ),
            r#"target_info{job="shop/web",instance="one",process_pid="10"} 1"#.into(),
            r#"target_info{job="shop/web",instance="two",process_pid="20"} 1"#.into(),
        ] {
            assert!(
                lines.contains(&expected.as_str()),
                "no {expected:?} in\n{exposition}"
            );
        }
        let targets = lines.iter().filter(|line| line.starts_with("target_info{"));
        assert_eq!(
            targets.count(),
            3,
            "both instances and the tracer:\n{exposition}"
        );
        assert_eq!(
            lines
                .iter()
                .filter(|line| line.starts_with("# TYPE"))
                .count(),
            lines
                .iter()
                .filter(|line| line.starts_with("# HELP"))
                .count(),
            "each family described once"
        );

        // Retired, an instance's series stay for the scrapes to come, then go.
        recorder.retire(&one);
        let exposition = super::tests::get(&registry, "/metrics").into_body();
        assert!(exposition.contains(r#"instance="one""#));
        let retired_long_ago = Instant::now() - RETIRED_SERIES_TTL;
        recorder
            .targets
            .lock()
            .get_mut(&Instance::key(&one))
            .unwrap()
            .retired_at = Some(retired_long_ago);
        let exposition = super::tests::get(&registry, "/metrics").into_body();
        assert!(!exposition.contains(r#"instance="one""#), "{exposition}");
        assert!(exposition.contains(r#"instance="two""#));
        assert_eq!(recorder.targets.lock().len(), 1);
    }
}
