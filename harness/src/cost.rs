//! `harness cost`: the tracer's own figures (issue "tracer: trace every HTTP
//! request"): spans received per request sent, the tracer's CPU per request
//! (its process plus its kernel programs), and the collateral cost on
//! processes it does not trace: the null-syscall time of an untraced
//! process, and the throughput of an untraced nginx under wrk, each paired
//! with and without the tracer, interleaved, medians reported.
//!
//! `cargo run --release -p harness -- cost --tracer target/release/tracer`
use std::{
    fmt::Write as _,
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    affinity::pin_current_thread,
    app::{App, AppOptions, Config},
    cpu::{self, BpfStatsGuard},
    loadgen::{self, LoadConfig},
    measure::{self, SERVER_CORE, Sides, Spread, TOOLS_CORE, TracerCpu},
    nginx::Nginx,
    tracer::TracerProcess,
};

/// The traced app's `service.name`.
const SERVICE: &str = "cost";
const NGINX_PORT: u16 = 18_080;

#[derive(clap::Args, Debug, Clone)]
pub struct CostOptions {
    /// The tracer binary.
    #[arg(long, default_value = "target/release/tracer")]
    pub tracer: PathBuf,
    /// Seconds per load point.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// With/without pairs for the collateral measurements.
    #[arg(long, default_value_t = 7)]
    pub pairs: usize,
    /// Skip the spans/CPU-per-request part (collateral cost only).
    #[arg(long)]
    pub collateral_only: bool,
    /// The tracer's probe set (`--probes` of the tracer).
    #[arg(long, default_value = "auto")]
    pub probes: String,
    /// Load points of the spans/CPU part, as path:rate.
    #[arg(long, value_delimiter = ',', default_value = "/work:250,/light:1000")]
    pub points: Vec<String>,
    /// Send + recv pairs per collateral sample (ten times as many null reads).
    #[arg(long, default_value_t = 200_000)]
    pub rounds: u32,
    /// Leave out the untraced nginx under wrk.
    #[arg(long)]
    pub skip_nginx: bool,
    /// Also write the report here (markdown).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs the measurements and returns the report (markdown). Call from a
/// thread pinned to the tools core.
pub async fn run(options: &CostOptions) -> Result<String> {
    let points = if options.collateral_only {
        Vec::new()
    } else {
        parse_points(&options.points)?
    };
    let tracer_bin = measure::tracer_bin(&options.tracer)?;
    let sink = measure::start_sink().await?;
    let endpoint = format!("http://{}", sink.grpc_addr());
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let app_options = AppOptions::new(
        Config::Bare,
        manifest_dir.join("app"),
        manifest_dir.join("../.venv"),
        endpoint.clone(),
    );
    let app = App::start(&app_options).await?;
    let tracer_args = ["--probes", options.probes.as_str()];
    let start_tracer = || {
        TracerProcess::start(
            &tracer_bin,
            app.master_pid(),
            &endpoint,
            SERVICE,
            TOOLS_CORE,
            &tracer_args,
        )
    };
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let mut report = format!(
        "# Tracer cost (kernel {}, --probes {})\n\n",
        kernel.trim(),
        options.probes
    );

    writeln!(report, "## Spans and CPU per request\n")?;
    writeln!(
        report,
        "| endpoint | rate (req/s) | responses | spans | spans / responses | tracer user+sys µs/req | BPF programs µs/req | total µs/req |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|---|")?;
    // Programs' run time is counted only here: the counting itself costs
    // time on every program run, which must not bias the collateral pairs.
    let bpf_stats = BpfStatsGuard::enable()?;
    for (path, rate) in points {
        let tracer = start_tracer()?;
        sink.clear();
        let tracer_cpu = TracerCpu::start(&tracer)?;
        let duration = Duration::from_secs(options.duration);
        let mut load = LoadConfig::get(app.addr(), &path, rate, duration);
        load.connections = 20;
        let responses = loadgen::run(load).await?.counts.responses();
        let accounted = measure::wait_until_accounted(&sink, SERVICE, responses).await?;
        let usage = tracer_cpu.since_start(duration)?;
        let process_us = usage.process.us_per_request(responses);
        let bpf_us = usage.bpf.us_per_request(responses);
        writeln!(
            report,
            "| {path} | {rate} | {responses} | {} | {:.3} | {process_us:.1} | {bpf_us:.2} | {:.1} |",
            accounted.spans,
            accounted.spans as f64 / responses as f64,
            process_us + bpf_us
        )?;
    }
    drop(bpf_stats);

    writeln!(
        report,
        "\n## Collateral cost on untraced processes ({} interleaved pairs, medians)\n",
        options.pairs
    )?;
    let nginx = (!options.skip_nginx)
        .then(|| Nginx::start(NGINX_PORT, SERVER_CORE).context("starting nginx"))
        .transpose()?
        .map(UntracedNginx);
    let sides = measure::interleaved(options.pairs, start_tracer, async || {
        Ok(Collateral {
            null_read_ns: null_read_ns(options.rounds * 10)?,
            round_trip_ns: loopback_round_trip_ns(options.rounds)?,
            nginx: nginx.as_ref().map(UntracedNginx::measure).transpose()?,
        })
    })
    .await?;
    writeln!(
        report,
        "| measure | without tracer | with tracer | change |"
    )?;
    writeln!(report, "|---|---|---|---|")?;
    row(
        &mut report,
        "null `read` of an untraced process (ns/call)",
        &sides,
        |run| run.null_read_ns,
    )?;
    row(
        &mut report,
        "1-byte TCP send + recv of an untraced process (ns/pair)",
        &sides,
        |run| run.round_trip_ns,
    )?;
    if nginx.is_some() {
        let nginx = |value: fn(&NginxRun) -> f64| {
            move |run: &Collateral| run.nginx.as_ref().map_or(f64::NAN, value)
        };
        row(
            &mut report,
            "untraced nginx under wrk (requests/s)",
            &sides,
            nginx(|run| run.requests_per_s),
        )?;
        row(
            &mut report,
            "untraced nginx CPU (µs/request)",
            &sides,
            nginx(|run| run.cpu_us_per_request),
        )?;
    }
    Ok(report)
}

/// One collateral measurement, with or without the tracer.
struct Collateral {
    null_read_ns: f64,
    round_trip_ns: f64,
    /// Absent with `--skip-nginx`.
    nginx: Option<NginxRun>,
}

struct NginxRun {
    requests_per_s: f64,
    cpu_us_per_request: f64,
}

/// One table row: the median and spread of `value` on each side, and the
/// change of the median.
fn row(
    report: &mut String,
    what: &str,
    sides: &Sides<Collateral>,
    value: impl Fn(&Collateral) -> f64,
) -> std::fmt::Result {
    let [without, with] = sides
        .labelled()
        .map(|(_, runs)| Spread::of(runs.iter().map(&value)));
    writeln!(
        report,
        "| {what} | {:.1} (spread {:.1}–{:.1}) | {:.1} (spread {:.1}–{:.1}) | {:+.2}% |",
        without.median,
        without.min,
        without.max,
        with.median,
        with.min,
        with.max,
        (with.median / without.median - 1.0) * 100.0
    )
}

/// Nanoseconds per 1-byte `read` of /dev/zero, in a thread on the server
/// core.
fn null_read_ns(calls: u32) -> Result<f64> {
    let handle = std::thread::spawn(move || -> Result<f64> {
        pin_current_thread(SERVER_CORE)?;
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
/// ends in one thread on the server core: the socket hooks fire on each
/// call.
fn loopback_round_trip_ns(rounds: u32) -> Result<f64> {
    let handle = std::thread::spawn(move || -> Result<f64> {
        use std::io::Write as _;
        pin_current_thread(SERVER_CORE)?;
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

/// An untraced nginx on the server core, measured under wrk.
struct UntracedNginx(Nginx);

impl UntracedNginx {
    /// Throughput and nginx's CPU per request over one 3-second wrk run.
    fn measure(&self) -> Result<NginxRun> {
        let before = cpu::tree_cpu_ns(self.0.pid())?;
        let output = Command::new("taskset")
            .args(["-c", &TOOLS_CORE.to_string(), "wrk", "-t1", "-c32", "-d3s"])
            .arg(format!("http://{}/index.html", self.0.addr()))
            .output()
            .context("running wrk (cargo xtask setup installs it)")?;
        let cpu_ns = cpu::tree_cpu_ns(self.0.pid())? - before;
        let text = String::from_utf8_lossy(&output.stdout);
        let requests: f64 = text
            .lines()
            .find_map(|l| {
                l.split_once("requests in")
                    .and_then(|(n, _)| n.trim().parse().ok())
            })
            .with_context(|| format!("wrk output without a request count:\n{text}"))?;
        let requests_per_s: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("Requests/sec:")
                    .and_then(|v| v.trim().parse().ok())
            })
            .with_context(|| format!("wrk output without Requests/sec:\n{text}"))?;
        Ok(NginxRun {
            requests_per_s,
            cpu_us_per_request: cpu_ns as f64 / 1e3 / requests,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_points_are_path_and_rate() {
        let points = parse_points(&["/light:100".into(), "/a:b:2.5".into()]).expect("valid");
        assert_eq!(points, [("/light".into(), 100.0), ("/a:b".into(), 2.5)]);
        assert!(parse_points(&["/light".into()]).is_err());
        assert!(parse_points(&["/light:fast".into()]).is_err());
    }
}
