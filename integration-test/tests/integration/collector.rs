//! Root integration tests: the collector goes away for a minute and comes
//! back, or answers late. The tracer keeps what its queue allows, counts
//! what it drops, resumes by itself, and its memory stays bounded.

use std::{net::SocketAddr, time::Duration};

use crate::support::*;
use harness::{
    app::WorkerClass,
    sink::{Sink, SinkOptions},
};

/// Requests the tracer may hold for export in these tests.
const QUEUE: u64 = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_down_for_a_minute_loses_only_what_the_queue_cannot_hold() {
    const SERVICE: &str = "flask-outage";
    let app = start_app(WorkerClass::Sync, &[]).await;
    let sink = start_sink().await;
    let grpc = sink.grpc_addr();
    let queue = QUEUE.to_string();
    let tracer = Tracer::start_with(app.master_pid(), &sink, SERVICE, &["--queue-size", &queue]);

    let before = drive(app.addr(), "/light", 50.0, Duration::from_secs(2)).await;
    assert!(
        eventually(Duration::from_secs(20), || {
            sink.server_span_count(SERVICE) >= before.counts.responses()
        })
        .await,
        "spans before the outage did not arrive"
    );
    let (rss_before, _) = tracer.memory_kib();

    sink.shutdown().await;
    // A minute without a collector, at 20 requests/s: more than the queue holds.
    let during = drive(app.addr(), "/light", 20.0, Duration::from_secs(60)).await;
    let (rss_during, peak_during) = tracer.memory_kib();
    assert!(during.counts.responses() > QUEUE);

    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let sink = Sink::start(grpc, loopback)
        .await
        .expect("the collector comes back on its port");
    let kept = eventually(Duration::from_secs(60), || {
        sink.server_span_count(SERVICE) >= QUEUE
    })
    .await;
    assert!(
        kept,
        "export did not resume: {} spans",
        sink.server_span_count(SERVICE)
    );
    let after = drive(app.addr(), "/light", 50.0, Duration::from_secs(2)).await;

    let sent_since_outage = during.counts.responses() + after.counts.responses();
    let accounted = |sink: &Sink| sink.server_span_count(SERVICE) as f64 + requests_lost(sink);
    assert!(
        eventually(Duration::from_secs(30), || {
            accounted(&sink) >= sent_since_outage as f64
        })
        .await,
        "{} of {sent_since_outage} requests accounted for",
        accounted(&sink)
    );
    // Stopping flushes every span and the final loss counts, so nothing
    // can arrive later to hide a surplus.
    assert_eq!(tracer.stop().code(), exit_code(Exit::Ok));
    let spans = sink.server_span_count(SERVICE);
    let dropped_in_outage = dropped(&sink, DropReason::ExportDropped);
    eprintln!(
        "outage: {} requests during, {spans} spans after, {dropped_in_outage} dropped; \
         tracer RSS {rss_before} KiB before, {rss_during} KiB at the end of the outage \
         (peak {peak_during})",
        during.counts.responses()
    );
    assert_eq!(accounted(&sink), sent_since_outage as f64);
    // The queue held its fill; only the excess was dropped, and counted.
    assert_eq!(
        dropped_in_outage,
        (during.counts.responses() - QUEUE) as f64,
        "a full queue should keep exactly {QUEUE} requests"
    );
    assert!(
        rss_during < rss_before + 64 * 1024,
        "memory grew from {rss_before} to {rss_during} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_collector_delays_spans_but_loses_none() {
    const SERVICE: &str = "flask-slow-collector";
    let app = start_app(WorkerClass::Sync, &[]).await;
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let slow = SinkOptions {
        reply_delay: Duration::from_secs(3),
        ..SinkOptions::default()
    };
    let sink = Sink::start_with(loopback, loopback, slow)
        .await
        .expect("sink starts");
    // Room for what arrives while two exports wait 3 s each at 100 requests/s.
    let tracer = Tracer::start_with(app.master_pid(), &sink, SERVICE, &["--queue-size", "2000"]);
    let (rss_before, _) = tracer.memory_kib();

    let load = drive(app.addr(), "/light", 100.0, Duration::from_secs(20)).await;
    let answered = load.counts.responses();
    let accounted = |sink: &Sink| sink.server_span_count(SERVICE) as f64 + requests_lost(sink);
    assert!(
        eventually(Duration::from_secs(60), || {
            accounted(&sink) >= answered as f64
        })
        .await,
        "{} of {answered} requests accounted for",
        accounted(&sink)
    );
    let (rss_after, peak) = tracer.memory_kib();
    // Stopping flushes everything: what the sink holds now is final.
    assert_eq!(tracer.stop().code(), exit_code(Exit::Ok));
    eprintln!(
        "slow collector: {answered} requests, {} spans, losses {}; RSS {rss_before} -> \
         {rss_after} KiB (peak {peak}); app p99 {:.2} ms",
        sink.server_span_count(SERVICE),
        requests_lost(&sink),
        load.latency.p99_ms
    );
    assert_eq!(accounted(&sink), answered as f64);
    assert_eq!(
        sink.server_span_count(SERVICE),
        answered,
        "a collector that answers in 3 s is slow, not lossy"
    );
}
