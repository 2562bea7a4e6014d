//! `harness selection`: what process selection costs and how soon it
//! traces, with the real tracer and a real gunicorn:
//!
//! 1. time from a new gunicorn master's exec to its first traced request,
//!    and the share of its first requests that became spans (`--exe`);
//! 2. the tracer's CPU while idle with selectors that match nothing;
//! 3. the tracer's CPU while the host execs short processes at a fixed
//!    rate (every exec reaches the daemon through the exec hook), beside
//!    the exec loop's own CPU without and with the tracer.
//!
//! `harness selection --tracer target/release/tracer --out docs/results/selection.md`
use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    affinity::pin_current_thread,
    app::{self, App, AppOptions, Config},
    clock,
    cpu::BpfStatsGuard,
    loadgen,
    measure::{SERVER_CORE, TOOLS_CORE, TracerCpu, TracerCpuUsage},
    patience,
    report::median,
    setup::Setup,
    sink::{ReceivedSpan, Sink},
    tracer::{Launch, TracerProcess},
};

/// The path of the requests counted: not the readiness probe's `/light`.
const COUNTED_PATH: &str = "/work";
/// The `--exe` selector, as a user would write it.
const EXE_SELECTOR: &str = "gunicorn";
/// Between attempts to reach a gunicorn that is not listening yet.
const CONNECT_RETRY: Duration = Duration::from_millis(5);
/// Long enough that no request times out while queued in the listen
/// backlog (a timed-out request answered later would be an extra span).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long gunicorn may take to answer, and the spans to arrive.
const STARTUP_CEILING: Duration = Duration::from_secs(30);
const SPANS_CEILING: Duration = Duration::from_secs(30);
/// A fresh tracer's start-up work is over by then.
const SETTLE: Duration = Duration::from_secs(2);
const EXEC_PROGRAM: &str = "/bin/true";

#[derive(clap::Args, Debug, Clone)]
pub struct SelectionOptions {
    /// The tracer binary.
    #[arg(long, default_value = "target/release/tracer")]
    pub tracer: PathBuf,
    /// gunicorn starts measured (time to first span).
    #[arg(long, default_value_t = 5)]
    pub starts: usize,
    /// Requests sent to each new instance as soon as it answers.
    #[arg(long, default_value_t = 100)]
    pub requests: u64,
    /// Seconds of the idle window.
    #[arg(long, default_value_t = 60)]
    pub idle_seconds: u64,
    /// Seconds of each exec-loop window (one without, one with the tracer).
    #[arg(long, default_value_t = 60)]
    pub exec_seconds: u64,
    /// Execs per second of the exec loop.
    #[arg(long, default_value_t = 100.0)]
    pub exec_rate: f64,
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/app"))]
    pub app_dir: PathBuf,
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv"))]
    pub venv: PathBuf,
    /// Also write the report here (markdown).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs the three measurements and returns the report (markdown). Call
/// from a thread pinned to the tools core, as root.
pub async fn run(options: &SelectionOptions) -> Result<String> {
    let tracer_bin = check_inputs(options)?;
    if options.exec_rate <= 0.0 || !options.exec_rate.is_finite() {
        bail!("--exec-rate must be a positive number of execs per second");
    }
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    let setup = Setup::collect(&options.venv, Some(&tracer_bin), command_line);
    let log_dir = std::env::temp_dir().join(format!("harness-selection-{}", std::process::id()));
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let sink = Sink::start(loopback, loopback)
        .await
        .context("starting the OTLP sink")?;
    let endpoint = format!("http://{}", sink.grpc_addr());

    // 1. New instances under --exe.
    let mut tracer = start_tracer(
        &tracer_bin,
        &endpoint,
        &["--exe", EXE_SELECTOR],
        &log_dir.join("tracer-starts.log"),
    )?;
    let mut starts = Vec::with_capacity(options.starts);
    for run in 1..=options.starts {
        let start = measure_start(options, &sink, &log_dir).await?;
        eprintln!(
            "selection: start {run}/{}: answered after {:.0} ms, first span {:.0} ms, {}/{} spans",
            options.starts,
            start.answered_ms,
            start.first_span_ms.unwrap_or(f64::NAN),
            start.spans,
            start.answered
        );
        starts.push(start);
        if let Some(status) = tracer.try_wait()? {
            bail!(
                "the tracer exited ({status}); last output:\n{}",
                tracer.log().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tracer.stop()?;
    drop(tracer);

    // 3a. The exec loop alone.
    let exec_window = Duration::from_secs(options.exec_seconds);
    eprintln!(
        "selection: exec loop without the tracer ({} s)",
        options.exec_seconds
    );
    let bare_loop = exec_loop_off_runtime(options.exec_rate, exec_window).await?;

    // 2. Idle, then 3b. the exec loop, under one tracer whose selectors
    // match nothing.
    let unused_port = app::free_port(0)?.to_string();
    let selectors = ["--exe", EXE_SELECTOR, "--port", unused_port.as_str()];
    let tracer = start_tracer(
        &tracer_bin,
        &endpoint,
        &selectors,
        &log_dir.join("tracer-idle.log"),
    )?;
    let bpf_stats = BpfStatsGuard::enable()?;
    tokio::time::sleep(SETTLE).await;
    eprintln!("selection: tracer idle ({} s)", options.idle_seconds);
    let idle_window = Duration::from_secs(options.idle_seconds);
    let idle_cpu = TracerCpu::start(&tracer)?;
    tokio::time::sleep(idle_window).await;
    let idle = idle_cpu.since_start(idle_window)?;
    eprintln!(
        "selection: exec loop with the tracer ({} s)",
        options.exec_seconds
    );
    let exec_cpu = TracerCpu::start(&tracer)?;
    let traced_loop = exec_loop_off_runtime(options.exec_rate, exec_window).await?;
    let busy = exec_cpu.since_start(traced_loop.wall)?;
    drop(bpf_stats);
    drop(tracer);
    sink.shutdown().await;
    let _ = std::fs::remove_dir_all(&log_dir);

    Ok(Report {
        options,
        setup: &setup,
        starts: &starts,
        idle,
        bare_loop,
        traced_loop,
        busy,
        unused_port: &unused_port,
    }
    .markdown()?)
}

/// The tracer binary (absolute), once it and the venv are known to exist.
fn check_inputs(options: &SelectionOptions) -> Result<PathBuf> {
    let tracer = std::fs::canonicalize(&options.tracer).with_context(|| {
        format!(
            "tracer binary {} not found: build it (cargo xtask build --release) or give --tracer PATH",
            options.tracer.display()
        )
    })?;
    let gunicorn = options.venv.join("bin/gunicorn");
    if !gunicorn.exists() {
        bail!(
            "{} not found: create the virtualenv with `cargo xtask setup` or give --venv PATH",
            gunicorn.display()
        );
    }
    Ok(tracer)
}

/// The tracer on the tools core with `selectors`, exporting to the sink.
fn start_tracer(
    bin: &Path,
    endpoint: &str,
    selectors: &[&str],
    log: &Path,
) -> Result<TracerProcess> {
    Launch::pinned(bin, TOOLS_CORE, selectors, endpoint)
        .log_file(log.to_owned())
        .start()
        .context("starting the tracer")
}

/// One new gunicorn instance, seen from its exec.
#[derive(Clone, Debug, PartialEq)]
struct StartRun {
    master: u32,
    /// Exec to the start of the first request that was answered (it waits
    /// in the listen backlog until a worker takes it).
    sent_ms: f64,
    /// Exec to the first 200 of the counted path.
    answered_ms: f64,
    /// Exec to the start of the instance's first span (any path).
    first_span_ms: Option<f64>,
    /// Requests to the counted path that were answered.
    answered: u64,
    /// Spans of the instance on the counted path.
    spans: u64,
    /// Spans of the instance on other paths (the readiness probe).
    other_spans: u64,
}

/// Spawns gunicorn under the running `--exe` tracer and, from the moment
/// it answers, sends it `options.requests` requests; counts its spans.
async fn measure_start(
    options: &SelectionOptions,
    sink: &Sink,
    log_dir: &Path,
) -> Result<StartRun> {
    let port = app::free_port(0)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut app_options = AppOptions::new(
        Config::Bare,
        options.app_dir.clone(),
        options.venv.clone(),
        String::new(),
    );
    app_options.port = port;
    app_options.app_core = SERVER_CORE;
    app_options.tools_core = TOOLS_CORE;
    app_options.log_dir = log_dir.to_owned();
    let exec_unix_ns = clock::unix_ns();
    let exec = Instant::now();
    let (app, fired) = tokio::join!(App::start(&app_options), fire(addr, options.requests, exec));
    let app = app.context("starting gunicorn")?;
    let fired = fired?;
    let master = app.master_pid();
    let deadline = Instant::now() + patience::ceiling(SPANS_CEILING);
    let counted = loop {
        let counted = InstanceSpans::of(&sink.spans(), master, COUNTED_PATH);
        if counted.on_path >= fired.answered || Instant::now() >= deadline {
            break counted;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    drop(app);
    Ok(StartRun {
        master,
        sent_ms: fired.first_sent.as_secs_f64() * 1e3,
        answered_ms: fired.first_answer.as_secs_f64() * 1e3,
        first_span_ms: counted
            .first_start_unix_ns
            .map(|start| (start as f64 - exec_unix_ns as f64) / 1e6),
        answered: fired.answered,
        spans: counted.on_path,
        other_spans: counted.other,
    })
}

struct Fired {
    /// From the exec to the start of the first answered request.
    first_sent: Duration,
    /// From the exec to the first answer.
    first_answer: Duration,
    answered: u64,
}

/// Tries [`COUNTED_PATH`] until it answers, then sends the rest of
/// `requests` one after another.
async fn fire(addr: SocketAddr, requests: u64, exec: Instant) -> Result<Fired> {
    let deadline = exec + patience::ceiling(STARTUP_CEILING);
    let (first_sent, first_answer) = loop {
        let sent = exec.elapsed();
        match loadgen::probe(addr, COUNTED_PATH, REQUEST_TIMEOUT, None).await {
            Ok(200) => break (sent, exec.elapsed()),
            Ok(status) => bail!("GET {COUNTED_PATH} answered {status}"),
            Err(_) if Instant::now() < deadline => tokio::time::sleep(CONNECT_RETRY).await,
            Err(err) => {
                return Err(err).with_context(|| format!("gunicorn on {addr} never answered"));
            }
        }
    };
    let mut answered = 1;
    for _ in 1..requests {
        if let Ok(200) = loadgen::probe(addr, COUNTED_PATH, REQUEST_TIMEOUT, None).await {
            answered += 1;
        }
    }
    Ok(Fired {
        first_sent,
        first_answer,
        answered,
    })
}

/// The SERVER spans of one instance (resource `process.pid`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct InstanceSpans {
    first_start_unix_ns: Option<u64>,
    on_path: u64,
    other: u64,
}

impl InstanceSpans {
    fn of(spans: &[ReceivedSpan], master: u32, path: &str) -> Self {
        let mut found = Self::default();
        let mine = spans.iter().filter(|span| {
            span.kind == "SERVER"
                && span.resource.get("process.pid").and_then(|v| v.as_i64())
                    == Some(i64::from(master))
        });
        for span in mine {
            found.first_start_unix_ns = Some(
                found
                    .first_start_unix_ns
                    .map_or(span.start_unix_ns, |first| first.min(span.start_unix_ns)),
            );
            if span.attributes.get("url.path").and_then(|v| v.as_str()) == Some(path) {
                found.on_path += 1;
            } else {
                found.other += 1;
            }
        }
        found
    }
}

/// What one window of the exec loop did.
#[derive(Clone, Copy, Debug, PartialEq)]
struct ExecLoop {
    scheduled: u64,
    /// Execs that ran and exited 0.
    ran: u64,
    wall: Duration,
    /// The loop thread's CPU and its reaped children's (the execs).
    thread_cpu: Duration,
    children_cpu: Duration,
    /// How late the latest exec started against its deadline.
    worst_lateness: Duration,
}

impl ExecLoop {
    fn rate(&self) -> f64 {
        self.ran as f64 / self.wall.as_secs_f64()
    }

    fn percent_of_core(&self) -> f64 {
        (self.thread_cpu + self.children_cpu).as_secs_f64() / self.wall.as_secs_f64() * 100.0
    }
}

/// [`exec_loop`] on a blocking thread, so the runtime (the sink) runs on.
async fn exec_loop_off_runtime(rate: f64, window: Duration) -> Result<ExecLoop> {
    tokio::task::spawn_blocking(move || {
        pin_current_thread(TOOLS_CORE)
            .with_context(|| format!("pinning the exec loop to core {TOOLS_CORE}"))?;
        exec_loop(rate, window)
    })
    .await
    .context("the exec loop panicked")?
}

/// Execs of a window of `window` at `rate`.
fn execs_in(window: Duration, rate: f64) -> u64 {
    (window.as_secs_f64() * rate).round() as u64
}

/// Runs [`EXEC_PROGRAM`] `rate` times a second for `window`, from this
/// thread: exec `i` starts at its absolute
/// deadline `i / rate` after the start (at once if the loop is behind), so
/// lateness never accumulates into a lower rate.
fn exec_loop(rate: f64, window: Duration) -> Result<ExecLoop> {
    let scheduled = execs_in(window, rate);
    let (thread_before, children_before) = (thread_cpu()?, children_cpu()?);
    let start = Instant::now();
    let mut ran = 0;
    let mut worst_lateness = Duration::ZERO;
    for i in 0..scheduled {
        let deadline = start + Duration::from_nanos(loadgen::scheduled_offset_ns(i, rate));
        let now = Instant::now();
        match deadline.checked_duration_since(now) {
            Some(wait) => std::thread::sleep(wait),
            None => worst_lateness = worst_lateness.max(now - deadline),
        }
        let status = Command::new(EXEC_PROGRAM)
            .status()
            .with_context(|| format!("running {EXEC_PROGRAM}"))?;
        if status.success() {
            ran += 1;
        }
    }
    if let Some(rest) = (start + window).checked_duration_since(Instant::now()) {
        std::thread::sleep(rest);
    }
    let wall = start.elapsed();
    Ok(ExecLoop {
        scheduled,
        ran,
        wall,
        thread_cpu: thread_cpu()?.saturating_sub(thread_before),
        children_cpu: children_cpu()?.saturating_sub(children_before),
        worst_lateness,
    })
}

/// This thread's CPU time.
fn thread_cpu() -> Result<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return Err(std::io::Error::last_os_error()).context("reading this thread's CPU time");
    }
    Ok(Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    ))
}

/// User + system time of this process's reaped children.
fn children_cpu() -> Result<Duration> {
    // SAFETY: rusage is plain data; all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: writes one rusage we own.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return Err(std::io::Error::last_os_error()).context("reading the children's CPU time");
    }
    let time = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    Ok(time(usage.ru_utime) + time(usage.ru_stime))
}

struct Report<'a> {
    options: &'a SelectionOptions,
    setup: &'a Setup,
    starts: &'a [StartRun],
    idle: TracerCpuUsage,
    bare_loop: ExecLoop,
    traced_loop: ExecLoop,
    busy: TracerCpuUsage,
    unused_port: &'a str,
}

/// `value` with `digits` decimals, "–" if absent.
fn fixed(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "–".into(), |v| format!("{v:.digits$}"))
}

impl Report<'_> {
    fn markdown(&self) -> Result<String, std::fmt::Error> {
        let (o, s) = (self.options, self.setup);
        let mut md = String::new();
        writeln!(
            md,
            "# Process selection: time to first span, idle and exec cost\n"
        )?;
        writeln!(
            md,
            "`harness selection --tracer {} --out docs/results/selection.md` (as root), on {} \
             ({}, {} CPUs, {}), Linux {}; tracer {}.\n",
            o.tracer.display(),
            s.host,
            s.cpu_model,
            s.cpus,
            s.memory,
            s.kernel,
            s.tracer
        )?;
        writeln!(
            md,
            "Method. gunicorn (3 sync workers) on core {SERVER_CORE}; the tracer, the harness, \
             its OTLP sink and the exec loop on core {TOOLS_CORE}. (1) A tracer started with \
             `--exe {EXE_SELECTOR}` runs first; then, {} times, the harness spawns a new \
             gunicorn (`App::start`; the spawn instant is the exec time), tries GET \
             {COUNTED_PATH} every {} ms until it answers (a connection accepted into the \
             listen backlog waits there until a worker is up: the first answered request is \
             sent before the port answers), and sends {} requests in all, one after another; the readiness probe of `App` (GET /light) runs alongside and is \
             counted apart. Spans are counted at the sink by resource `process.pid` = the \
             master's pid and `url.path`; the first span is the instance's earliest SERVER \
             span of any path, its start (the tracer's timestamp of the request) against the \
             wall clock at the spawn. (2) A fresh tracer with `--exe {EXE_SELECTOR} --port \
             {}` (a port nobody listens on), {} s after it is ready, for {} s with nothing \
             matching: its CPU is the sum of its threads' run time from \
             `/proc/<pid>/task/*/schedstat` over the window; its BPF programs' run time \
             (`kernel.bpf_stats_enabled`, counted in whatever task triggers them) apart. \
             Other work on the host keeps running: its execs and sockets reach the tracer's \
             programs too. (3) The same tracer while a thread on core {TOOLS_CORE} runs \
             `{EXEC_PROGRAM}` {} times a second for {} s (absolute deadlines, waited on \
             each), and the same loop without the tracer first; the loop's CPU is its \
             thread's (`CLOCK_THREAD_CPUTIME_ID`) plus its reaped children's \
             (`RUSAGE_CHILDREN`), which holds the exec hook's run time when the tracer runs.\n",
            o.starts,
            CONNECT_RETRY.as_millis(),
            o.requests,
            self.unused_port,
            SETTLE.as_secs(),
            o.idle_seconds,
            o.exec_rate,
            o.exec_seconds,
        )?;

        writeln!(
            md,
            "## 1. A new gunicorn under `--exe {EXE_SELECTOR}`: exec to first span\n"
        )?;
        writeln!(
            md,
            "| run | master pid | exec → first answered request sent (ms) | exec → port answers (ms) | exec → first span start (ms) | spans / requests to {COUNTED_PATH} | probe spans (/light) |"
        )?;
        writeln!(md, "|---|---|---|---|---|---|---|")?;
        for (run, start) in self.starts.iter().enumerate() {
            writeln!(
                md,
                "| {} | {} | {:.1} | {:.1} | {} | {}/{} | {} |",
                run + 1,
                start.master,
                start.sent_ms,
                start.answered_ms,
                fixed(start.first_span_ms, 1),
                start.spans,
                start.answered,
                start.other_spans
            )?;
        }
        let column = |f: fn(&StartRun) -> Option<f64>| {
            let values: Vec<f64> = self.starts.iter().filter_map(f).collect();
            median(&values)
        };
        writeln!(
            md,
            "| median | | {} | {} | {} | {} | |\n",
            fixed(column(|s| Some(s.sent_ms)), 1),
            fixed(column(|s| Some(s.answered_ms)), 1),
            fixed(column(|s| s.first_span_ms), 1),
            fixed(
                column(|s| Some(s.spans as f64 / s.answered.max(1) as f64 * 100.0)),
                0
            ) + "%"
        )?;

        writeln!(
            md,
            "## 2 and 3. The tracer's CPU with selectors matching nothing\n"
        )?;
        writeln!(
            md,
            "| window | execs run (scheduled) | exec rate (/s) | tracer process CPU (ms) | tracer process (% of a core) | tracer BPF programs (ms) | exec loop CPU (% of a core) |"
        )?;
        writeln!(md, "|---|---|---|---|---|---|---|")?;
        let cpu_ms = |usage: &TracerCpuUsage| usage.process.cpu_ns as f64 / 1e6;
        let bpf = |usage: &TracerCpuUsage| format!("{:.1}", usage.bpf.cpu_ns as f64 / 1e6);
        writeln!(
            md,
            "| idle, {} s | – | – | {:.1} | {:.4}% | {} | – |",
            o.idle_seconds,
            cpu_ms(&self.idle),
            self.idle.process.percent_of_core(),
            bpf(&self.idle),
        )?;
        for (what, exec, tracer) in [
            ("exec loop without tracer", &self.bare_loop, None),
            ("exec loop with tracer", &self.traced_loop, Some(&self.busy)),
        ] {
            writeln!(
                md,
                "| {what}, {:.1} s | {} ({}) | {:.2} | {} | {} | {} | {:.2}% |",
                exec.wall.as_secs_f64(),
                exec.ran,
                exec.scheduled,
                exec.rate(),
                tracer.map_or_else(|| "–".into(), |t| format!("{:.1}", cpu_ms(t))),
                tracer.map_or_else(
                    || "–".into(),
                    |t| format!("{:.3}%", t.process.percent_of_core())
                ),
                tracer.map_or_else(|| "–".into(), bpf),
                exec.percent_of_core(),
            )?;
        }
        writeln!(
            md,
            "\nThe exec loop's worst lateness against its schedule: {:.1} ms without the \
             tracer, {:.1} ms with it.",
            self.bare_loop.worst_lateness.as_secs_f64() * 1e3,
            self.traced_loop.worst_lateness.as_secs_f64() * 1e3
        )?;
        Ok(md)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::{AttrValue, Attributes};

    fn span(pid: i64, path: &str, kind: &str, start: u64) -> ReceivedSpan {
        ReceivedSpan {
            service: "gunicorn".into(),
            resource: Attributes::from([("process.pid".into(), AttrValue::Int(pid))]),
            name: format!("GET {path}"),
            kind: kind.into(),
            trace_id: String::new(),
            span_id: String::new(),
            parent_span_id: String::new(),
            start_unix_ns: start,
            end_unix_ns: start + 1,
            attributes: Attributes::from([("url.path".into(), AttrValue::Str(path.into()))]),
            status_code: 0,
        }
    }

    #[test]
    fn an_instance_is_its_pid_and_its_server_spans() {
        let spans = [
            span(7, "/work", "SERVER", 30),
            span(7, "/light", "SERVER", 20),
            span(7, "/work", "SERVER", 40),
            span(8, "/work", "SERVER", 10),
            span(7, "/work", "CLIENT", 5),
        ];
        assert_eq!(
            InstanceSpans::of(&spans, 7, "/work"),
            InstanceSpans {
                first_start_unix_ns: Some(20),
                on_path: 2,
                other: 1
            }
        );
        assert_eq!(
            InstanceSpans::of(&spans, 9, "/work"),
            InstanceSpans::default()
        );
    }

    #[test]
    fn exec_windows_hold_rate_times_seconds() {
        assert_eq!(execs_in(Duration::from_secs(60), 100.0), 6000);
        assert_eq!(execs_in(Duration::from_millis(1500), 10.0), 15);
        assert_eq!(execs_in(Duration::ZERO, 100.0), 0);
        // The deadlines the loop waits for: exactly 10 ms apart at 100/s.
        assert_eq!(loadgen::scheduled_offset_ns(5999, 100.0), 59_990_000_000);
    }

    #[test]
    fn exec_loop_keeps_its_rate_and_counts_its_children() {
        let run = exec_loop(50.0, Duration::from_millis(200)).expect("exec loop");
        assert_eq!((run.scheduled, run.ran), (10, 10));
        assert!(run.wall >= Duration::from_millis(200), "{:?}", run.wall);
        assert!(run.percent_of_core() > 0.0);
    }

    #[test]
    fn missing_inputs_fail_clearly() {
        let mut options = SelectionOptions {
            tracer: "/nonexistent/tracer".into(),
            starts: 1,
            requests: 1,
            idle_seconds: 1,
            exec_seconds: 1,
            exec_rate: 1.0,
            app_dir: "app".into(),
            venv: "/nonexistent".into(),
            out: None,
        };
        let err = check_inputs(&options).expect_err("no tracer");
        assert!(err.to_string().contains("--tracer PATH"), "{err:#}");
        options.tracer = std::env::current_exe().expect("own binary");
        let err = check_inputs(&options).expect_err("no venv");
        assert!(err.to_string().contains("cargo xtask setup"), "{err:#}");
    }
}
