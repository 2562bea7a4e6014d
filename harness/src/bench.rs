//! The benchmark protocol (issue 3): measure the bare app's capacity, then
//! run every configuration at fractions of it (or at given rates), configs
//! interleaved within each run and rate, and collect latency, CPU and span
//! counts per point.
//!
//! Invariants: one app runs at a time, started fresh for every point and
//! stopped after it; spans are counted only for the measured window (start of
//! the first scheduled request to the end of the last response), so the
//! health check, the capacity probe and the warm-up never count; the harness
//! process is expected to be pinned away from the app's core by the caller.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::app::{App, AppError, AppOptions, Config, WorkerClass};
use crate::clock::unix_ns;
use crate::cpu::{self, BpfProgStats, BpfStatsGuard, CpuError, CpuUsage};
use crate::loadgen::{self, LoadConfig, LoadError, LoadReport};
use crate::sink::{Sink, SinkError};

/// A configuration reaching less than this share of its target is saturated.
pub const SATURATION_SHARE: f64 = 0.95;
/// The published load levels as fractions of the bare app's capacity
/// (250, 500, 1000 and 1250 requests/s were 17%, 33%, 70% and 90% of its CPU).
pub const PUBLISHED_LEVELS: [(f64, u32); 4] =
    [(0.17, 250), (0.33, 500), (0.70, 1000), (0.90, 1250)];
/// Offered rate of the capacity probe: far above what one core can serve, so
/// the connections run back to back and the achieved rate is the capacity.
const CAPACITY_PROBE_RATE: f64 = 5_000.0;
/// Idle time between the warm-up and the measured run.
const WARMUP_GAP: Duration = Duration::from_millis(500);

/// Which rates to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Rates {
    /// Fractions of the measured bare capacity.
    Fractions(Vec<f64>),
    /// Requests per second.
    Absolute(Vec<f64>),
}

/// Everything a benchmark run needs.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub configs: Vec<Config>,
    pub rates: Rates,
    pub runs: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub capacity_probe: Duration,
    pub connections: usize,
    pub path: String,
    /// How long to wait after a run for the exporters to deliver its spans.
    pub flush_timeout: Duration,
    /// An external OTLP/gRPC collector instead of the embedded sink.
    pub otlp_endpoint: Option<String>,
    pub tracer: Option<PathBuf>,
    pub app_dir: PathBuf,
    pub venv: PathBuf,
    pub log_dir: PathBuf,
    pub workers: u32,
    pub app_core: usize,
    pub tools_core: usize,
}

/// Why the benchmark stopped.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    App(#[from] AppError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Cpu(#[from] CpuError),
    #[error("nothing to run: {0}")]
    Nothing(String),
}

/// One configuration × rate × run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub config: Config,
    /// Target rate, requests/s.
    pub rate: f64,
    /// Fraction of the bare capacity, when rates are fractions.
    pub level: Option<f64>,
    /// The published rate this point corresponds to, if any.
    pub published_qps: Option<u32>,
    /// 1-based.
    pub run: usize,
    pub saturated: bool,
    pub load: LoadReport,
    pub app_cpu_percent: f64,
    pub app_cpu_us_per_request: f64,
    /// The tracer process's own CPU, µs per request.
    pub tracer_process_us_per_request: Option<f64>,
    /// Its BPF programs' run time, µs per request.
    pub bpf_us_per_request: Option<f64>,
    pub bpf_run_count: Option<u64>,
    /// Spans received for the measured window; `None` for `bare` or with an
    /// external collector.
    pub spans_received: Option<u64>,
}

impl Point {
    /// Tracer process plus its BPF programs, µs per request.
    pub fn tracer_us_per_request(&self) -> Option<f64> {
        Some(self.tracer_process_us_per_request? + self.bpf_us_per_request.unwrap_or(0.0))
    }

    /// Requests that reached the app and should each have one span.
    pub fn spans_expected(&self) -> u64 {
        self.load.counts.responses()
    }
}

/// Everything measured, plus what was skipped and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchResults {
    pub started_unix_ns: u64,
    pub capacity: Option<f64>,
    pub configs: Vec<Config>,
    pub rates: Vec<f64>,
    pub runs: usize,
    pub duration_s: f64,
    pub connections: usize,
    pub external_collector: Option<String>,
    pub skipped: Vec<String>,
    pub points: Vec<Point>,
}

/// Receives progress lines.
pub trait Progress {
    fn line(&mut self, text: &str);
}

/// Removes configurations that cannot run here, saying why.
pub fn runnable_configs(options: &BenchOptions, is_root: bool) -> (Vec<Config>, Vec<String>) {
    let mut skipped = Vec::new();
    let configs = options
        .configs
        .iter()
        .copied()
        .filter(|&config| {
            if config != Config::Ebpf {
                return true;
            }
            if !is_root {
                skipped.push(
                    "ebpf skipped: loading BPF programs needs root (run with sudo -E)".to_owned(),
                );
                false
            } else if options.tracer.as_ref().is_none_or(|t| !t.exists()) {
                skipped.push(format!(
                    "ebpf skipped: tracer binary {} not found (build it with `cargo xtask build`)",
                    options
                        .tracer
                        .as_ref()
                        .map_or("(none given)".into(), |t| t.display().to_string())
                ));
                false
            } else {
                true
            }
        })
        .collect();
    (configs, skipped)
}

/// The published rate matching a fraction of capacity, if it is one of them.
fn published_for_level(level: f64) -> Option<u32> {
    PUBLISHED_LEVELS
        .iter()
        .find(|(l, _)| (l - level).abs() < 1e-9)
        .map(|&(_, qps)| qps)
}

/// Runs the benchmark.
pub async fn run(
    options: &BenchOptions,
    progress: &mut dyn Progress,
) -> Result<BenchResults, BenchError> {
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    let (configs, skipped) = runnable_configs(options, is_root);
    for reason in &skipped {
        progress.line(reason);
    }
    if configs.is_empty() {
        return Err(BenchError::Nothing(skipped.join("; ")));
    }
    let started_unix_ns = unix_ns();
    let (sink, endpoint) = match &options.otlp_endpoint {
        Some(external) => (None, external.clone()),
        None => {
            let any = ([127, 0, 0, 1], 0).into();
            let sink = Sink::start(any, any).await?;
            let endpoint = format!("http://{}", sink.grpc_addr());
            (Some(sink), endpoint)
        }
    };
    let app_options = |config| {
        let mut o = AppOptions::new(
            config,
            options.app_dir.clone(),
            options.venv.clone(),
            endpoint.clone(),
        );
        o.workers = options.workers;
        o.worker_class = WorkerClass::Sync;
        o.app_core = options.app_core;
        o.tools_core = options.tools_core;
        o.tracer = options.tracer.clone();
        o.log_dir = options.log_dir.clone();
        o
    };

    let (capacity, rates) = match &options.rates {
        Rates::Absolute(rates) => (None, rates.iter().map(|&r| (r, None)).collect::<Vec<_>>()),
        Rates::Fractions(fractions) => {
            progress.line(&format!(
                "measuring the bare app's capacity ({}s at an offered {CAPACITY_PROBE_RATE} req/s)",
                options.capacity_probe.as_secs_f64()
            ));
            let capacity = measure_capacity(&app_options(Config::Bare), options).await?;
            progress.line(&format!("bare capacity: {capacity:.0} req/s"));
            let rates = fractions
                .iter()
                .map(|&f| ((f * capacity).round().max(1.0), Some(f)))
                .collect();
            (Some(capacity), rates)
        }
    };

    let total = options.runs * rates.len() * configs.len();
    let bench_start = Instant::now();
    let mut points = Vec::with_capacity(total);
    for run in 1..=options.runs {
        for &(rate, level) in &rates {
            for &config in &configs {
                let done = points.len();
                let left = if done == 0 {
                    String::from("?")
                } else {
                    let per_point = bench_start.elapsed().as_secs_f64() / done as f64;
                    format_duration(per_point * (total - done) as f64)
                };
                progress.line(&format!(
                    "[{}/{total}] {config} at {rate:.0} req/s, run {run}/{}, about {left} left",
                    done + 1,
                    options.runs
                ));
                let point =
                    measure_point(&app_options(config), options, sink.as_ref(), rate, run).await?;
                let point = Point {
                    level,
                    published_qps: level.map_or_else(
                        || {
                            PUBLISHED_LEVELS
                                .iter()
                                .find(|(_, q)| f64::from(*q) == rate)
                                .map(|&(_, q)| q)
                        },
                        published_for_level,
                    ),
                    ..point
                };
                if point.saturated {
                    progress.line(&format!(
                        "  {config} saturated: {:.0} of {rate:.0} req/s",
                        point.load.achieved_rate
                    ));
                }
                points.push(point);
            }
        }
    }
    if let Some(sink) = sink {
        sink.shutdown().await;
    }
    Ok(BenchResults {
        started_unix_ns,
        capacity,
        configs,
        rates: rates.iter().map(|&(r, _)| r).collect(),
        runs: options.runs,
        duration_s: options.duration.as_secs_f64(),
        connections: options.connections,
        external_collector: options.otlp_endpoint.clone(),
        skipped,
        points,
    })
}

fn format_duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    format!("{}m{:02}s", s / 60, s % 60)
}

fn load_config(options: &BenchOptions, app: &App, rate: f64, duration: Duration) -> LoadConfig {
    let mut config = LoadConfig::get(app.addr(), &options.path, rate, duration);
    config.connections = options.connections;
    config
}

async fn measure_capacity(
    app_options: &AppOptions,
    options: &BenchOptions,
) -> Result<f64, BenchError> {
    let app = App::start(app_options).await?;
    let warmup = load_config(options, &app, CAPACITY_PROBE_RATE, options.warmup);
    loadgen::run(warmup).await?;
    let probe = load_config(options, &app, CAPACITY_PROBE_RATE, options.capacity_probe);
    let report = loadgen::run(probe).await?;
    Ok(report.achieved_rate)
}

struct Sample {
    at: Instant,
    app_ns: u64,
    tracer_ns: Option<u64>,
    bpf: Option<BpfProgStats>,
}

fn sample(app: &App) -> Result<Sample, CpuError> {
    Ok(Sample {
        at: Instant::now(),
        app_ns: cpu::tree_cpu_ns(app.master_pid())?,
        tracer_ns: app.tracer_pid().map(cpu::process_cpu_ns).transpose()?,
        bpf: app.tracer_pid().map(cpu::bpf_prog_stats).transpose()?,
    })
}

async fn measure_point(
    app_options: &AppOptions,
    options: &BenchOptions,
    sink: Option<&Sink>,
    rate: f64,
    run: usize,
) -> Result<Point, BenchError> {
    let config = app_options.config;
    // Counting BPF run time has a small cost of its own: only for ebpf.
    let _bpf_stats = match config {
        Config::Ebpf => Some(BpfStatsGuard::enable()?),
        _ => None,
    };
    let mut app = App::start(app_options).await?;
    loadgen::run(load_config(options, &app, rate, options.warmup)).await?;
    tokio::time::sleep(WARMUP_GAP).await;
    if let Some(sink) = sink {
        sink.clear();
    }
    let before = sample(&app)?;
    let load = loadgen::run(load_config(options, &app, rate, options.duration)).await?;
    let after = sample(&app)?;
    app.check_alive()?;

    let requests = load.counts.responses();
    let wall_ns = after.at.duration_since(before.at).as_nanos() as u64;
    let app_cpu = CpuUsage {
        cpu_ns: after.app_ns.saturating_sub(before.app_ns),
        wall_ns,
    };
    let per_request = |ns: u64| {
        CpuUsage {
            cpu_ns: ns,
            wall_ns,
        }
        .us_per_request(requests)
    };
    let tracer_process = after
        .tracer_ns
        .zip(before.tracer_ns)
        .map(|(a, b)| per_request(a.saturating_sub(b)));
    let bpf = after.bpf.zip(before.bpf).map(|(a, b)| a.since(&b));

    let spans_received = match (sink, config.service_name()) {
        (Some(sink), Some(service)) => {
            Some(count_spans(sink, service, &load, options.flush_timeout).await)
        }
        _ => None,
    };
    app.stop();
    Ok(Point {
        config,
        rate,
        level: None,
        published_qps: None,
        run,
        saturated: load.achieved_rate < SATURATION_SHARE * rate,
        app_cpu_percent: app_cpu.percent_of_core(),
        app_cpu_us_per_request: app_cpu.us_per_request(requests),
        tracer_process_us_per_request: tracer_process,
        bpf_us_per_request: bpf.map(|b| per_request(b.run_time_ns)),
        bpf_run_count: bpf.map(|b| b.run_cnt),
        spans_received,
        load,
    })
}

/// Server spans of `service` that started within the measured window; waits
/// until there are as many as responses, or `timeout`.
async fn count_spans(sink: &Sink, service: &str, load: &LoadReport, timeout: Duration) -> u64 {
    let from = load.started_unix_ns.saturating_sub(50_000_000);
    let to = load.ended_unix_ns + 100_000_000;
    let count = || {
        sink.count_spans(|s| {
            s.service == service && s.kind == "SERVER" && (from..=to).contains(&s.start_unix_ns)
        })
    };
    let expected = load.counts.responses();
    let start = Instant::now();
    loop {
        let n = count();
        if n >= expected || start.elapsed() >= timeout {
            // A moment more, so that duplicates or late extras show up too.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return count();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> BenchOptions {
        BenchOptions {
            configs: Config::ALL.to_vec(),
            rates: Rates::Fractions(vec![0.17]),
            runs: 1,
            duration: Duration::from_secs(1),
            warmup: Duration::from_secs(1),
            capacity_probe: Duration::from_secs(1),
            connections: 20,
            path: "/work".into(),
            flush_timeout: Duration::from_secs(1),
            otlp_endpoint: None,
            tracer: None,
            app_dir: "app".into(),
            venv: ".venv".into(),
            log_dir: "/tmp".into(),
            workers: 3,
            app_core: 0,
            tools_core: 1,
        }
    }

    #[test]
    fn ebpf_needs_root_and_a_tracer() {
        let (configs, skipped) = runnable_configs(&options(), false);
        assert_eq!(configs, [Config::Bare, Config::Otel]);
        assert!(skipped[0].contains("needs root"), "{skipped:?}");
        let (configs, skipped) = runnable_configs(&options(), true);
        assert_eq!(configs, [Config::Bare, Config::Otel]);
        assert!(skipped[0].contains("tracer binary"), "{skipped:?}");
        let mut with_tracer = options();
        with_tracer.tracer = Some(std::env::current_exe().expect("exe"));
        let (configs, skipped) = runnable_configs(&with_tracer, true);
        assert_eq!(configs, Config::ALL);
        assert!(skipped.is_empty());
    }

    #[test]
    fn published_levels_map_to_published_rates() {
        assert_eq!(published_for_level(0.70), Some(1000));
        assert_eq!(published_for_level(0.5), None);
        assert_eq!(format_duration(125.4), "2m05s");
    }
}
