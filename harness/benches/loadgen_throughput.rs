//! Throughput of the load generator on one core against a fast keep-alive
//! server on another: `cargo bench -p harness --bench loadgen_throughput`.
//! The claim is at least 20,000 requests/s; the exit code says whether it held.

use std::process::ExitCode;
use std::time::Duration;

use harness::affinity;
use harness::loadgen::{self, LoadConfig};
use harness::testserver::{ServerOptions, TestServer};

const TARGET_RATE: f64 = 25_000.0;
const CLAIM: f64 = 20_000.0;

fn main() -> ExitCode {
    let cores = affinity::online_cpus();
    if cores > 1 {
        // The server thread inherits core 0; the load generator moves to core 1.
        let _ = affinity::pin_current_thread(0);
    }
    let server = match TestServer::start(ServerOptions {
        delay: Duration::ZERO,
        keep_alive: true,
        body_len: 64,
        busy_poll: false,
    }) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("cannot start the test server: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cores > 1
        && let Err(e) = affinity::pin_current_thread(1)
    {
        eprintln!("cannot pin to core 1: {e}");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot build the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut config = LoadConfig::get(server.addr(), "/", TARGET_RATE, Duration::from_secs(5));
    config.connections = 50;
    let report = match runtime.block_on(loadgen::run(config)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("load failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "target {TARGET_RATE} req/s on {cores} cores: achieved {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, errors {:?}",
        report.achieved_rate, report.latency.p50_ms, report.latency.p99_ms, report.counts
    );
    if report.achieved_rate >= CLAIM {
        ExitCode::SUCCESS
    } else {
        println!("below the claimed {CLAIM} req/s");
        ExitCode::FAILURE
    }
}
