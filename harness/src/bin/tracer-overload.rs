//! `tracer-overload`: the tracer under a fast server (issue "survive
//! overload"). Debian's nginx on core 0 serves a small file over keep-alive
//! connections; the load generator, the sink and the tracer share core 1.
//!
//! - Rate sweep, traced: for each rate, requests answered, spans, requests
//!   lost by reason (so spans + losses = requests is visible), the tracer's
//!   CPU per request (process + BPF programs) and its peak memory.
//! - Served latency at one rate, with and without the tracer, in interleaved
//!   pairs (medians).
//!
//! `cargo run --release -p harness --bin tracer-overload -- --tracer target/release/tracer`
use std::{fmt::Write as _, fs, net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use clap::Parser;
use harness::{
    affinity::pin_current_thread,
    cpu::{BpfStatsGuard, bpf_prog_stats, read_stat, ticks_to_ns},
    loadgen::{self, LoadConfig, LoadReport},
    losses::Losses,
    nginx::Nginx,
    report::median,
    sink::{Sink, SinkOptions},
    tracer::TracerProcess,
};
use tracer::stats::DropReason;

const SERVICE: &str = "nginx-overload";
const NGINX_PORT: u16 = 18_183;

#[derive(Parser)]
struct Args {
    /// The tracer binary.
    #[arg(long, default_value = "target/release/tracer")]
    tracer: PathBuf,
    /// Offered rates of the traced sweep (requests/s).
    #[arg(long, value_delimiter = ',', default_value = "10000,20000,30000,40000")]
    rates: Vec<f64>,
    /// Seconds per rate.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Rate of the latency pairs (requests/s).
    #[arg(long, default_value_t = 20_000.0)]
    latency_rate: f64,
    /// With/without pairs at `latency_rate`.
    #[arg(long, default_value_t = 5)]
    pairs: usize,
    /// Keep-alive connections of the load generator.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Also write the report here (markdown).
    #[arg(long)]
    out: Option<PathBuf>,
}

// Two threads: the sink and the tracer bookkeeping here, the load generator
// on a blocking thread of its own (see `drive`).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    pin_current_thread(1).context("pinning to core 1")?;
    let tracer_bin = fs::canonicalize(&args.tracer)
        .with_context(|| format!("tracer binary {}", args.tracer.display()))?;
    let loopback: SocketAddr = "127.0.0.1:0".parse()?;
    let counting = SinkOptions {
        keep_spans: false,
        ..SinkOptions::default()
    };
    let sink = Sink::start_with(loopback, loopback, counting).await?;
    let endpoint = format!("http://{}", sink.grpc_addr());
    let nginx = Nginx::start(NGINX_PORT, 0).context("starting nginx")?;
    let start_tracer = |endpoint: &str| {
        TracerProcess::start(
            &tracer_bin,
            nginx.pid(),
            endpoint,
            SERVICE,
            1,
            &["--stats-interval", "1"],
        )
    };
    let mut report = String::from("# Tracer under overload (nginx, keep-alive)\n\n");

    writeln!(
        report,
        "## Traced rate sweep ({} s per rate)\n",
        args.duration
    )?;
    writeln!(
        report,
        "| offered req/s | achieved req/s | answered | spans | requests lost (by reason) | records lost (ring buffer) | tracer µs/req (process + BPF) | tracer CPU (% of a core) | tracer peak RSS (MiB) |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|---|---|")?;
    let bpf_stats = BpfStatsGuard::enable()?;
    for &rate in &args.rates {
        let tracer = start_tracer(&endpoint)?;
        sink.clear();
        let cpu_before = read_stat(tracer.pid())?.cpu_ticks;
        let bpf_before = bpf_prog_stats(tracer.pid())?;
        let load = drive(nginx.addr(), rate, args.duration, args.connections).await?;
        let answered = load.counts.responses();
        let accounted = |sink: &Sink| -> Result<f64> {
            let losses = Losses::from_metrics(&sink.metrics())?;
            Ok(sink.server_span_count(SERVICE) as f64 + losses.requests())
        };
        for _ in 0..60 {
            if accounted(&sink)? >= answered as f64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // One more metrics interval, so the loss counts are final.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cpu_s = ticks_to_ns(read_stat(tracer.pid())?.cpu_ticks - cpu_before) as f64 / 1e9;
        let bpf_s = bpf_prog_stats(tracer.pid())?.since(&bpf_before).run_time_ns as f64 / 1e9;
        let (_, peak_kib) = tracer.memory_kib()?;
        let losses = Losses::from_metrics(&sink.metrics())?;
        let elapsed = load.duration_s;
        writeln!(
            report,
            "| {rate:.0} | {:.0} | {answered} | {} | {:.0} ({}) | {} | {:.1} + {:.1} | {:.0}% | {:.1} |",
            load.achieved_rate,
            sink.server_span_count(SERVICE),
            losses.requests(),
            losses.only_requests(),
            losses.get(DropReason::RingBufferFull),
            cpu_s * 1e6 / answered as f64,
            bpf_s * 1e6 / answered as f64,
            (cpu_s + bpf_s) / elapsed * 100.0,
            peak_kib as f64 / 1024.0,
        )?;
        eprintln!("{report}");
    }
    drop(bpf_stats);

    writeln!(
        report,
        "\n## nginx latency at {:.0} req/s, {} interleaved pairs (medians, ms; tracer exporting nowhere)\n",
        args.latency_rate, args.pairs
    )?;
    writeln!(
        report,
        "| | p50 | p99 | p99.9 | achieved req/s |\n|---|---|---|---|---|"
    )?;
    let mut sides: [Vec<LoadReport>; 2] = [Vec::new(), Vec::new()];
    for pair in 0..args.pairs {
        for with_tracer in if pair % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        } {
            // No export here: the embedded sink would decode the spans on
            // the load generator's core and delay the client; a real
            // collector runs elsewhere (the sweep above counts export's CPU).
            let tracer = with_tracer.then(|| start_tracer("none")).transpose()?;
            let load = drive(
                nginx.addr(),
                args.latency_rate,
                args.duration,
                args.connections,
            )
            .await?;
            sides[usize::from(with_tracer)].push(load);
            drop(tracer);
        }
    }
    for (side, loads) in ["without tracer", "with tracer"].iter().zip(&sides) {
        let median_of = |f: fn(&LoadReport) -> f64| {
            median(&loads.iter().map(f).collect::<Vec<_>>()).unwrap_or(f64::NAN)
        };
        writeln!(
            report,
            "| {side} | {:.3} | {:.3} | {:.3} | {:.0} |",
            median_of(|l| l.latency.p50_ms),
            median_of(|l| l.latency.p99_ms),
            median_of(|l| l.latency.p99_9_ms),
            median_of(|l| l.achieved_rate),
        )?;
    }
    println!("{report}");
    if let Some(out) = args.out {
        fs::write(&out, &report).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
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
