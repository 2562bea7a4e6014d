//! An embedded OTLP receiver: OTLP/gRPC (trace and metrics services) and
//! OTLP/HTTP with protobuf bodies (`POST /v1/traces`, `POST /v1/metrics`),
//! both on loopback ports chosen by the caller (port 0 picks a free one).
//!
//! Every received span is counted per `service.name` (and its SERVER spans
//! apart) and, unless the sink only counts, flattened into a [`ReceivedSpan`]
//! and kept; metrics are kept as [`ReceivedMetric`]s. The store only grows
//! until [`Sink::clear`]: the benchmark clears it before each measured run.
//! A sink can also answer late, to play a slow collector.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Largest accepted export request (gRPC and HTTP).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Why the sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot listen on {addr} for OTLP/{protocol}")]
    Bind {
        addr: SocketAddr,
        protocol: &'static str,
        #[source]
        source: io::Error,
    },
}

/// An attribute value, as received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AttrValue {
    Bool(bool),
    Int(i64),
    Double(f64),
    /// Strings, and anything else (arrays, maps, bytes) in its debug form.
    Str(String),
}

impl AttrValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            AttrValue::Int(i) => Some(*i),
            _ => None,
        }
    }
}

/// Attributes by key.
pub type Attributes = BTreeMap<String, AttrValue>;

/// One received span, flattened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceivedSpan {
    /// `service.name` of the resource (empty if absent).
    pub service: String,
    pub resource: Attributes,
    pub name: String,
    /// `SERVER`, `CLIENT`, `INTERNAL`, `PRODUCER`, `CONSUMER` or `UNSPECIFIED`.
    pub kind: String,
    /// Lowercase hex.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: Attributes,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
}

/// One data point of a received metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    pub attributes: Attributes,
    /// Histograms and summaries: the number of recorded values.
    pub count: Option<u64>,
    /// Histograms and summaries: their sum.
    pub sum: Option<f64>,
    /// Gauges and sums: the value.
    pub value: Option<f64>,
    pub time_unix_ns: u64,
}

/// One received metric with its data points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceivedMetric {
    pub service: String,
    pub name: String,
    pub unit: String,
    pub points: Vec<MetricPoint>,
}

/// How the sink treats what it receives.
#[derive(Clone, Copy, Debug)]
pub struct SinkOptions {
    /// Keep every span; without, spans are only counted, which keeps the
    /// sink cheap at tens of thousands of spans per second.
    pub keep_spans: bool,
    /// Answer each trace export this late (a slow collector).
    pub reply_delay: Duration,
}

impl Default for SinkOptions {
    fn default() -> Self {
        Self {
            keep_spans: true,
            reply_delay: Duration::ZERO,
        }
    }
}

#[derive(Default)]
struct Store {
    spans: Vec<ReceivedSpan>,
    per_service: BTreeMap<String, u64>,
    server_per_service: BTreeMap<String, u64>,
    metrics: Vec<ReceivedMetric>,
}

#[derive(Clone)]
struct Shared {
    store: Arc<Mutex<Store>>,
    total: Arc<watch::Sender<u64>>,
    options: SinkOptions,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves plain data behind: keep going.
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn add_traces(&self, request: ExportTraceServiceRequest) {
        let mut added = 0;
        {
            let mut store = self.lock();
            for resource_spans in &request.resource_spans {
                let service = resource_spans
                    .resource
                    .as_ref()
                    .map(|r| service_name(&attributes(&r.attributes)))
                    .unwrap_or_default();
                let spans = resource_spans.scope_spans.iter().flat_map(|s| &s.spans);
                let (all, server) = spans.fold((0, 0), |(all, server), span| {
                    let is_server = span.kind == SpanKind::Server as i32;
                    (all + 1, server + u64::from(is_server))
                });
                *store.per_service.entry(service.clone()).or_default() += all;
                *store.server_per_service.entry(service).or_default() += server;
                added += all;
            }
            if self.options.keep_spans {
                store.spans.extend(flatten_traces(request));
            }
        }
        self.total.send_modify(|total| *total += added);
    }

    fn add_metrics(&self, request: ExportMetricsServiceRequest) {
        let metrics = flatten_metrics(request);
        self.lock().metrics.extend(metrics);
    }
}

/// A running sink; stopped by [`Sink::shutdown`] or when dropped.
pub struct Sink {
    shared: Shared,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Sink {
    /// Listens for OTLP/gRPC on `grpc` and OTLP/HTTP on `http`. Must be
    /// called inside a tokio runtime; the servers run as tasks on it.
    pub async fn start(grpc: SocketAddr, http: SocketAddr) -> Result<Sink, SinkError> {
        Self::start_with(grpc, http, SinkOptions::default()).await
    }

    /// [`Sink::start`] with other [`SinkOptions`].
    pub async fn start_with(
        grpc: SocketAddr,
        http: SocketAddr,
        options: SinkOptions,
    ) -> Result<Sink, SinkError> {
        let bind = |addr: SocketAddr, protocol: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .and_then(|l| Ok((l.local_addr()?, l)))
                .map_err(|source| SinkError::Bind {
                    addr,
                    protocol,
                    source,
                })
        };
        let (grpc_addr, grpc_listener) = bind(grpc, "gRPC").await?;
        let (http_addr, http_listener) = bind(http, "HTTP").await?;
        let shared = Shared {
            store: Arc::default(),
            total: Arc::new(watch::channel(0).0),
            options,
        };
        let (stop, stopped) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(serve_grpc(grpc_listener, shared.clone(), stopped.clone())),
            tokio::spawn(serve_http(http_listener, shared.clone(), stopped)),
        ];
        Ok(Sink {
            shared,
            grpc_addr,
            http_addr,
            stop,
            tasks,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// All spans received since the last [`Sink::clear`].
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared.lock().spans.clone()
    }

    /// Spans received from `service` since the last clear.
    pub fn span_count(&self, service: &str) -> u64 {
        self.shared
            .lock()
            .per_service
            .get(service)
            .copied()
            .unwrap_or(0)
    }

    /// SERVER spans received from `service` since the last clear.
    pub fn server_span_count(&self, service: &str) -> u64 {
        self.shared
            .lock()
            .server_per_service
            .get(service)
            .copied()
            .unwrap_or(0)
    }

    /// Spans received per service since the last clear.
    pub fn span_counts(&self) -> BTreeMap<String, u64> {
        self.shared.lock().per_service.clone()
    }

    /// Spans that match `keep`, without copying the others.
    pub fn count_spans(&self, keep: impl Fn(&ReceivedSpan) -> bool) -> u64 {
        self.shared.lock().spans.iter().filter(|s| keep(s)).count() as u64
    }

    /// All metrics received since the last clear.
    pub fn metrics(&self) -> Vec<ReceivedMetric> {
        self.shared.lock().metrics.clone()
    }

    /// Forgets every span and metric received so far.
    pub fn clear(&self) {
        *self.shared.lock() = Store::default();
        self.shared.total.send_replace(0);
    }

    /// Waits until at least `n` spans (any service) were received since the
    /// last clear; false on timeout.
    pub async fn wait_for_spans(&self, n: u64, timeout: Duration) -> bool {
        let mut total = self.shared.total.subscribe();
        tokio::time::timeout(
            crate::patience::ceiling(timeout),
            total.wait_for(|t| *t >= n),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    }

    /// Stops both servers and waits for them.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

struct Grpc(Shared);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        tokio::time::sleep(self.0.options.reply_delay).await;
        self.0.add_traces(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.add_metrics(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

async fn serve_grpc(listener: TcpListener, shared: Shared, stop: watch::Receiver<bool>) {
    let traces =
        TraceServiceServer::new(Grpc(shared.clone())).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let metrics =
        MetricsServiceServer::new(Grpc(shared)).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let result = tonic::transport::Server::builder()
        .add_service(traces)
        .add_service(metrics)
        .serve_with_incoming_shutdown(incoming, stopped(stop))
        .await;
    if let Err(e) = result {
        eprintln!("OTLP/gRPC sink stopped: {e}");
    }
}

async fn serve_http(listener: TcpListener, shared: Shared, stop: watch::Receiver<bool>) {
    let accept = async {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request| handle_http(shared.clone(), request));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    };
    tokio::select! {
        () = accept => {}
        () = stopped(stop) => {}
    }
}

async fn handle_http(
    shared: Shared,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: Bytes| {
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/x-protobuf"),
        );
        Ok(response)
    };
    let is_protobuf = request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/x-protobuf"));
    if request.method() != Method::POST {
        return reply(StatusCode::METHOD_NOT_ALLOWED, Bytes::new());
    }
    let path = request.uri().path().to_owned();
    if path != "/v1/traces" && path != "/v1/metrics" {
        return reply(StatusCode::NOT_FOUND, Bytes::new());
    }
    if !is_protobuf {
        return reply(StatusCode::UNSUPPORTED_MEDIA_TYPE, Bytes::new());
    }
    let body = match http_body_util::Limited::new(request.into_body(), MAX_MESSAGE_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => return reply(StatusCode::PAYLOAD_TOO_LARGE, Bytes::new()),
    };
    let response = if path == "/v1/traces" {
        tokio::time::sleep(shared.options.reply_delay).await;
        ExportTraceServiceRequest::decode(body).map(|r| {
            shared.add_traces(r);
            ExportTraceServiceResponse::default().encode_to_vec()
        })
    } else {
        ExportMetricsServiceRequest::decode(body).map(|r| {
            shared.add_metrics(r);
            ExportMetricsServiceResponse::default().encode_to_vec()
        })
    };
    match response {
        Ok(bytes) => reply(StatusCode::OK, bytes.into()),
        Err(_) => reply(StatusCode::BAD_REQUEST, Bytes::new()),
    }
}

fn attributes(kvs: &[KeyValue]) -> Attributes {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => AttrValue::Str(s.clone()),
                Some(any_value::Value::BoolValue(b)) => AttrValue::Bool(*b),
                Some(any_value::Value::IntValue(i)) => AttrValue::Int(*i),
                Some(any_value::Value::DoubleValue(d)) => AttrValue::Double(*d),
                Some(other) => AttrValue::Str(format!("{other:?}")),
                None => AttrValue::Str(String::new()),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn service_name(resource: &Attributes) -> String {
    resource
        .get("service.name")
        .and_then(AttrValue::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn kind_name(kind: i32) -> String {
    SpanKind::try_from(kind)
        .map_or("UNSPECIFIED", |k| match k {
            SpanKind::Server => "SERVER",
            SpanKind::Client => "CLIENT",
            SpanKind::Internal => "INTERNAL",
            SpanKind::Producer => "PRODUCER",
            SpanKind::Consumer => "CONSUMER",
            SpanKind::Unspecified => "UNSPECIFIED",
        })
        .to_owned()
}

fn flatten_traces(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service = service_name(&resource);
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            out.push(ReceivedSpan {
                service: service.clone(),
                resource: resource.clone(),
                name: span.name,
                kind: kind_name(span.kind),
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
                start_unix_ns: span.start_time_unix_nano,
                end_unix_ns: span.end_time_unix_nano,
                attributes: attributes(&span.attributes),
                status_code: span.status.map_or(0, |s| s.code),
            });
        }
    }
    out
}

fn flatten_metrics(request: ExportMetricsServiceRequest) -> Vec<ReceivedMetric> {
    let mut out = Vec::new();
    for resource_metrics in request.resource_metrics {
        let resource = resource_metrics
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service = service_name(&resource);
        for metric in resource_metrics
            .scope_metrics
            .into_iter()
            .flat_map(|s| s.metrics)
        {
            let number =
                |p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint| MetricPoint {
                    attributes: attributes(&p.attributes),
                    count: None,
                    sum: None,
                    value: p.value.map(|v| match v {
                        number_data_point::Value::AsDouble(d) => d,
                        number_data_point::Value::AsInt(i) => i as f64,
                    }),
                    time_unix_ns: p.time_unix_nano,
                };
            let counted =
                |attrs: &[KeyValue], count: u64, sum: Option<f64>, time_unix_ns: u64| MetricPoint {
                    attributes: attributes(attrs),
                    count: Some(count),
                    sum,
                    value: None,
                    time_unix_ns,
                };
            let points = match &metric.data {
                Some(Data::Gauge(g)) => g.data_points.iter().map(number).collect(),
                Some(Data::Sum(s)) => s.data_points.iter().map(number).collect(),
                Some(Data::Histogram(h)) => h
                    .data_points
                    .iter()
                    .map(|p| counted(&p.attributes, p.count, p.sum, p.time_unix_nano))
                    .collect(),
                Some(Data::ExponentialHistogram(h)) => h
                    .data_points
                    .iter()
                    .map(|p| counted(&p.attributes, p.count, p.sum, p.time_unix_nano))
                    .collect(),
                Some(Data::Summary(s)) => s
                    .data_points
                    .iter()
                    .map(|p| counted(&p.attributes, p.count, Some(p.sum), p.time_unix_nano))
                    .collect(),
                None => Vec::new(),
            };
            out.push(ReceivedMetric {
                service: service.clone(),
                name: metric.name,
                unit: metric.unit,
                points,
            });
        }
    }
    out
}
