//! Starts and stops the Flask app under gunicorn in one of the three
//! configurations of the experiment, with the tracer for `ebpf`.
//!
//! Invariants: every child runs in its own process group and gets SIGKILL if
//! the harness thread that started it dies (`PR_SET_PDEATHSIG`); dropping an
//! [`App`] stops the tracer (SIGTERM, so it can flush) and then the whole
//! gunicorn group (SIGINT, then SIGKILL), so no child outlives the harness on
//! return, error or Ctrl-C. `taskset` and `opentelemetry-instrument` both
//! exec their command, so the pid we spawn is the gunicorn master.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cpu;
use crate::loadgen;
use crate::patience;
use crate::tls::ServerTls;
use crate::tracer::{Launch, TracerError, TracerProcess};

/// How long a stopped child gets before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Bytes of a log shown in an error.
const LOG_TAIL_BYTES: u64 = 2000;

/// The three configurations of the experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Config {
    /// gunicorn alone.
    Bare,
    /// Under OpenTelemetry Python auto-instrumentation.
    Otel,
    /// gunicorn alone, traced by the eBPF tracer.
    Ebpf,
}

impl Config {
    pub const ALL: [Config; 3] = [Config::Bare, Config::Otel, Config::Ebpf];

    pub fn name(self) -> &'static str {
        match self {
            Config::Bare => "bare",
            Config::Otel => "otel",
            Config::Ebpf => "ebpf",
        }
    }

    /// The `service.name` its spans carry, if it produces any.
    pub fn service_name(self) -> Option<&'static str> {
        match self {
            Config::Bare => None,
            Config::Otel => Some("flask-otel"),
            Config::Ebpf => Some("flask-ebpf"),
        }
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Config {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Config::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| format!("unknown configuration {s:?} (expected bare, otel or ebpf)"))
    }
}

/// gunicorn worker class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerClass {
    /// One request at a time per worker, connection closed after each response.
    Sync,
    /// Threaded workers that keep connections alive.
    Gthread { threads: u32 },
}

/// Everything needed to start one configuration.
#[derive(Debug, Clone)]
pub struct AppOptions {
    pub config: Config,
    /// Directory holding `app.py`.
    pub app_dir: PathBuf,
    /// The virtualenv with gunicorn and the OpenTelemetry distro.
    pub venv: PathBuf,
    /// 0 picks a free port.
    pub port: u16,
    pub workers: u32,
    pub worker_class: WorkerClass,
    /// Appended to gunicorn's arguments (e.g. `--max-requests 100`).
    pub extra_args: Vec<String>,
    /// Set in gunicorn's environment (e.g. where a route calls onward).
    pub env: Vec<(String, String)>,
    /// Core the app is pinned to.
    pub app_core: usize,
    /// Core the tracer is pinned to.
    pub tools_core: usize,
    /// OTLP/gRPC endpoint for `otel` and `ebpf`, e.g. `http://127.0.0.1:4317`.
    pub otlp_endpoint: String,
    /// The tracer binary, required for `ebpf`.
    pub tracer: Option<PathBuf>,
    /// Where gunicorn's and the tracer's output go.
    pub log_dir: PathBuf,
    pub startup_timeout: Duration,
    /// A cgroup v2 directory gunicorn starts in (it must exist).
    pub cgroup: Option<PathBuf>,
    /// Serve HTTPS (gunicorn `--certfile`/`--keyfile`); readiness is then
    /// probed over TLS.
    pub tls: Option<ServerTls>,
}

impl AppOptions {
    /// The experiment's defaults: 3 sync workers on core 0, tools on core 1.
    pub fn new(config: Config, app_dir: PathBuf, venv: PathBuf, otlp_endpoint: String) -> Self {
        Self {
            config,
            app_dir,
            venv,
            port: 0,
            workers: 3,
            worker_class: WorkerClass::Sync,
            extra_args: Vec::new(),
            env: Vec::new(),
            app_core: 0,
            tools_core: 1,
            otlp_endpoint,
            tracer: None,
            log_dir: std::env::temp_dir(),
            startup_timeout: Duration::from_secs(30),
            cgroup: None,
            tls: None,
        }
    }
}

/// Why the app could not be started.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{path} not found: create the virtualenv with `cargo xtask setup`")]
    MissingVenv { path: PathBuf },
    #[error("{path} not found: the app directory must hold app.py")]
    MissingApp { path: PathBuf },
    #[error("the ebpf configuration needs the tracer binary (--tracer PATH)")]
    MissingTracer,
    #[error("port {port} on 127.0.0.1 is already in use")]
    PortInUse { port: u16 },
    #[error("cannot {action}")]
    Io {
        action: String,
        #[source]
        source: io::Error,
    },
    #[error("{what} exited during start-up ({status}); last output:\n{tail}")]
    Exited {
        what: String,
        status: String,
        tail: String,
    },
    #[error("{what} was not ready after {timeout:?}; last output:\n{tail}")]
    NotReady {
        what: String,
        timeout: Duration,
        tail: String,
    },
    #[error(transparent)]
    Tracer(#[from] TracerError),
}

fn io_err(action: impl Into<String>) -> impl FnOnce(io::Error) -> AppError {
    let action = action.into();
    move |source| AppError::Io { action, source }
}

/// A running configuration.
#[derive(Debug)]
pub struct App {
    config: Config,
    addr: SocketAddr,
    gunicorn: Child,
    gunicorn_log: PathBuf,
    tracer: Option<TracerProcess>,
    tls: Option<ServerTls>,
}

impl App {
    /// Starts gunicorn (and the tracer for `ebpf`) and returns once GET
    /// /light answers 200 (and the tracer has loaded its programs).
    pub async fn start(options: &AppOptions) -> Result<App, AppError> {
        let gunicorn_bin = options.venv.join("bin/gunicorn");
        let instrument_bin = options.venv.join("bin/opentelemetry-instrument");
        for path in [&gunicorn_bin, &instrument_bin] {
            if !path.exists() {
                return Err(AppError::MissingVenv { path: path.clone() });
            }
        }
        let app_py = options.app_dir.join("app.py");
        if !app_py.exists() {
            return Err(AppError::MissingApp { path: app_py });
        }
        let tracer_bin = match (options.config, &options.tracer) {
            (Config::Ebpf, None) => return Err(AppError::MissingTracer),
            (Config::Ebpf, Some(path)) => Some(path.clone()),
            _ => None,
        };
        let port = free_port(options.port)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        std::fs::create_dir_all(&options.log_dir)
            .map_err(io_err(format!("create {}", options.log_dir.display())))?;

        let mut command = match &options.cgroup {
            // The shell moves itself into the cgroup, then becomes taskset,
            // which becomes gunicorn: one pid throughout.
            Some(cgroup) => {
                let mut shell = Command::new("sh");
                shell
                    .args(["-c", "echo 0 > \"$0/cgroup.procs\" && exec \"$@\""])
                    .arg(cgroup)
                    .arg("taskset");
                shell
            }
            None => Command::new("taskset"),
        };
        command.arg("-c").arg(options.app_core.to_string());
        if options.config == Config::Otel {
            command
                .arg(&instrument_bin)
                .args(["--traces_exporter", "otlp", "--metrics_exporter", "none"])
                .args(["--logs_exporter", "none", "--service_name", "flask-otel"])
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", &options.otlp_endpoint)
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
        }
        command
            .arg(&gunicorn_bin)
            .args(gunicorn_args(options, addr))
            .current_dir(&options.app_dir)
            .env("PYTHONUNBUFFERED", "1")
            .envs(options.env.iter().map(|(name, value)| (name, value)));
        // By port too: two apps of one configuration may run at once.
        let gunicorn_log = options
            .log_dir
            .join(format!("gunicorn-{}-{port}.log", options.config));
        let gunicorn = spawn(&mut command, &gunicorn_log, "gunicorn")?;
        let mut app = App {
            config: options.config,
            addr,
            gunicorn,
            gunicorn_log,
            tracer: None,
            tls: options.tls.clone(),
        };
        app.wait_healthy(
            patience::ceiling(options.startup_timeout),
            options.workers as usize,
        )
        .await?;

        if let Some(tracer_bin) = tracer_bin {
            let launch = Launch::attached(
                &tracer_bin,
                app.master_pid(),
                &options.otlp_endpoint,
                "flask-ebpf",
                options.tools_core,
                &[],
            )
            .log_file(options.log_dir.join("tracer.log"));
            // Started on this thread, not a pool thread: the tracer dies
            // with the thread that started it (PR_SET_PDEATHSIG), and pool
            // threads end when idle. Blocks until it is ready.
            app.tracer = Some(launch.start()?);
        }
        Ok(app)
    }

    pub fn config(&self) -> Config {
        self.config
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn master_pid(&self) -> u32 {
        self.gunicorn.id()
    }

    /// The workers currently forked by the master.
    pub fn worker_pids(&self) -> Result<Vec<u32>, cpu::CpuError> {
        cpu::children(self.master_pid())
    }

    pub fn tracer_pid(&self) -> Option<u32> {
        self.tracer.as_ref().map(TracerProcess::pid)
    }

    /// Waits until all `workers` are forked and GET /light answers 200.
    async fn wait_healthy(&mut self, timeout: Duration, workers: usize) -> Result<(), AppError> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            self.check_alive()?;
            let forked = self.worker_pids().map_or(0, |w| w.len());
            if forked >= workers
                && let Ok(200) = loadgen::probe(
                    self.addr,
                    "/light",
                    Duration::from_secs(2),
                    self.tls.as_ref().map(ServerTls::client),
                )
                .await
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(AppError::NotReady {
            what: format!("gunicorn ({}) on {}", self.config, self.addr),
            timeout,
            tail: log_tail(&self.gunicorn_log),
        })
    }

    /// Fails if gunicorn or the tracer has exited.
    pub fn check_alive(&mut self) -> Result<(), AppError> {
        let exited = |child: &mut Child, what: &str, log: &Path| match child.try_wait() {
            Ok(Some(status)) => Err(AppError::Exited {
                what: what.into(),
                status: status.to_string(),
                tail: log_tail(log),
            }),
            _ => Ok(()),
        };
        exited(&mut self.gunicorn, "gunicorn", &self.gunicorn_log)?;
        if let Some(tracer) = &mut self.tracer
            && let Some(status) = tracer.try_wait().map_err(io_err("wait for the tracer"))?
        {
            return Err(AppError::Exited {
                what: "the tracer".into(),
                status: status.to_string(),
                tail: tracer.log().join("\n"),
            });
        }
        Ok(())
    }

    /// Stops the tracer, then gunicorn. Also done on drop.
    pub fn stop(&mut self) {
        if let Some(mut tracer) = self.tracer.take() {
            let _ = tracer.stop();
        }
        stop_group(&mut self.gunicorn);
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop();
    }
}

fn gunicorn_args(options: &AppOptions, addr: SocketAddr) -> Vec<String> {
    let mut args = vec!["-w".to_owned(), options.workers.to_string()];
    match options.worker_class {
        WorkerClass::Sync => args.extend(["-k".into(), "sync".into()]),
        WorkerClass::Gthread { threads } => args.extend([
            "-k".into(),
            "gthread".into(),
            "--threads".into(),
            threads.to_string(),
        ]),
    }
    args.extend(["--no-control-socket".into(), "-b".into(), addr.to_string()]);
    if let Some(tls) = &options.tls {
        args.extend(["--certfile".into(), tls.certificate.display().to_string()]);
        args.extend(["--keyfile".into(), tls.key.display().to_string()]);
    }
    args.extend(options.extra_args.iter().cloned());
    args.push("app:app".into());
    args
}

/// `port`, checked to be free, or a free ephemeral port if 0.
/// `port` if it is free on 127.0.0.1 (any free one for 0). The check binds
/// without listening: a listen would be seen by a tracer selecting that
/// port, which would then trace this process.
pub fn free_port(port: u16) -> Result<u16, AppError> {
    use socket2::{Domain, Socket, Type};
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(io_err("open a socket"))?;
    // As gunicorn binds: a port that only has connections in TIME_WAIT
    // (a server just stopped) is free for it.
    socket
        .set_reuse_address(true)
        .map_err(io_err("set SO_REUSEADDR"))?;
    match socket.bind(&address.into()) {
        Ok(()) => socket
            .local_addr()
            .ok()
            .and_then(|bound| bound.as_socket())
            .map(|bound| bound.port())
            .ok_or_else(|| io_err("read a bound address")(io::Error::other("not an IP address"))),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(AppError::PortInUse { port }),
        Err(e) => Err(io_err(format!("bind 127.0.0.1:{port}"))(e)),
    }
}

fn spawn(command: &mut Command, log: &Path, what: &str) -> Result<Child, AppError> {
    let out = File::create(log).map_err(io_err(format!("create {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(io_err("duplicate a log file handle"))?;
    command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
        .spawn()
        .map_err(io_err(format!("start {what} ({command:?})")))
}

/// SIGINT to the child's process group, SIGKILL after [`STOP_GRACE`].
fn stop_group(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let Ok(pgid) = i32::try_from(child.id()) else {
        return;
    };
    // SAFETY: signals our own child's group (its pgid is its pid, set by
    // process_group(0)); no memory is involved.
    unsafe { libc::kill(-pgid, libc::SIGINT) };
    let start = Instant::now();
    while start.elapsed() < STOP_GRACE {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above; also reaps workers that ignored SIGINT.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
}

/// The last bytes of a log file, for error messages.
pub fn log_tail(path: &Path) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("({} unreadable)", path.display());
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
    let mut tail = String::new();
    let _ = file.read_to_string(&mut tail);
    tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_round_trip() {
        for config in Config::ALL {
            assert_eq!(config.name().parse::<Config>(), Ok(config));
        }
        assert!("nope".parse::<Config>().is_err());
    }

    #[test]
    fn gunicorn_command_line() {
        let mut options =
            AppOptions::new(Config::Bare, "app".into(), ".venv".into(), String::new());
        options.worker_class = WorkerClass::Gthread { threads: 4 };
        options.extra_args = vec!["--max-requests".into(), "50".into()];
        let args = gunicorn_args(&options, ([127, 0, 0, 1], 8000).into());
        assert_eq!(
            args.join(" "),
            "-w 3 -k gthread --threads 4 --no-control-socket -b 127.0.0.1:8000 --max-requests 50 app:app"
        );
    }

    #[test]
    fn port_in_use_is_reported() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert!(matches!(free_port(port), Err(AppError::PortInUse { .. })));
        assert_ne!(free_port(0).expect("free port"), 0);
    }

    #[tokio::test]
    async fn missing_venv_says_how_to_make_it() {
        let options = AppOptions::new(
            Config::Bare,
            "app".into(),
            "/nonexistent".into(),
            String::new(),
        );
        let err = App::start(&options).await.expect_err("must fail");
        assert!(err.to_string().contains("cargo xtask setup"), "{err}");
    }
}
