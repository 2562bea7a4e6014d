//! The OTLP sink receives spans and metrics over gRPC and HTTP/protobuf,
//! gzip-compressed or not, and records each export's headers.

use std::time::Duration;

use harness::sink::{AttrValue, Signal, Sink, Transport};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    Histogram, HistogramDataPoint, Metric, ResourceMetrics, ScopeMetrics, metric,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::codec::CompressionEncoding;

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

fn resource(service: &str) -> Option<Resource> {
    Some(Resource {
        attributes: vec![kv(
            "service.name",
            any_value::Value::StringValue(service.into()),
        )],
        ..Resource::default()
    })
}

fn traces(service: &str, n: usize) -> ExportTraceServiceRequest {
    let spans = (0..n)
        .map(|i| Span {
            trace_id: vec![0xab; 16],
            span_id: vec![i as u8 + 1; 8],
            name: "GET /work".into(),
            kind: 2, // SERVER
            start_time_unix_nano: 1_000 + i as u64,
            end_time_unix_nano: 2_000 + i as u64,
            attributes: vec![
                kv("http.response.status_code", any_value::Value::IntValue(500)),
                kv("url.path", any_value::Value::StringValue("/work".into())),
            ],
            status: Some(Status {
                code: 2,
                ..Status::default()
            }),
            ..Span::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource(service),
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

fn metrics(service: &str) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(service),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "http.server.request.duration".into(),
                    unit: "s".into(),
                    data: Some(metric::Data::Histogram(Histogram {
                        data_points: vec![HistogramDataPoint {
                            attributes: vec![kv(
                                "http.request.method",
                                any_value::Value::StringValue("GET".into()),
                            )],
                            count: 7,
                            sum: Some(0.5),
                            ..HistogramDataPoint::default()
                        }],
                        aggregation_temporality: 2,
                    })),
                    ..Metric::default()
                }],
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    }
}

async fn start() -> Sink {
    let any = "127.0.0.1:0".parse().expect("addr");
    Sink::start(any, any).await.expect("start sink")
}

#[tokio::test]
async fn grpc_spans_and_metrics() {
    let sink = start().await;
    let endpoint = format!("http://{}", sink.grpc_addr());
    let mut client = TraceServiceClient::connect(endpoint.clone())
        .await
        .expect("connect");
    client
        .export(traces("flask-ebpf", 3))
        .await
        .expect("export");
    client
        .export(traces("flask-otel", 2))
        .await
        .expect("export");
    assert!(sink.wait_for_spans(5, Duration::from_secs(5)).await);
    assert_eq!(sink.span_count("flask-ebpf"), 3);
    assert_eq!(sink.span_count("flask-otel"), 2);

    let span = &sink.spans()[0];
    assert_eq!(span.service, "flask-ebpf");
    assert_eq!(span.name, "GET /work");
    assert_eq!(span.kind, "SERVER");
    assert_eq!(span.trace_id, "ab".repeat(16));
    assert_eq!(span.span_id, "01".repeat(8));
    assert_eq!(span.parent_span_id, "");
    assert_eq!((span.start_unix_ns, span.end_unix_ns), (1_000, 2_000));
    assert_eq!(
        span.attributes["http.response.status_code"].as_i64(),
        Some(500)
    );
    assert_eq!(span.attributes["url.path"], AttrValue::Str("/work".into()));
    assert_eq!(span.status_code, 2);

    let mut client = MetricsServiceClient::connect(endpoint)
        .await
        .expect("connect");
    client.export(metrics("flask-ebpf")).await.expect("export");
    let received = sink.metrics();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].name, "http.server.request.duration");
    assert_eq!(received[0].points[0].count, Some(7));
    assert_eq!(received[0].points[0].sum, Some(0.5));
    assert_eq!(
        received[0].points[0].attributes["http.request.method"].as_str(),
        Some("GET")
    );

    sink.clear();
    assert_eq!(sink.span_count("flask-ebpf"), 0);
    assert!(!sink.wait_for_spans(1, Duration::from_millis(50)).await);
    sink.shutdown().await;
}

async fn post(addr: std::net::SocketAddr, path: &str, content_type: &str, body: &[u8]) -> String {
    post_with_headers(
        addr,
        path,
        &format!("Content-Type: {content_type}\r\n"),
        body,
    )
    .await
}

/// A POST with `headers` (each line ending in CRLF) and `body`.
async fn post_with_headers(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &str,
    body: &[u8],
) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.write_all(body).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok();
    response
}

#[tokio::test]
async fn http_protobuf_spans_and_metrics() {
    let sink = start().await;
    let addr = sink.http_addr();
    let response = post(
        addr,
        "/v1/traces",
        "application/x-protobuf",
        &traces("svc", 4).encode_to_vec(),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(sink.span_count("svc"), 4);
    let response = post(
        addr,
        "/v1/metrics",
        "application/x-protobuf",
        &metrics("svc").encode_to_vec(),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(sink.metrics().len(), 1);

    let response = post(addr, "/v1/traces", "application/json", b"{}").await;
    assert!(response.starts_with("HTTP/1.1 415"), "{response}");
    let response = post(
        addr,
        "/v1/traces",
        "application/x-protobuf",
        b"\xff\xff\xff",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    let response = post(addr, "/v1/logs", "application/x-protobuf", b"").await;
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    sink.shutdown().await;
}

#[tokio::test]
async fn the_headers_and_gzip_encoding_of_each_export_are_recorded() {
    use std::io::Write as _;
    let sink = start().await;
    let mut client = TraceServiceClient::connect(format!("http://{}", sink.grpc_addr()))
        .await
        .expect("connect")
        .send_compressed(CompressionEncoding::Gzip);
    let mut request = tonic::Request::new(traces("svc", 2));
    request
        .metadata_mut()
        .insert("x-api-key", "grpc-key".parse().expect("ASCII"));
    client.export(request).await.expect("gzip export");

    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(&metrics("svc").encode_to_vec())
        .expect("compress");
    let body = gzip.finish().expect("compress");
    let headers = "Content-Type: application/x-protobuf\r\nContent-Encoding: gzip\r\n\
                   X-Api-Key: http-key\r\n";
    let response = post_with_headers(sink.http_addr(), "/v1/metrics", headers, &body).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let plain = post(
        sink.http_addr(),
        "/v1/traces",
        "application/x-protobuf",
        &traces("svc", 1).encode_to_vec(),
    )
    .await;
    assert!(plain.starts_with("HTTP/1.1 200"), "{plain}");

    let seen: Vec<_> = sink
        .exports()
        .into_iter()
        .map(|export| {
            let key = export.headers.get("x-api-key").cloned();
            (export.signal, export.transport, export.gzip, key)
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                Signal::Traces,
                Transport::Grpc,
                true,
                Some("grpc-key".into())
            ),
            (
                Signal::Metrics,
                Transport::Http,
                true,
                Some("http-key".into())
            ),
            (Signal::Traces, Transport::Http, false, None),
        ]
    );
    assert_eq!(sink.span_count("svc"), 3);
    assert_eq!(sink.metrics()[0].points[0].count, Some(7));

    let garbage = "Content-Type: application/x-protobuf\r\nContent-Encoding: gzip\r\n";
    let response = post_with_headers(sink.http_addr(), "/v1/traces", garbage, b"not gzip").await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    let brotli = "Content-Type: application/x-protobuf\r\nContent-Encoding: br\r\n";
    let response = post_with_headers(sink.http_addr(), "/v1/traces", brotli, b"").await;
    assert!(response.starts_with("HTTP/1.1 415"), "{response}");
    assert_eq!(
        sink.exports().len(),
        3,
        "a rejected request counts as no export"
    );
    sink.shutdown().await;
}

#[tokio::test]
async fn port_in_use_is_a_clear_error() {
    let sink = start().await;
    let any = "127.0.0.1:0".parse().expect("addr");
    let err = Sink::start(sink.grpc_addr(), any)
        .await
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("cannot listen on"), "{err}");
}
