//! `harness overload`: the tracer under a fast server (issue "survive
//! overload"). Debian's nginx on the server core serves a small file over
//! keep-alive connections; the load generator, the sink and the tracer
//! share the tools core.
//!
//! - Rate sweep, traced: for each rate, requests answered, spans, requests
//!   lost by reason (so spans + losses = requests is visible), the tracer's
//!   CPU per request (process + BPF programs) and its peak memory.
//! - Served latency at one rate, with and without the tracer, in interleaved
//!   pairs (medians).
//!
//! `cargo run --release -p harness -- overload --tracer target/release/tracer`
use std::{fmt::Write as _, net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use tracer::stats::DropReason;

use crate::{
    cpu::BpfStatsGuard,
    loadgen::{self, LoadConfig, LoadReport},
    measure::{self, Accounted, SERVER_CORE, Spread, TOOLS_CORE, TracerCpu},
    nginx::Nginx,
    tracer::TracerProcess,
};

/// The traced nginx's `service.name`.
const SERVICE: &str = "nginx-overload";
const NGINX_PORT: u16 = 18_183;
/// After everything is accounted for, one more metrics export of the tracer
/// (`--stats-interval 1`), so the record counts are final too.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(clap::Args, Debug, Clone)]
pub struct OverloadOptions {
    /// The tracer binary.
    #[arg(long, default_value = "target/release/tracer")]
    pub tracer: PathBuf,
    /// Offered rates of the traced sweep (requests/s).
    #[arg(long, value_delimiter = ',', default_value = "10000,20000,30000,40000")]
    pub rates: Vec<f64>,
    /// Seconds per rate.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Rate of the latency pairs (requests/s).
    #[arg(long, default_value_t = 20_000.0)]
    pub latency_rate: f64,
    /// With/without pairs at `latency_rate`.
    #[arg(long, default_value_t = 5)]
    pub pairs: usize,
    /// Keep-alive connections of the load generator.
    #[arg(long, default_value_t = 50)]
    pub connections: usize,
    /// Also write the report here (markdown).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs the sweep and the latency pairs and returns the report (markdown),
/// printing it to stderr as it grows. Call from a thread pinned to the tools
/// core, in a runtime of one thread: the sink and the tracer bookkeeping
/// run there, the load generator on a thread of its own (see [`drive`]).
pub async fn run(options: &OverloadOptions) -> Result<String> {
    let tracer_bin = measure::tracer_bin(&options.tracer)?;
    let sink = measure::start_sink().await?;
    let endpoint = format!("http://{}", sink.grpc_addr());
    let nginx = Nginx::start(NGINX_PORT, SERVER_CORE).context("starting nginx")?;
    let start_tracer = |endpoint: &str| {
        TracerProcess::start(
            &tracer_bin,
            nginx.pid(),
            endpoint,
            SERVICE,
            TOOLS_CORE,
            &["--stats-interval", "1"],
        )
    };
    let mut report = String::from("# Tracer under overload (nginx, keep-alive)\n\n");

    writeln!(
        report,
        "## Traced rate sweep ({} s per rate)\n",
        options.duration
    )?;
    writeln!(
        report,
        "| offered req/s | achieved req/s | answered | spans | requests lost (by reason) | records lost (ring buffer) | tracer µs/req (process + BPF) | tracer CPU (% of a core) | tracer peak RSS (MiB) |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|---|---|")?;
    let bpf_stats = BpfStatsGuard::enable()?;
    for &rate in &options.rates {
        let tracer = start_tracer(&endpoint)?;
        sink.clear();
        let tracer_cpu = TracerCpu::start(&tracer)?;
        let load = drive(nginx.addr(), rate, options.duration, options.connections).await?;
        let answered = load.counts.responses();
        measure::wait_until_accounted(&sink, SERVICE, answered).await?;
        tokio::time::sleep(SETTLE).await;
        let usage = tracer_cpu.since_start(Duration::try_from_secs_f64(load.duration_s)?)?;
        let (_, peak_kib) = tracer.memory_kib()?;
        let Accounted { spans, losses } = Accounted::read(&sink, SERVICE)?;
        writeln!(
            report,
            "| {rate:.0} | {:.0} | {answered} | {spans} | {:.0} ({}) | {} | {:.1} + {:.1} | {:.0}% | {:.1} |",
            load.achieved_rate,
            losses.requests(),
            losses.only_requests(),
            losses.get(DropReason::RingBufferFull),
            usage.process.us_per_request(answered),
            usage.bpf.us_per_request(answered),
            usage.percent_of_core(),
            peak_kib as f64 / 1024.0,
        )?;
        eprintln!("{report}");
    }
    drop(bpf_stats);

    writeln!(
        report,
        "\n## nginx latency at {:.0} req/s, {} interleaved pairs (medians, ms; tracer exporting nowhere)\n",
        options.latency_rate, options.pairs
    )?;
    writeln!(
        report,
        "| | p50 | p99 | p99.9 | achieved req/s |\n|---|---|---|---|---|"
    )?;
    // No export here: the embedded sink would decode the spans on the load
    // generator's core and delay the client; a real collector runs
    // elsewhere (the sweep above counts export's CPU).
    let sides = measure::interleaved(
        options.pairs,
        || start_tracer("none"),
        async || {
            drive(
                nginx.addr(),
                options.latency_rate,
                options.duration,
                options.connections,
            )
            .await
        },
    )
    .await?;
    for (side, loads) in sides.labelled() {
        let median = |value: fn(&LoadReport) -> f64| Spread::of(loads.iter().map(value)).median;
        writeln!(
            report,
            "| {side} | {:.3} | {:.3} | {:.3} | {:.0} |",
            median(|l| l.latency.p50_ms),
            median(|l| l.latency.p99_ms),
            median(|l| l.latency.p99_9_ms),
            median(|l| l.achieved_rate),
        )?;
    }
    Ok(report)
}

/// The load runs on a thread and runtime of its own: on the main runtime,
/// the sink's decoding of tens of thousands of spans a second would stall
/// the generator and show up as latency the server never caused.
async fn drive(
    addr: SocketAddr,
    rate: f64,
    seconds: u64,
    connections: usize,
) -> Result<LoadReport> {
    let mut config = LoadConfig::get(addr, "/index.html", rate, Duration::from_secs(seconds));
    config.connections = connections;
    let report = tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|runtime| runtime.block_on(loadgen::run(config)))
    })
    .await???;
    Ok(report)
}
