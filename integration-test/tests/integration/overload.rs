//! Root integration tests under load, against Debian's nginx: a fast
//! keep-alive server that, unlike gunicorn, also answers pipelined requests.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use crate::support::*;
use harness::{
    nginx::Nginx,
    sink::{Sink, SinkOptions},
};

/// Three requests written at once: nginx reads them in one `recv`, so the
/// kernel side must keep every head of the buffer, and each gets a span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_each_get_a_span() {
    let nginx = Nginx::start(18_181, 0).expect("nginx starts");
    let sink = start_sink().await;
    let tracer = Tracer::start(nginx.pid(), &sink, "nginx-pipelined");
    let addr = nginx.addr();
    let (client_port, responses) = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        let port = stream.local_addr().expect("local address").port();
        stream
            .write_all(
                b"GET /index.html?secret=1 HTTP/1.1\r\nHost: t\r\n\r\n\
                  GET /missing HTTP/1.1\r\nHost: t\r\n\r\n\
                  HEAD /index.html HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            )
            .expect("send");
        let mut responses = Vec::new();
        stream.read_to_end(&mut responses).expect("read");
        (port, responses)
    })
    .await
    .expect("client");
    let text = String::from_utf8_lossy(&responses);
    assert_eq!(
        text.matches("HTTP/1.1 ").count(),
        3,
        "nginx answered: {text}"
    );

    let mine = |sink: &Sink| -> Vec<_> {
        let mut spans: Vec<_> = server_spans(sink, "nginx-pipelined")
            .into_iter()
            .filter(|span| attr_i64(span, "client.port") == i64::from(client_port))
            .collect();
        spans.sort_by_key(|span| (span.end_unix_ns, span.start_unix_ns));
        spans
    };
    assert!(
        eventually(Duration::from_secs(20), || mine(&sink).len() >= 3).await,
        "got {} spans for 3 pipelined requests",
        mine(&sink).len()
    );
    let spans = mine(&sink);
    let seen: Vec<(&str, &str, i64)> = spans
        .iter()
        .map(|span| {
            (
                attr_str(span, "http.request.method"),
                attr_str(span, "url.path"),
                attr_i64(span, "http.response.status_code"),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("GET", "/index.html", 200),
            ("GET", "/missing", 404),
            ("HEAD", "/index.html", 200)
        ]
    );
    assert_eq!(tracer.stop().code(), exit_code(Exit::Ok));
}

/// nginx driven at 20,000 requests/s over keep-alive connections: every
/// request the server answered is either a span or counted in exactly one
/// loss reason, and the tracer's memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_server_is_traced_or_its_losses_counted_exactly() {
    const RATE: f64 = 20_000.0;
    const SERVICE: &str = "nginx-fast";
    let nginx = Nginx::start(18_182, 0).expect("nginx starts");
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let counting = SinkOptions {
        keep_spans: false,
        ..SinkOptions::default()
    };
    let sink = Sink::start_with(loopback, loopback, counting)
        .await
        .expect("sink starts");
    let tracer = Tracer::start(nginx.pid(), &sink, SERVICE);
    let (rss_start, _) = tracer.memory_kib();

    let report = drive(nginx.addr(), "/index.html", RATE, Duration::from_secs(5)).await;
    let counts = &report.counts;
    let answered = counts.responses();
    assert_eq!(counts.failures(), 0, "nginx failed requests: {counts:?}");
    // The generator holds 40,000 req/s on a quiet core (docs/loadgen.md);
    // far below the target, this would not be a high-rate test at all.
    assert!(
        report.achieved_rate >= 0.5 * RATE,
        "the load reached only {:.0} requests/s",
        report.achieved_rate
    );
    let accounted = |sink: &Sink| sink.server_span_count(SERVICE) as f64 + requests_lost(sink);
    assert!(
        eventually(Duration::from_secs(30), || {
            accounted(&sink) >= answered as f64
        })
        .await,
        "{} of {answered} requests accounted for",
        accounted(&sink)
    );
    let (rss_end, rss_peak) = tracer.memory_kib();
    // Stopping flushes every span and the final loss counts, so a late
    // count cannot hide a surplus.
    assert_eq!(tracer.stop().code(), exit_code(Exit::Ok));
    let spans = sink.server_span_count(SERVICE);
    let losses = losses(&sink).only_requests();
    eprintln!(
        "{RATE} req/s offered, {:.0} achieved: {answered} answered, {spans} spans, losses {losses}, \
         ring_buffer_full {}, tracer RSS {rss_start} -> {rss_end} KiB (peak {rss_peak})",
        report.achieved_rate,
        dropped(&sink, DropReason::RingBufferFull)
    );
    assert_eq!(
        accounted(&sink),
        answered as f64,
        "{answered} requests answered, {spans} spans, losses {losses}"
    );
    assert!(
        rss_peak < 256 * 1024,
        "the tracer's memory peaked at {rss_peak} KiB"
    );
}
