//! `harness`: the benchmark (`harness bench`, run by `cargo xtask bench`), the
//! load generator on its own (`harness load`), the OTLP sink on its own
//! (`harness sink`), and the tracer's own measurements: `harness cost`,
//! `harness overload`, `harness soak` and `harness selection`.

use std::io::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use harness::app::Config;
use harness::bench::{self, BenchOptions, PUBLISHED_LEVELS, Progress, Rates};
use harness::cost::{self, CostOptions};
use harness::loadgen::{self, LoadConfig};
use harness::overload::{self, OverloadOptions};
use harness::selection::{self, SelectionOptions};
use harness::setup::{Setup, host_name};
use harness::sink::Sink;
use harness::soak::{self, SoakOptions};
use harness::{affinity, measure, plot, report};

#[derive(Parser)]
#[command(about = "Proving ground for the eBPF HTTP tracer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reproduce the three-configuration latency experiment and write a report.
    Bench(Box<BenchArgs>),
    /// Send open-loop constant-rate load to one URL and print the result.
    Load(LoadArgs),
    /// Run the OTLP sink alone and print span counts until Ctrl-C.
    Sink(SinkArgs),
    /// Trace the app for minutes while gunicorn re-forks its workers; fail
    /// unless every request became a span, memory stayed flat and no map
    /// entry outlived its task.
    Soak(SoakArgs),
    /// The tracer's spans and CPU per request, and its cost to processes it
    /// does not trace, with and without it in interleaved pairs.
    Cost(CostOptions),
    /// The tracer under a fast nginx: a traced rate sweep (spans, losses,
    /// CPU, memory) and served latency with and without it.
    Overload(OverloadOptions),
    /// How soon a process selected by --exe is traced after its exec, and
    /// the tracer's CPU with selectors active, idle and under 100 execs/s.
    Selection(SelectionOptions),
}

#[derive(Args)]
struct SoakArgs {
    /// Seconds of load.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// gunicorn's --max-requests (a quarter of it as jitter).
    #[arg(long, default_value_t = 1000)]
    max_requests: u32,
    /// The tracer binary.
    #[arg(long)]
    tracer: PathBuf,
    /// Also write the report here (markdown).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/app"))]
    app_dir: PathBuf,
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv"))]
    venv: PathBuf,
}

#[derive(Args)]
struct BenchArgs {
    /// CI preset: 1 run, 3 s per point, two load levels.
    #[arg(long, conflicts_with = "paper")]
    quick: bool,
    /// The published protocol as is: 250, 500, 1000, 1250 req/s, 60 s, 3 runs.
    #[arg(long)]
    paper: bool,
    /// Absolute rates (req/s) instead of fractions of the measured capacity.
    #[arg(long, value_delimiter = ',')]
    rates: Option<Vec<f64>>,
    /// Fractions of the bare capacity [default: 0.17,0.33,0.70,0.90].
    #[arg(long, value_delimiter = ',', conflicts_with = "rates")]
    levels: Option<Vec<f64>>,
    /// Runs per configuration and rate [default: 3].
    #[arg(long)]
    runs: Option<usize>,
    /// Seconds measured per point [default: 8].
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds of warm-up at the target rate before each point [default: 2].
    #[arg(long)]
    warmup: Option<f64>,
    #[arg(long, default_value_t = 20)]
    connections: usize,
    #[arg(long, value_delimiter = ',', default_value = "bare,otel,ebpf")]
    configs: Vec<Config>,
    /// Send spans to this OTLP/gRPC collector instead of the embedded sink
    /// (spans are then not counted).
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// The tracer binary (needed for `ebpf`).
    #[arg(long)]
    tracer: Option<PathBuf>,
    /// Where the results folder is created.
    #[arg(long, default_value = "results")]
    results: PathBuf,
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/app"))]
    app_dir: PathBuf,
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv"))]
    venv: PathBuf,
    #[arg(long, default_value = "/work")]
    path: String,
}

#[derive(Args)]
struct LoadArgs {
    /// host:port/path (an `http://` prefix is accepted).
    url: String,
    #[arg(long, short = 'R')]
    rate: f64,
    /// Seconds.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    duration: f64,
    #[arg(long, short = 'c', default_value_t = 20)]
    connections: usize,
    /// Request timeout in seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Print the full report (with per-request records) as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SinkArgs {
    #[arg(long, default_value = "127.0.0.1:4317")]
    grpc: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:4318")]
    http: SocketAddr,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("harness: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to build the tokio runtime")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Bench(args) => run_bench(*args),
        Command::Load(args) => run_load(args),
        Command::Sink(args) => run_sink(args),
        Command::Soak(args) => run_soak(args),
        Command::Cost(options) => {
            measure::pin_to_tools_core()?;
            let text = runtime()?.block_on(cost::run(&options))?;
            publish(&text, options.out.as_deref())
        }
        Command::Overload(options) => {
            measure::pin_to_tools_core()?;
            let text = runtime()?.block_on(overload::run(&options))?;
            publish(&text, options.out.as_deref())
        }
        Command::Selection(options) => {
            measure::pin_to_tools_core()?;
            let text = runtime()?.block_on(selection::run(&options))?;
            publish(&text, options.out.as_deref())
        }
    }
}

/// Prints a report and also writes it to `out`, if given.
fn publish(text: &str, out: Option<&Path>) -> anyhow::Result<()> {
    println!("{text}");
    if let Some(out) = out {
        std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

struct Stderr;

impl Progress for Stderr {
    fn line(&mut self, text: &str) {
        eprintln!("bench: {text}");
    }
}

fn seconds(s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("invalid duration {s} s"))
}

fn bench_options(args: &BenchArgs) -> anyhow::Result<BenchOptions> {
    let (runs, duration, warmup, probe) = if args.quick {
        (1, 3.0, 1.0, 3.0)
    } else if args.paper {
        (3, 60.0, 5.0, 10.0)
    } else {
        (3, 8.0, 2.0, 5.0)
    };
    let rates = match (&args.rates, &args.levels) {
        (Some(rates), _) => Rates::Absolute(rates.clone()),
        (None, Some(levels)) => Rates::Fractions(levels.clone()),
        (None, None) if args.paper => {
            Rates::Absolute(PUBLISHED_LEVELS.iter().map(|l| f64::from(l.1)).collect())
        }
        (None, None) if args.quick => {
            Rates::Fractions(vec![PUBLISHED_LEVELS[0].0, PUBLISHED_LEVELS[2].0])
        }
        (None, None) => Rates::Fractions(PUBLISHED_LEVELS.iter().map(|l| l.0).collect()),
    };
    let (app_core, tools_core) = if affinity::online_cpus() > 1 {
        (0, 1)
    } else {
        (0, 0)
    };
    Ok(BenchOptions {
        configs: args.configs.clone(),
        rates,
        runs: args.runs.unwrap_or(runs),
        duration: seconds(args.duration.unwrap_or(duration))?,
        warmup: seconds(args.warmup.unwrap_or(warmup))?,
        capacity_probe: seconds(probe)?,
        connections: args.connections,
        path: args.path.clone(),
        flush_timeout: Duration::from_secs(10),
        otlp_endpoint: args.otlp_endpoint.clone(),
        tracer: args.tracer.clone(),
        app_dir: args.app_dir.clone(),
        venv: args.venv.clone(),
        log_dir: std::env::temp_dir().join(format!("harness-{}", std::process::id())),
        workers: 3,
        app_core,
        tools_core,
    })
}

fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    let options = bench_options(&args)?;
    if options.tools_core != options.app_core {
        affinity::pin_current_thread(options.tools_core)
            .with_context(|| format!("failed to pin the harness to core {}", options.tools_core))?;
    } else {
        eprintln!("bench: only one CPU: the harness shares the app's core, results will be skewed");
    }
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    let runtime = runtime()?;
    let mut progress = Stderr;
    let results = runtime.block_on(async {
        tokio::select! {
            results = bench::run(&options, &mut progress) => results.context("benchmark failed"),
            _ = tokio::signal::ctrl_c() => bail!("interrupted: every child process was stopped"),
        }
    })?;
    let setup = Setup::collect(&options.venv, options.tracer.as_deref(), command_line);
    let dir = report::create_results_dir(&args.results, results.started_unix_ns, &host_name())
        .context("failed to create the results folder")?;
    report::write_reports(&dir, &results, &setup).context("failed to write the report")?;
    plot::write_plots(&dir, &results).context("failed to draw the plots")?;
    let _ = std::fs::remove_dir_all(&options.log_dir);
    println!("{}", dir.display());
    eprintln!("bench: report in {}", dir.join("summary.md").display());
    Ok(())
}

fn parse_url(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr = host
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host:?}"))?
        .next()
        .with_context(|| format!("no address for {host:?}"))?;
    if !addr.ip().is_loopback() {
        bail!("{addr} is not a loopback address: load is only ever sent to this machine");
    }
    Ok((
        addr,
        if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
    ))
}

fn run_load(args: LoadArgs) -> anyhow::Result<()> {
    let (target, path) = parse_url(&args.url)?;
    let mut config = LoadConfig::get(target, &path, args.rate, seconds(args.duration)?);
    config.connections = args.connections;
    config.timeout = seconds(args.timeout)?;
    config.keep_records = args.json;
    let report = runtime()?
        .block_on(loadgen::run(config))
        .context("load failed")?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
        return Ok(());
    }
    let l = &report.latency;
    writeln!(
        out,
        "target {:.0} req/s, achieved {:.1} req/s over {:.1} s, {} connections",
        report.target_rate, report.achieved_rate, report.duration_s, report.connections
    )?;
    writeln!(
        out,
        "latency ms: p50 {:.3}  p75 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  p99.99 {:.3}  max {:.3}",
        l.p50_ms, l.p75_ms, l.p90_ms, l.p99_ms, l.p99_9_ms, l.p99_99_ms, l.max_ms
    )?;
    writeln!(out, "{:?}", report.counts)?;
    Ok(())
}

fn run_sink(args: SinkArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let sink = Sink::start(args.grpc, args.http).await?;
        eprintln!(
            "OTLP sink: gRPC on {}, HTTP on {}; Ctrl-C to stop",
            sink.grpc_addr(),
            sink.http_addr()
        );
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = tick.tick() => println!("{:?}", sink.span_counts()),
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        sink.shutdown().await;
        Ok(())
    })
}

fn run_soak(args: SoakArgs) -> anyhow::Result<()> {
    measure::pin_to_tools_core()?;
    let options = SoakOptions {
        duration: Duration::from_secs(args.seconds),
        rate: args.rate,
        max_requests: args.max_requests,
        tracer: args.tracer,
        app_dir: args.app_dir,
        venv: args.venv,
    };
    let report = runtime()?.block_on(soak::run(&options))?;
    publish(&report.markdown(&options)?, args.out.as_deref())?;
    let failures = report.failures();
    if !failures.is_empty() {
        bail!("soak failed: {}", failures.join("; "));
    }
    Ok(())
}
