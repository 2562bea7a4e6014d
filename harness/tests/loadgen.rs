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

/// Every request sent is answered, without error, and none is faster than
/// the server's fixed service time. How many of the scheduled requests a
/// loaded machine gets out before the end, and how close the p50 comes to
/// the service time, depend on its speed: the load generator's benchmark
/// measures those (docs/loadgen.md); they are not asserted here.
#[test]
fn every_request_sent_is_answered_and_none_faster_than_the_service_time() {
    let _serial = SERIAL.lock();
    for keep_alive in [true, false] {
        let server = server(2, keep_alive, true);
        let mut config = LoadConfig::get(server.addr(), "/", 1000.0, Duration::from_secs(2));
        config.connections = 20;
        let report = runtime().block_on(loadgen::run(config)).expect("run");
        let p50 = report.latency.p50_ms;
        eprintln!("keep_alive={keep_alive}: {report:#?}");
        let counts = &report.counts;
        assert_eq!(counts.scheduled, 2000);
        // A request whose connection is still busy at the end is scheduled
        // but not sent; every one sent is answered.
        assert!(counts.sent > 0, "{counts:?}");
        assert_eq!(counts.ok_2xx, counts.sent, "{counts:?}");
        assert!(counts.non_2xx.is_empty(), "{counts:?}");
        assert_eq!(counts.failures(), 0, "{counts:?}");
        assert!(
            p50 >= 2.0,
            "p50 {p50} ms: faster than the 2 ms the server takes"
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
