//! The span export as it was before [`super::encode`]: each request built
//! into three OpenTelemetry SDK `SpanData` and sent by opentelemetry-otlp's
//! `SpanExporter`, one per resource. Kept as the reference that what a
//! collector receives from the encoder and [`super::otlp::TraceClient`] is
//! compared with, message for message, over both transports: both sides
//! export to a real OTLP receiver ([`harness::sink::Sink`]) and the
//! requests it decoded must be equal. The ids are the same by construction
//! (one deterministic id sequence, consumed in the same order by both),
//! the times by sharing one [`Clock`].
use std::{
    borrow::Cow,
    net::{Ipv6Addr, SocketAddr},
    str::FromStr as _,
    sync::{Arc, atomic::AtomicU64, atomic::Ordering::Relaxed},
    time::Duration,
};

use harness::sink::{Sink, SinkOptions, Transport};
use http::HeaderMap;
use opentelemetry::{
    Array, InstrumentationScope, KeyValue, StringValue, Value,
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
};
use opentelemetry_otlp::{
    Compression, Protocol, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_sdk::{
    Resource,
    trace::{IdGenerator, SpanData, SpanEvents, SpanExporter as _, SpanLinks},
};
use tracer_common::{AF_INET, AF_INET6, ConnMeta};

use super::{
    clock::Clock,
    delivery::Delivery,
    encode::EncodedSpans,
    exporter::OtlpProtocol,
    otel_env::SignalExport,
    otlp::TraceClient,
    routes::{Resolved, RouteConfig, Routes},
    spans::{SpanEncoder, peer},
};
use crate::{
    assembly::CompletedRequest, events::Side, http::RequestHead, stats::Stats,
    trace_context::SpanIds,
};

/// Ids from a fixed sequence (splitmix64: every byte of them varies).
#[derive(Debug, Default)]
struct SequentialIds(AtomicU64);

impl SequentialIds {
    fn next(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(0x9e37_79b9_7f4a_7c15, Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl IdGenerator for SequentialIds {
    fn new_trace_id(&self) -> TraceId {
        TraceId::from(u128::from(self.next()) << 64 | u128::from(self.next()))
    }

    fn new_span_id(&self) -> SpanId {
        SpanId::from(self.next())
    }
}

/// `spans::metric_attributes` as it was.
fn metric_attributes(request: &CompletedRequest) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("http.request.method", request.request.method.clone()),
        KeyValue::new("http.response.status_code", i64::from(request.status)),
        KeyValue::new("url.scheme", "http"),
        KeyValue::new("network.protocol.name", "http"),
        KeyValue::new(
            "network.protocol.version",
            if request.request.minor_version == 0 {
                "1.0"
            } else {
                "1.1"
            },
        ),
    ];
    if let Some(meta) = request.meta {
        attributes.push(KeyValue::new("server.port", i64::from(meta.local_port)));
    }
    if request.status >= 500 {
        attributes.push(KeyValue::new("error.type", request.status.to_string()));
    }
    attributes
}

/// `spans::push_captured_headers` as it was.
fn push_captured_headers(attributes: &mut Vec<KeyValue>, headers: &[(String, String)]) {
    let mut names: Vec<&str> = Vec::new();
    for (name, value) in headers {
        if name == "user-agent" && !names.contains(&"user-agent") {
            attributes.push(KeyValue::new("user_agent.original", value.clone()));
        }
        if !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    for name in names {
        let values: Vec<StringValue> = headers
            .iter()
            .filter(|(other, _)| other == name)
            .map(|(_, value)| value.clone().into())
            .collect();
        attributes.push(KeyValue::new(
            format!("http.request.header.{name}"),
            Value::Array(Array::String(values)),
        ));
    }
}

/// `spans::SpanBuilder` as it was, with its ids from `ids`.
struct SpanBuilder<'a> {
    ids: &'a SequentialIds,
    scope: InstrumentationScope,
    clock: Clock,
}

impl SpanBuilder<'_> {
    fn spans(&self, request: &CompletedRequest, resolved: &Resolved) -> [SpanData; 3] {
        let mut attributes = metric_attributes(request);
        let ids = &request.ids;
        let trace_id = TraceId::from_bytes(ids.trace_id);
        let server_id = SpanId::from_bytes(ids.span_id);
        let parent = ids
            .parent_span_id
            .map_or(SpanId::INVALID, SpanId::from_bytes);
        let trace_state = match &ids.trace_state {
            Some(state) => TraceState::from_str(state).expect("a valid tracestate"),
            None => TraceState::default(),
        };
        if let Some(route) = &resolved.route {
            attributes.push(KeyValue::new("http.route", route.clone()));
        }
        attributes.push(KeyValue::new("url.path", request.request.path.clone()));
        attributes.push(KeyValue::new("process.pid", i64::from(request.tgid)));
        if let Some((address, port)) = peer(request) {
            attributes.push(KeyValue::new("client.address", address.to_string()));
            attributes.push(KeyValue::new("client.port", i64::from(port)));
        }
        push_captured_headers(&mut attributes, &request.captured_headers);
        let status = if request.status >= 500 {
            Status::error(format!("HTTP {}", request.status))
        } else {
            Status::Unset
        };
        let server = self.span(
            (trace_id, server_id, parent),
            SpanKind::Server,
            resolved.span_name.to_string().into(),
            (request.start_ns, request.end_ns),
            attributes,
            status,
        );
        let server = SpanData {
            parent_span_is_remote: ids.remote_parent,
            span_context: SpanContext::new(
                trace_id,
                server_id,
                TraceFlags::SAMPLED,
                false,
                trace_state.clone(),
            ),
            ..server
        };
        let child_context = |span_id| {
            SpanContext::new(
                trace_id,
                span_id,
                TraceFlags::SAMPLED,
                false,
                trace_state.clone(),
            )
        };
        let queue = self.span(
            (trace_id, self.ids.new_span_id(), server_id),
            SpanKind::Internal,
            "in queue".into(),
            (request.start_ns, request.first_read_ns),
            Vec::new(),
            Status::Unset,
        );
        let processing = self.span(
            (trace_id, self.ids.new_span_id(), server_id),
            SpanKind::Internal,
            "processing".into(),
            (request.first_read_ns, request.end_ns),
            Vec::new(),
            Status::Unset,
        );
        let queue = SpanData {
            span_context: child_context(queue.span_context.span_id()),
            ..queue
        };
        let processing = SpanData {
            span_context: child_context(processing.span_context.span_id()),
            ..processing
        };
        [server, queue, processing]
    }

    fn span(
        &self,
        (trace_id, span_id, parent_span_id): (TraceId, SpanId, SpanId),
        span_kind: SpanKind,
        name: Cow<'static, str>,
        (start_ns, end_ns): (u64, u64),
        attributes: Vec<KeyValue>,
        status: Status,
    ) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                trace_id,
                span_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id,
            parent_span_is_remote: false,
            span_kind,
            name,
            start_time: self.clock.system_time(start_ns),
            end_time: self.clock.system_time(end_ns.max(start_ns)),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        }
    }
}

fn ipv4(address: [u8; 4]) -> [u8; 16] {
    let mut peer = [0; 16];
    peer[..4].copy_from_slice(&address);
    peer
}

/// Requests that take every branch of the span builder: both address
/// families (and an IPv4-mapped IPv6 peer), no connection metadata, a
/// server error, HTTP/1.0, no route, repeated and non-ASCII headers, and
/// times out of order.
fn requests() -> Vec<CompletedRequest> {
    let meta = |family, peer_addr| {
        Some(ConnMeta {
            family,
            local_port: 8000,
            peer_port: 40_000,
            _pad: 0,
            peer_addr,
        })
    };
    let request = |method: &str, path: &str, status| CompletedRequest {
        tgid: 4242,
        side: Side::Server,
        ids: SpanIds::root(),
        response_cut_short: false,
        tls: false,
        request: RequestHead {
            method: method.into(),
            path: path.into(),
            minor_version: 1,
            head_len: 40,
            host: None,
        },
        status,
        start_ns: 1_000_000,
        first_read_ns: 1_000_500,
        end_ns: 1_009_000,
        meta: meta(AF_INET, ipv4([127, 0, 0, 1])),
        response_bytes: 100,
        response_body_bytes: None,
        captured_headers: Vec::new(),
    };
    let headers = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    };
    let mut http_1_0 = request("POST", "/orders/9f8e7d6c5b4a/items", 503);
    http_1_0.request.minor_version = 0;
    // A request that came with a `traceparent` and a `tracestate`.
    http_1_0.ids.parent_span_id = Some([0x5a; 8]);
    http_1_0.ids.remote_parent = true;
    http_1_0.ids.remote_sampled = Some(true);
    http_1_0.ids.trace_state = Some("vendor=opaque,other=1".into());
    vec![
        request("GET", "/users/42", 200),
        CompletedRequest {
            meta: meta(
                AF_INET6,
                "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets(),
            ),
            captured_headers: headers(&[
                ("x-tenant", "a"),
                ("user-agent", "curl/8.5"),
                ("x-tenant", ""),
                ("x-name", "Zoë"),
                ("user-agent", "second"),
            ]),
            ..http_1_0
        },
        CompletedRequest {
            meta: None,
            first_read_ns: 999_000,
            end_ns: 998_000,
            ..request("OPTIONS", "*", 404)
        },
        CompletedRequest {
            meta: meta(
                AF_INET6,
                "::ffff:10.0.0.7".parse::<Ipv6Addr>().unwrap().octets(),
            ),
            first_read_ns: 1_020_000,
            ..request("DELETE", "/", 599)
        },
    ]
}

/// Two instances' resources, one with a schema URL.
fn resources() -> [Resource; 2] {
    let attributes = |id: &str, pid: i64| {
        [
            KeyValue::new("service.name", "web"),
            KeyValue::new("service.instance.id", id.to_owned()),
            KeyValue::new("process.pid", pid),
            KeyValue::new("host.name", "web-1"),
            KeyValue::new("tracer.test", true),
        ]
    };
    [
        Resource::builder_empty()
            .with_attributes(attributes("one", 10))
            .build(),
        Resource::builder_empty()
            .with_schema_url(
                attributes("two", 20),
                "https://opentelemetry.io/schemas/1.26.0",
            )
            .build(),
    ]
}

fn settings(sink: &Sink, protocol: OtlpProtocol, gzip: bool) -> SignalExport {
    let endpoint = match protocol {
        OtlpProtocol::Grpc => format!("http://{}", sink.grpc_addr()),
        OtlpProtocol::HttpProtobuf => format!("http://{}/v1/traces", sink.http_addr()),
    };
    SignalExport {
        protocol,
        endpoint,
        headers: HeaderMap::new(),
        compression: gzip.then_some(Compression::Gzip),
        timeout: Duration::from_secs(10),
        ca_certificates: None,
    }
}

/// Each resource's requests (all of them, routes resolved in order) as the
/// SDK exported them, one export per resource.
async fn export_the_old_way(
    settings: &SignalExport,
    clock: Clock,
    resources: &[Resource],
    requests: &[CompletedRequest],
) {
    let ids = SequentialIds::default();
    let builder = SpanBuilder {
        ids: &ids,
        scope: InstrumentationScope::builder("tracer")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
        clock,
    };
    let mut routes = Routes::new(RouteConfig::default(), Arc::new(Stats::default()));
    for resource in resources {
        let spans: Vec<SpanData> = requests
            .iter()
            .flat_map(|request| builder.spans(request, &routes.resolve(request)))
            .collect();
        let compression = settings.compression;
        let built = match settings.protocol {
            OtlpProtocol::Grpc => {
                let builder = SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(&settings.endpoint);
                match compression {
                    Some(compression) => builder.with_compression(compression).build(),
                    None => builder.build(),
                }
            }
            OtlpProtocol::HttpProtobuf => {
                let builder = SpanExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_endpoint(&settings.endpoint);
                match compression {
                    Some(compression) => builder.with_compression(compression).build(),
                    None => builder.build(),
                }
            }
        };
        let mut exporter = built.expect("an SDK exporter");
        exporter.set_resource(resource);
        // Over HTTP the SDK's client blocks: not on a runtime thread.
        tokio::task::spawn_blocking(move || futures_executor::block_on(exporter.export(spans)))
            .await
            .expect("the export ran")
            .expect("the SDK exported");
    }
}

/// The same, encoded and delivered as the tracer does it now.
async fn export_the_new_way(
    settings: &SignalExport,
    clock: Clock,
    resources: &[Resource],
    requests: &[CompletedRequest],
) {
    let stats = Arc::new(Stats::default());
    let mut encoder = SpanEncoder::with_ids(clock, SequentialIds::default());
    let client = TraceClient::new(settings).expect("a client");
    let mut delivery = Delivery::new(client, stats.clone(), 1_000);
    let mut routes = Routes::new(RouteConfig::default(), stats.clone());
    for resource in resources {
        let instance = Arc::new(super::instance::Instance {
            service: 0,
            resource: resource.clone(),
        });
        let mut batch = EncodedSpans::default();
        for request in requests {
            encoder.push(request, &routes.resolve(request), &mut batch);
        }
        delivery.push(&instance, batch);
        while delivery.busy() {
            delivery.finished().await;
        }
        assert!(delivery.is_empty(), "an export failed");
    }
    let spans = (resources.len() * requests.len() * 3) as u64;
    assert_eq!(stats.spans_exported.load(Relaxed), spans);
}

async fn received(
    protocol: OtlpProtocol,
    gzip: bool,
    export: impl AsyncFnOnce(&SignalExport),
) -> Vec<ExportTraceServiceRequest> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let options = SinkOptions {
        keep_requests: true,
        ..SinkOptions::default()
    };
    let sink = Sink::start_with(loopback, loopback, options)
        .await
        .expect("a sink");
    export(&settings(&sink, protocol, gzip)).await;
    let transport = match protocol {
        OtlpProtocol::Grpc => Transport::Grpc,
        OtlpProtocol::HttpProtobuf => Transport::Http,
    };
    for export in sink.exports() {
        assert_eq!((export.transport, export.gzip), (transport, gzip));
    }
    let requests = sink.trace_requests();
    sink.shutdown().await;
    requests
}

async fn same_as_before(protocol: OtlpProtocol, gzip: bool) {
    let (clock, resources, requests) = (Clock::new(), resources(), requests());
    let before = received(protocol, gzip, async |settings| {
        export_the_old_way(settings, clock, &resources, &requests).await
    })
    .await;
    let now = received(protocol, gzip, async |settings| {
        export_the_new_way(settings, clock, &resources, &requests).await
    })
    .await;
    assert_eq!(before.len(), resources.len(), "one export per resource");
    assert_eq!(now.len(), before.len());
    for (now, before) in now.iter().zip(&before) {
        let spans = |request: &ExportTraceServiceRequest| {
            let spans = request.resource_spans.iter().flat_map(|r| &r.scope_spans);
            spans.flat_map(|s| s.spans.clone()).collect::<Vec<_>>()
        };
        assert_eq!(spans(now).len(), requests.len() * 3);
        for (index, (now, before)) in spans(now).iter().zip(spans(before)).enumerate() {
            assert_eq!(*now, before, "span {index}");
        }
        assert_eq!(now, before);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_gzip_spans_are_the_sdk_s() {
    same_as_before(OtlpProtocol::Grpc, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_spans_are_the_sdk_s() {
    same_as_before(OtlpProtocol::Grpc, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_gzip_spans_are_the_sdk_s() {
    same_as_before(OtlpProtocol::HttpProtobuf, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_spans_are_the_sdk_s() {
    same_as_before(OtlpProtocol::HttpProtobuf, false).await;
}
