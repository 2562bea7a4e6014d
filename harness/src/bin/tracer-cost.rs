//! `tracer-cost`: the tracer's own figures (issue "tracer: trace every HTTP
//! request"): spans received per request sent, the tracer's CPU per request
//! (its process plus its kernel programs), and the collateral cost on
//! processes it does not trace: the null-syscall time of an untraced
//! process, and the throughput of an untraced nginx under wrk, each paired
//! with and without the tracer, interleaved, medians reported.
//!
//! `cargo run --release -p harness --bin tracer-cost -- --tracer target/release/tracer`
use std::{
    fmt::Write as _,
    fs,
    io::Read as _,
    net::SocketAddr,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::Parser;
use harness::{
    affinity::pin_current_thread,
    app::{App, AppOptions, Config},
    cpu::{BpfStatsGuard, bpf_prog_stats, read_stat, ticks_to_ns},
    loadgen::{self, LoadConfig},
    nginx::Nginx,
    report::median,
    sink::Sink,
    tracer::TracerProcess,
};

#[derive(Parser)]
struct Args {
    /// The tracer binary.
    #[arg(long, default_value = "target/release/tracer")]
    tracer: PathBuf,
    /// Seconds per load point.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// With/without pairs for the collateral measurements.
    #[arg(long, default_value_t = 7)]
    pairs: usize,
    /// Skip the spans/CPU-per-request part (collateral cost only).
    #[arg(long)]
    collateral_only: bool,
    /// The tracer's probe set (`--probes` of the tracer).
    #[arg(long, default_value = "auto")]
    probes: String,
    /// Load points of the spans/CPU part, as path:rate.
    #[arg(long, value_delimiter = ',', default_value = "/work:250,/light:1000")]
    points: Vec<String>,
    /// Send + recv pairs per collateral sample (ten times as many null reads).
    #[arg(long, default_value_t = 200_000)]
    rounds: u32,
    /// Leave out the untraced nginx under wrk.
    #[arg(long)]
    skip_nginx: bool,
    /// Also write the report here (markdown).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    pin_current_thread(1).context("pinning to core 1")?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let tracer_bin = fs::canonicalize(&args.tracer)
        .with_context(|| format!("tracer binary {}", args.tracer.display()))?;
    let loopback: SocketAddr = "127.0.0.1:0".parse()?;
    let sink = Sink::start(loopback, loopback).await?;
    let endpoint = format!("http://{}", sink.grpc_addr());
    let options = AppOptions::new(
        Config::Bare,
        root.join("harness/app"),
        root.join(".venv"),
        endpoint.clone(),
    );
    let app = App::start(&options).await?;
    let tracer_args = ["--probes", args.probes.as_str()];
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let mut report = format!(
        "# Tracer cost (kernel {}, --probes {})\n\n",
        kernel.trim(),
        args.probes
    );

    writeln!(report, "## Spans and CPU per request\n")?;
    writeln!(
        report,
        "| endpoint | rate (req/s) | responses | spans | spans / responses | tracer user+sys µs/req | BPF programs µs/req | total µs/req |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|---|")?;
    // Programs' run time is counted only here: the counting itself costs
    // time on every program run, which must not bias the collateral pairs.
    let stats = BpfStatsGuard::enable()?;
    let points = if args.collateral_only {
        Vec::new()
    } else {
        parse_points(&args.points)?
    };
    for (path, rate) in points {
        let path = path.as_str();
        let tracer = TracerProcess::start(
            &tracer_bin,
            app.master_pid(),
            &endpoint,
            "cost",
            1,
            &tracer_args,
        )?;
        sink.clear();
        let cpu_before = read_stat(tracer.pid())?.cpu_ticks;
        let bpf_before = bpf_prog_stats(tracer.pid())?;
        let mut load = LoadConfig::get(app.addr(), path, rate, Duration::from_secs(args.duration));
        load.connections = 20;
        let result = loadgen::run(load).await?;
        let responses = result.counts.responses();
        sink.wait_for_spans(responses * 3, Duration::from_secs(15))
            .await;
        let bpf = bpf_prog_stats(tracer.pid())?.since(&bpf_before);
        let cpu_ticks = read_stat(tracer.pid())?.cpu_ticks - cpu_before;
        let spans = sink.count_spans(|s| s.kind == "SERVER");
        let user_us = ticks_to_ns(cpu_ticks) as f64 / 1e3 / responses as f64;
        let bpf_us = bpf.run_time_ns as f64 / 1e3 / responses as f64;
        writeln!(
            report,
            "| {path} | {rate} | {responses} | {spans} | {:.3} | {user_us:.1} | {bpf_us:.2} | {:.1} |",
            spans as f64 / responses as f64,
            user_us + bpf_us
        )?;
        drop(tracer);
    }
    drop(stats);

    writeln!(
        report,
        "\n## Collateral cost on untraced processes ({} interleaved pairs, medians)\n",
        args.pairs
    )?;
    let nginx = (!args.skip_nginx)
        .then(|| Nginx::start(NGINX_PORT, 0).context("starting nginx"))
        .transpose()?
        .map(UntracedNginx);
    let mut syscall = Paired::default();
    let mut socket = Paired::default();
    let mut throughput = Paired::default();
    let mut nginx_cpu = Paired::default();
    for pair in 0..args.pairs {
        // Alternate which side goes first, so drift does not favour one.
        for with_tracer in if pair % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        } {
            let tracer = with_tracer
                .then(|| {
                    TracerProcess::start(
                        &tracer_bin,
                        app.master_pid(),
                        &endpoint,
                        "cost",
                        1,
                        &tracer_args,
                    )
                })
                .transpose()?;
            syscall.push(with_tracer, null_read_ns(args.rounds * 10)?);
            socket.push(with_tracer, loopback_round_trip_ns(args.rounds)?);
            if let Some(nginx) = &nginx {
                let (rps, cpu_us) = nginx.measure()?;
                throughput.push(with_tracer, rps);
                nginx_cpu.push(with_tracer, cpu_us);
            }
            drop(tracer);
        }
    }
    writeln!(
        report,
        "| measure | without tracer | with tracer | change |"
    )?;
    writeln!(report, "|---|---|---|---|")?;
    syscall.row(&mut report, "null `read` of an untraced process (ns/call)")?;
    socket.row(
        &mut report,
        "1-byte TCP send + recv of an untraced process (ns/pair)",
    )?;
    if nginx.is_some() {
        throughput.row(&mut report, "untraced nginx under wrk (requests/s)")?;
        nginx_cpu.row(&mut report, "untraced nginx CPU (µs/request)")?;
    }
    print!("{report}");
    if let Some(out) = args.out {
        fs::write(&out, &report).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// Nanoseconds per 1-byte `read` of /dev/zero, in a thread pinned to core 0.
fn null_read_ns(calls: u32) -> Result<f64> {
    let handle = std::thread::spawn(move || -> Result<f64> {
        pin_current_thread(0)?;
        let zero = fs::File::open("/dev/zero")?;
        let mut file = std::io::BufReader::with_capacity(0, zero);
        let mut byte = [0u8; 1];
        let started = Instant::now();
        for _ in 0..calls {
            file.read_exact(&mut byte)?;
        }
        Ok(started.elapsed().as_nanos() as f64 / f64::from(calls))
    });
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("null-syscall thread panicked"))?
}

/// Nanoseconds per 1-byte send + recv over a loopback TCP connection, both
/// ends in one thread pinned to core 0: the socket hooks fire on each call.
fn loopback_round_trip_ns(rounds: u32) -> Result<f64> {
    let handle = std::thread::spawn(move || -> Result<f64> {
        use std::io::Write as _;
        pin_current_thread(0)?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let mut sender = std::net::TcpStream::connect(listener.local_addr()?)?;
        let (mut receiver, _) = listener.accept()?;
        sender.set_nodelay(true)?;
        let mut byte = [0u8; 1];
        let started = Instant::now();
        for _ in 0..rounds {
            sender.write_all(&byte)?;
            receiver.read_exact(&mut byte)?;
        }
        Ok(started.elapsed().as_nanos() as f64 / f64::from(rounds))
    });
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("socket thread panicked"))?
}

/// Medians of paired measurements.
#[derive(Default)]
struct Paired {
    without: Vec<f64>,
    with: Vec<f64>,
}

impl Paired {
    fn push(&mut self, with_tracer: bool, value: f64) {
        if with_tracer {
            &mut self.with
        } else {
            &mut self.without
        }
        .push(value);
    }

    fn row(&self, report: &mut String, what: &str) -> std::fmt::Result {
        let median = |values: &[f64]| median(values).unwrap_or(f64::NAN);
        let (without, with) = (median(&self.without), median(&self.with));
        writeln!(
            report,
            "| {what} | {without:.1} (spread {:.1}–{:.1}) | {with:.1} (spread {:.1}–{:.1}) | {:+.2}% |",
            min(&self.without),
            max(&self.without),
            min(&self.with),
            max(&self.with),
            (with / without - 1.0) * 100.0
        )
    }
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// An untraced nginx on core 0, measured under wrk.
struct UntracedNginx(Nginx);

const NGINX_PORT: u16 = 18_080;

impl UntracedNginx {
    /// (requests/s, nginx CPU µs per request) over one 3-second wrk run.
    fn measure(&self) -> Result<(f64, f64)> {
        let before = harness::cpu::tree_cpu_ns(self.0.pid())?;
        let output = Command::new("taskset")
            .args(["-c", "1", "wrk", "-t1", "-c32", "-d3s"])
            .arg(format!("http://{}/index.html", self.0.addr()))
            .output()
            .context("running wrk (cargo xtask setup installs it)")?;
        let cpu_ns = harness::cpu::tree_cpu_ns(self.0.pid())? - before;
        let text = String::from_utf8_lossy(&output.stdout);
        let requests: f64 = text
            .lines()
            .find_map(|l| {
                l.split_once("requests in")
                    .and_then(|(n, _)| n.trim().parse().ok())
            })
            .with_context(|| format!("wrk output without a request count:\n{text}"))?;
        let rps: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("Requests/sec:")
                    .and_then(|v| v.trim().parse().ok())
            })
            .with_context(|| format!("wrk output without Requests/sec:\n{text}"))?;
        Ok((rps, cpu_ns as f64 / 1e3 / requests))
    }
}

/// `path:rate` load points.
fn parse_points(points: &[String]) -> Result<Vec<(String, f64)>> {
    points
        .iter()
        .map(|point| {
            let (path, rate) = point
                .rsplit_once(':')
                .with_context(|| format!("load point {point:?} is not path:rate"))?;
            let rate = rate
                .parse()
                .with_context(|| format!("load point {point:?}: bad rate"))?;
            Ok((path.to_owned(), rate))
        })
        .collect()
}
