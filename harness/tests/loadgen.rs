//! The load generator against an in-process server with a known service time.

use std::sync::Mutex;
use std::time::Duration;

use harness::loadgen::{self, LoadConfig};
use harness::testserver::{ServerOptions, TestServer};

/// The tests measure time: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn server(delay_ms: u64, keep_alive: bool, busy_poll: bool) -> TestServer {
    TestServer::start(ServerOptions {
        delay: Duration::from_millis(delay_ms),
        keep_alive,
        body_len: 100,
        busy_poll,
    })
    .expect("start test server")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Within 0.2 ms on a kept-alive connection. A new connection per request
/// also pays for the TCP handshake and the server's accept, which are part of
/// the latency a client sees, so it is allowed 0.3 ms.
#[test]
fn p50_matches_fixed_service_time_at_1000_rps() {
    let _serial = SERIAL.lock();
    for (keep_alive, tolerance_ms) in [(true, 0.2), (false, 0.3)] {
        let server = server(2, keep_alive, true);
        let mut config = LoadConfig::get(server.addr(), "/", 1000.0, Duration::from_secs(2));
        config.connections = 20;
        let report = runtime().block_on(loadgen::run(config)).expect("run");
        let p50 = report.latency.p50_ms;
        eprintln!("keep_alive={keep_alive}: {report:#?}");
        assert_eq!(report.counts.scheduled, 2000);
        // The last request of a connection that is still busy at the end is
        // scheduled but not sent.
        assert!(report.counts.ok_2xx >= 1990, "{:?}", report.counts);
        assert_eq!(report.counts.ok_2xx, report.counts.sent);
        assert!(
            (p50 - 2.0).abs() <= tolerance_ms,
            "p50 {p50} ms, expected 2 ms ± {tolerance_ms}"
        );
        assert!(
            (report.achieved_rate - 1000.0).abs() < 30.0,
            "{}",
            report.achieved_rate
        );
    }
}

#[test]
fn stalls_are_charged_to_queued_requests() {
    let _serial = SERIAL.lock();
    // One connection at 200 req/s against a 20 ms server: every request waits
    // for the previous ones, so latency measured from the schedule grows well
    // beyond the service time, and most requests are never sent.
    let server = server(20, true, false);
    let mut config = LoadConfig::get(server.addr(), "/", 200.0, Duration::from_secs(1));
    config.connections = 1;
    let report = runtime().block_on(loadgen::run(config)).expect("run");
    assert_eq!(report.counts.scheduled, 200);
    assert!(report.counts.sent < 60, "{:?}", report.counts);
    assert!(report.latency.max_ms > 500.0, "{:?}", report.latency);
    assert!(report.achieved_rate < 60.0);
}

#[test]
fn records_and_errors() {
    let _serial = SERIAL.lock();
    let server = server(0, false, false);
    let mut config = LoadConfig::get(server.addr(), "/x", 100.0, Duration::from_millis(500));
    config.keep_records = true;
    let report = runtime().block_on(loadgen::run(config)).expect("run");
    assert_eq!(report.records.len(), 50);
    assert!(
        report
            .records
            .iter()
            .all(|r| r.status == Some(200) && r.path == "/x")
    );
    let gaps: Vec<u64> = report
        .records
        .windows(2)
        .map(|w| w[1].scheduled_unix_ns - w[0].scheduled_unix_ns)
        .collect();
    assert!(gaps.iter().all(|&g| g == 10_000_000), "{gaps:?}");

    // Nothing listens on the server's port once it is gone.
    let addr = server.addr();
    drop(server);
    let config = LoadConfig::get(addr, "/", 100.0, Duration::from_millis(200));
    let report = runtime().block_on(loadgen::run(config)).expect("run");
    assert_eq!(report.counts.connect_errors, 20);
    assert_eq!(report.counts.responses(), 0);
}
