//! Root integration tests of the tracer against the real Flask app under
//! real gunicorn, with the real kernel programs and a real OTLP/gRPC sink.
//! Run by `cargo xtask test` (as root, one test at a time).

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use crate::support::*;
use harness::app::WorkerClass;

/// Many mixed requests, one connection each (gunicorn sync workers close
/// after every response): exactly one correct span per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_becomes_one_correct_span() {
    let app = start_app(WorkerClass::Sync, &[]).await;
    let sink = start_sink().await;
    let tracer = Tracer::start(app.master_pid(), &sink, "flask-test");
    let addr = app.addr();

    let plan = mixed_plan(600);
    let sent = parallel_requests(addr, plan, 4).await;
    assert_eq!(sent.len(), 600);
    assert!(
        sent.iter().all(|s| s.status != 0),
        "every request got a response"
    );

    assert!(
        eventually(Duration::from_secs(20), || server_spans(
            &sink,
            "flask-test"
        )
        .len()
            >= 600)
        .await,
        "expected 600 spans, got {}",
        server_spans(&sink, "flask-test").len()
    );
    assert_eq!(
        tracer.stop().code(),
        exit_code(Exit::Ok),
        "SIGTERM flushes and exits 0"
    );
    let spans = server_spans(&sink, "flask-test");
    assert_eq!(spans.len(), 600, "exactly one span per request");

    for (request, span) in span_of_each(&sent, &spans) {
        assert_server_span(span, request, addr, "http");
        assert_eq!(
            span.resource.get("service.name").and_then(|v| v.as_str()),
            Some("flask-test")
        );
    }

    // Each server span has its two children, "in queue" and "processing".
    let children: Vec<_> = sink
        .spans()
        .into_iter()
        .filter(|s| s.service == "flask-test" && s.kind == "INTERNAL")
        .collect();
    assert_eq!(children.len(), 1200);
    assert!(
        children
            .iter()
            .all(|c| c.name == "in queue" || c.name == "processing")
    );
}

/// Keep-alive: many requests per connection, one span each, right paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_give_one_span_per_request() {
    let app = start_app(keep_alive_class(), &[]).await;
    let sink = start_sink().await;
    let tracer = Tracer::start(app.master_pid(), &sink, "flask-keepalive");
    let addr = app.addr();
    let per_connection = 50;
    let paths = tokio::task::spawn_blocking(move || {
        (0..4)
            .map(|connection| {
                let mut stream = TcpStream::connect(addr).expect("connect");
                let mut paths = Vec::new();
                for i in 0..per_connection {
                    let path = if i % 2 == 0 { "/light" } else { "/missing" };
                    let head =
                        format!("GET {path}?c={connection}&i={i} HTTP/1.1\r\nHost: t\r\n\r\n");
                    stream.write_all(head.as_bytes()).expect("send");
                    read_one_response(&mut stream);
                    paths.push(path);
                }
                paths
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("client");
    let expected = 4 * per_connection;
    assert!(
        eventually(Duration::from_secs(20), || server_spans(
            &sink,
            "flask-keepalive"
        )
        .len()
            >= expected)
        .await,
        "got {} of {expected} spans",
        server_spans(&sink, "flask-keepalive").len()
    );
    tracer.stop();
    let spans = server_spans(&sink, "flask-keepalive");
    assert_eq!(spans.len(), expected);
    let mut by_port = by_client_port(&spans);
    assert_eq!(by_port.len(), 4, "four connections");
    for spans in by_port.values_mut() {
        spans.sort_by_key(|s| s.start_unix_ns);
        let seen: Vec<&str> = spans.iter().map(|s| attr_str(s, "url.path")).collect();
        assert_eq!(seen, paths[0], "paths in order on each connection");
        for pair in spans.windows(2) {
            assert!(
                pair[0].end_unix_ns <= pair[1].start_unix_ns,
                "requests on one connection do not overlap"
            );
        }
    }
}

/// Reads one HTTP/1.1 response with a Content-Length body.
fn read_one_response(stream: &mut TcpStream) -> Vec<u8> {
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).expect("read");
        assert!(n > 0, "server closed a keep-alive connection");
        response.extend_from_slice(&buf[..n]);
        if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if response.len() >= end + 4 + length {
                return response;
            }
        }
    }
}
