//! An embedded OTLP receiver: OTLP/gRPC (trace and metrics services) and
//! OTLP/HTTP with protobuf bodies (`POST /v1/traces`, `POST /v1/metrics`),
//! both on loopback ports chosen by the caller (port 0 picks a free one),
//! plain or, given a certificate, over TLS; both accept gzip-compressed
//! exports.
//!
//! Every received span is counted per `service.name` (and its SERVER spans
//! apart) and, unless the sink only counts, flattened into a [`ReceivedSpan`]
//! and kept; metrics are kept as [`ReceivedMetric`]s, and each export
//! request's headers as a [`ReceivedExport`]; trace export requests
//! themselves, decoded, if asked. The store only grows until
//! [`Sink::clear`]: the benchmark clears it before each measured run. A sink
//! can also answer late, to play a slow collector.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
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
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{
    self,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
};
use tonic::codec::CompressionEncoding;
use tonic::transport::{Identity, ServerTlsConfig};

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
    #[error("cannot serve TLS with the certificate and key given: {0}")]
    Tls(String),
}

/// An attribute value, as received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AttrValue {
    Bool(bool),
    Int(i64),
    Double(f64),
    /// Strings, and anything else (maps, bytes, mixed arrays) in its debug form.
    Str(String),
    /// An array of strings (`http.request.header.<name>`).
    Strs(Vec<String>),
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

    pub fn as_strs(&self) -> Option<&[String]> {
        match self {
            AttrValue::Strs(values) => Some(values),
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

/// What an export request carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
}

/// How an export request came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    Http,
}

/// One export request as it arrived, whatever it held.
#[derive(Clone, Debug)]
pub struct ReceivedExport {
    pub signal: Signal,
    pub transport: Transport,
    /// Request headers (gRPC: metadata) by lowercase name; a repeated
    /// header's values joined with ", ".
    pub headers: BTreeMap<String, String>,
    /// The body came gzip-compressed (`grpc-encoding`, `Content-Encoding`).
    pub gzip: bool,
    pub received_at: Instant,
}

/// A certificate chain and its private key, both PEM, to serve TLS with.
#[derive(Clone, Debug)]
pub struct SinkTls {
    pub certificate_pem: String,
    pub key_pem: String,
}

/// How the sink treats what it receives.
#[derive(Clone, Debug)]
pub struct SinkOptions {
    /// Keep every span; without, spans are only counted, which keeps the
    /// sink cheap at tens of thousands of spans per second.
    pub keep_spans: bool,
    /// Also keep every trace export request as decoded, for comparing
    /// whole messages.
    pub keep_requests: bool,
    /// Answer each trace export this late (a slow collector).
    pub reply_delay: Duration,
    /// Refuse this many spans of each trace export (at most all of them)
    /// in a partial success; the others are received as usual.
    pub reject_spans: usize,
    /// Serve both transports over TLS with this identity.
    pub tls: Option<SinkTls>,
}

impl Default for SinkOptions {
    fn default() -> Self {
        Self {
            keep_spans: true,
            keep_requests: false,
            reply_delay: Duration::ZERO,
            reject_spans: 0,
            tls: None,
        }
    }
}

#[derive(Default)]
struct Store {
    spans: Vec<ReceivedSpan>,
    per_service: BTreeMap<String, u64>,
    server_per_service: BTreeMap<String, u64>,
    metrics: Vec<ReceivedMetric>,
    exports: Vec<ReceivedExport>,
    trace_requests: Vec<ExportTraceServiceRequest>,
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

    /// Keeps what it does not reject and answers.
    fn add_traces(&self, mut request: ExportTraceServiceRequest) -> ExportTraceServiceResponse {
        let rejected = reject_spans(&mut request, self.options.reject_spans);
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
            if self.options.keep_requests {
                store.trace_requests.push(request.clone());
            }
            if self.options.keep_spans {
                store.spans.extend(flatten_traces(request));
            }
        }
        self.total.send_modify(|total| *total += added);
        ExportTraceServiceResponse {
            partial_success: (rejected > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: rejected as i64,
                error_message: format!("the sink rejects {rejected} spans an export"),
            }),
        }
    }

    fn add_metrics(&self, request: ExportMetricsServiceRequest) {
        let metrics = flatten_metrics(request);
        self.lock().metrics.extend(metrics);
    }

    fn add_export(&self, signal: Signal, transport: Transport, headers: &HeaderMap, gzip: bool) {
        let mut by_name: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            by_name
                .entry(name.as_str().to_owned())
                .and_modify(|values| {
                    values.push_str(", ");
                    values.push_str(&value);
                })
                .or_insert_with(|| value.into_owned());
        }
        self.lock().exports.push(ReceivedExport {
            signal,
            transport,
            headers: by_name,
            gzip,
            received_at: Instant::now(),
        });
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
        let mut grpc_server = tonic::transport::Server::builder();
        let mut http_tls = None;
        if let Some(tls) = &options.tls {
            let identity = Identity::from_pem(&tls.certificate_pem, &tls.key_pem);
            grpc_server = grpc_server
                .tls_config(ServerTlsConfig::new().identity(identity))
                .map_err(|err| SinkError::Tls(err.to_string()))?;
            http_tls = Some(tls_acceptor(tls)?);
        }
        let (grpc_addr, grpc_listener) = bind(grpc, "gRPC").await?;
        let (http_addr, http_listener) = bind(http, "HTTP").await?;
        let shared = Shared {
            store: Arc::default(),
            total: Arc::new(watch::channel(0).0),
            options,
        };
        let (stop, stopped) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(serve_grpc(
                grpc_server,
                grpc_listener,
                shared.clone(),
                stopped.clone(),
            )),
            tokio::spawn(serve_http(http_listener, http_tls, shared.clone(), stopped)),
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

    /// Every export request received since the last clear, in order.
    pub fn exports(&self) -> Vec<ReceivedExport> {
        self.shared.lock().exports.clone()
    }

    /// Every trace export request since the last clear, in order, if
    /// [`SinkOptions::keep_requests`].
    pub fn trace_requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.shared.lock().trace_requests.clone()
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
        self.0.add_grpc_export(Signal::Traces, request.metadata());
        tokio::time::sleep(self.0.options.reply_delay).await;
        let response = self.0.add_traces(request.into_inner());
        Ok(tonic::Response::new(response))
    }
}

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.add_grpc_export(Signal::Metrics, request.metadata());
        self.0.add_metrics(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

impl Shared {
    fn add_grpc_export(&self, signal: Signal, metadata: &tonic::metadata::MetadataMap) {
        let headers = metadata.clone().into_headers();
        let gzip = headers
            .get("grpc-encoding")
            .is_some_and(|encoding| encoding == "gzip");
        self.add_export(signal, Transport::Grpc, &headers, gzip);
    }
}

async fn serve_grpc(
    mut server: tonic::transport::Server,
    listener: TcpListener,
    shared: Shared,
    stop: watch::Receiver<bool>,
) {
    let traces = TraceServiceServer::new(Grpc(shared.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .accept_compressed(CompressionEncoding::Gzip);
    let metrics = MetricsServiceServer::new(Grpc(shared))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .accept_compressed(CompressionEncoding::Gzip);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let result = server
        .add_service(traces)
        .add_service(metrics)
        .serve_with_incoming_shutdown(incoming, stopped(stop))
        .await;
    if let Err(e) = result {
        eprintln!("OTLP/gRPC sink stopped: {e}");
    }
}

fn tls_acceptor(tls: &SinkTls) -> Result<TlsAcceptor, SinkError> {
    let invalid = |err: &dyn std::fmt::Display| SinkError::Tls(err.to_string());
    let chain = CertificateDer::pem_slice_iter(tls.certificate_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| invalid(&err))?;
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).map_err(|err| invalid(&err))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|config| config.with_no_client_auth().with_single_cert(chain, key))
    .map_err(|err| invalid(&err))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn serve_http(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Shared,
    stop: watch::Receiver<bool>,
) {
    let accept = async {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (shared, tls) = (shared.clone(), tls.clone());
            tokio::spawn(async move {
                match tls {
                    // A failed handshake is the client's problem: it sees it.
                    Some(tls) => {
                        if let Ok(stream) = tls.accept(stream).await {
                            serve_http_connection(stream, shared).await;
                        }
                    }
                    None => serve_http_connection(stream, shared).await,
                }
            });
        }
    };
    tokio::select! {
        () = accept => {}
        () = stopped(stop) => {}
    }
}

async fn serve_http_connection(
    stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    shared: Shared,
) {
    let service = hyper::service::service_fn(move |request| handle_http(shared.clone(), request));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
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
    let gzip = match request.headers().get(hyper::header::CONTENT_ENCODING) {
        None => false,
        Some(encoding) if encoding == "gzip" => true,
        Some(_) => return reply(StatusCode::UNSUPPORTED_MEDIA_TYPE, Bytes::new()),
    };
    if !is_protobuf {
        return reply(StatusCode::UNSUPPORTED_MEDIA_TYPE, Bytes::new());
    }
    let headers = request.headers().clone();
    let body = match http_body_util::Limited::new(request.into_body(), MAX_MESSAGE_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => return reply(StatusCode::PAYLOAD_TOO_LARGE, Bytes::new()),
    };
    let body = if gzip {
        match gunzip(&body) {
            Ok(body) => body,
            Err(status) => return reply(status, Bytes::new()),
        }
    } else {
        body
    };
    let bad_request = || reply(StatusCode::BAD_REQUEST, Bytes::new());
    let answer = if path == "/v1/traces" {
        let Ok(traces) = ExportTraceServiceRequest::decode(body) else {
            return bad_request();
        };
        shared.add_export(Signal::Traces, Transport::Http, &headers, gzip);
        tokio::time::sleep(shared.options.reply_delay).await;
        shared.add_traces(traces).encode_to_vec()
    } else {
        let Ok(metrics) = ExportMetricsServiceRequest::decode(body) else {
            return bad_request();
        };
        shared.add_export(Signal::Metrics, Transport::Http, &headers, gzip);
        shared.add_metrics(metrics);
        ExportMetricsServiceResponse::default().encode_to_vec()
    };
    reply(StatusCode::OK, answer.into())
}

/// A gzip body, decompressed within the size limit.
fn gunzip(body: &[u8]) -> Result<Bytes, StatusCode> {
    use std::io::Read as _;
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(MAX_MESSAGE_BYTES as u64 + 1)
        .read_to_end(&mut plain)
        .map_err(|_| StatusCode::BAD_REQUEST)?;
    if plain.len() > MAX_MESSAGE_BYTES {
        return Err(StatusCode::PAYLOAD_TOO_LARGE);
    }
    Ok(plain.into())
}

/// Removes up to `count` spans, the first ones; how many it removed.
fn reject_spans(request: &mut ExportTraceServiceRequest, count: usize) -> usize {
    let mut rejected = 0;
    let scope_spans = request
        .resource_spans
        .iter_mut()
        .flat_map(|r| &mut r.scope_spans);
    for scope_spans in scope_spans {
        let here = (count - rejected).min(scope_spans.spans.len());
        scope_spans.spans.drain(..here);
        rejected += here;
    }
    rejected
}

fn attributes(kvs: &[KeyValue]) -> Attributes {
    kvs.iter()
        .map(|kv| {
            let value = kv.value.as_ref().and_then(|v| v.value.as_ref());
            let value = match value {
                Some(any_value::Value::StringValue(s)) => AttrValue::Str(s.clone()),
                Some(any_value::Value::BoolValue(b)) => AttrValue::Bool(*b),
                Some(any_value::Value::IntValue(i)) => AttrValue::Int(*i),
                Some(any_value::Value::DoubleValue(d)) => AttrValue::Double(*d),
                Some(any_value::Value::ArrayValue(array)) => strings(&array.values)
                    .map_or_else(|| AttrValue::Str(format!("{array:?}")), AttrValue::Strs),
                Some(other) => AttrValue::Str(format!("{other:?}")),
                None => AttrValue::Str(String::new()),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

/// The values of an array, if every one is a string.
fn strings(values: &[opentelemetry_proto::tonic::common::v1::AnyValue]) -> Option<Vec<String>> {
    values
        .iter()
        .map(|value| match &value.value {
            Some(any_value::Value::StringValue(s)) => Some(s.clone()),
            _ => None,
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
