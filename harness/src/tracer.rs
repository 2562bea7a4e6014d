//! The tracer binary as a child process: the one way the harness, the
//! benchmarks and the tests start it. The child runs in its own process
//! group and gets SIGKILL if the thread that started it dies; its log is
//! kept in memory (and, if asked, echoed and written to a file); it is ready
//! once it sends `READY=1` on the `NOTIFY_SOCKET` it was given, as systemd's
//! `Type=notify` expects (programs attached, traced tree seeded); it is
//! stopped with SIGTERM, so it flushes, and killed on drop.
use std::{
    ffi::OsStr,
    fs,
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixDatagram, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, ExitStatus, Stdio},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::patience;

/// How long the tracer may take to load its programs before it is called
/// stuck (stretched by [`patience`]).
const READY_CEILING: Duration = Duration::from_secs(60);
/// Lines of the log shown in an error.
const LOG_TAIL_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum TracerError {
    /// The cause is in the message: tests print errors with `{}`.
    #[error("cannot {action}: {cause}")]
    Io { action: String, cause: io::Error },
    #[error("the tracer exited ({status}) before it was ready; last output:\n{tail}")]
    ExitedEarly { status: ExitStatus, tail: String },
    #[error("the tracer sent no READY=1 within {ceiling:?}; last output:\n{tail}")]
    NotReady { ceiling: Duration, tail: String },
    #[error(
        "the tracer logged no line containing {needle:?} within {ceiling:?}; last output:\n{tail}"
    )]
    NoSuchLine {
        needle: String,
        ceiling: Duration,
        tail: String,
    },
}

fn io_error(action: impl Into<String>) -> impl FnOnce(io::Error) -> TracerError {
    let action = action.into();
    move |cause| TracerError::Io { action, cause }
}

/// How to start the tracer: the command (the binary, or a wrapper such as
/// `taskset` or `setpriv` that execs it) and what to do with its output.
pub struct Launch {
    command: Command,
    /// Echo each log line to our stderr with this prefix (tests).
    echo: Option<String>,
    /// Also write the log to this file (benchmarks keep it with the run).
    log_file: Option<PathBuf>,
    /// Keep stdout piped for [`TracerProcess::take_stdout`] (`--print json`).
    stdout: bool,
}

impl Launch {
    /// `command` as given: its program and arguments are the caller's.
    pub fn new(command: Command) -> Self {
        Self {
            command,
            echo: None,
            log_file: None,
            stdout: false,
        }
    }

    /// `bin --pid pid --otlp-endpoint endpoint --service-name service
    /// extra_args…`, pinned to `core`.
    pub fn attached(
        bin: &Path,
        pid: u32,
        endpoint: &str,
        service: &str,
        core: usize,
        extra_args: &[&str],
    ) -> Self {
        let pid = pid.to_string();
        let selection = ["--pid", &pid, "--service-name", service];
        Self::pinned(bin, core, &[&selection[..], extra_args].concat(), endpoint)
    }

    /// `bin args… --otlp-endpoint endpoint`, pinned to `core`.
    pub fn pinned(bin: &Path, core: usize, args: &[&str], endpoint: &str) -> Self {
        let mut command = Command::new("taskset");
        command
            .args(["-c", &core.to_string()])
            .arg(bin)
            .args(args)
            .args(["--otlp-endpoint", endpoint]);
        Self::new(command)
    }

    pub fn echo(mut self, prefix: &str) -> Self {
        self.echo = Some(prefix.to_owned());
        self
    }

    pub fn log_file(mut self, path: PathBuf) -> Self {
        self.log_file = Some(path);
        self
    }

    pub fn piped_stdout(mut self) -> Self {
        self.stdout = true;
        self
    }

    /// Starts the tracer and returns once it is ready, or why it is not.
    pub fn start(mut self) -> Result<TracerProcess, TracerError> {
        let notify = NotifySocket::bind()?;
        let log = Arc::new(Log::default());
        let file = match &self.log_file {
            Some(path) => Some(
                fs::File::create(path).map_err(io_error(format!("create {}", path.display())))?,
            ),
            None => None,
        };
        self.command
            .env("NOTIFY_SOCKET", notify.path())
            .stdin(Stdio::null())
            .stdout(if self.stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .process_group(0);
        if std::env::var_os("RUST_LOG").is_none() {
            self.command.env("RUST_LOG", "info");
        }
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            self.command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = self
            .command
            .spawn()
            .map_err(io_error(format!("start the tracer ({:?})", self.command)))?;
        let stderr = child.stderr.take().ok_or_else(|| TracerError::Io {
            action: "read the tracer's stderr".into(),
            cause: io::ErrorKind::BrokenPipe.into(),
        })?;
        log.follow(stderr, self.echo, file);
        let mut tracer = TracerProcess { child, log };
        tracer.wait_ready(&notify)?;
        Ok(tracer)
    }
}

/// A running tracer.
pub struct TracerProcess {
    child: Child,
    log: Arc<Log>,
}

impl TracerProcess {
    /// [`Launch::attached`], started: the tracer on `core`, tracing `pid`.
    pub fn start(
        bin: &Path,
        pid: u32,
        endpoint: &str,
        service: &str,
        core: usize,
        extra_args: &[&str],
    ) -> Result<Self, TracerError> {
        Launch::attached(bin, pid, endpoint, service, core, extra_args).start()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory in KiB: (now, peak).
    pub fn memory_kib(&self) -> io::Result<(u64, u64)> {
        memory_kib(self.pid())
    }

    /// Everything the tracer logged so far, one line each.
    pub fn log(&self) -> Vec<String> {
        self.log.lines()
    }

    /// Waits until the tracer logs a line containing `needle` (counting
    /// lines already logged) and returns it.
    pub fn wait_for_line(&self, needle: &str, ceiling: Duration) -> Result<String, TracerError> {
        let ceiling = patience::ceiling(ceiling);
        self.log
            .wait_for(ceiling, |lines| {
                lines.iter().find(|line| line.contains(needle)).cloned()
            })
            .ok_or_else(|| TracerError::NoSuchLine {
                needle: needle.to_owned(),
                ceiling,
                tail: self.log.tail(),
            })
    }

    /// The tracer's stdout, if [`Launch::piped_stdout`] kept it.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// SIGTERM, then the exit status once it has flushed and exited; its
    /// log stays readable.
    pub fn stop(&mut self) -> io::Result<ExitStatus> {
        self.signal(libc::SIGTERM);
        let status = self.child.wait()?;
        self.log.wait_closed();
        Ok(status)
    }

    /// The exit status if the tracer has exited, without waiting.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// The exit status, once the tracer has exited by itself.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        let status = self.child.wait()?;
        self.log.wait_closed();
        Ok(status)
    }

    fn signal(&self, signal: i32) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signals our own child; no memory is involved.
            unsafe { libc::kill(pid, signal) };
        }
    }

    fn wait_ready(&mut self, notify: &NotifySocket) -> Result<(), TracerError> {
        let ceiling = patience::ceiling(READY_CEILING);
        let deadline = Instant::now() + ceiling;
        loop {
            if notify.received_ready()? {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .try_wait()
                .map_err(io_error("wait for the tracer"))?
            {
                self.log.wait_closed();
                return Err(TracerError::ExitedEarly {
                    status,
                    tail: self.log.tail(),
                });
            }
            if Instant::now() >= deadline {
                return Err(TracerError::NotReady {
                    ceiling,
                    tail: self.log.tail(),
                });
            }
        }
    }
}

impl std::fmt::Debug for TracerProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracerProcess")
            .field("pid", &self.pid())
            .finish_non_exhaustive()
    }
}

impl Drop for TracerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tracer's log lines, filled by a reader thread, with a condition
/// variable for those who wait on a line.
#[derive(Default)]
struct Log {
    state: Mutex<LogState>,
    changed: Condvar,
}

#[derive(Default)]
struct LogState {
    lines: Vec<String>,
    closed: bool,
}

impl Log {
    /// Reads `pipe` to its end on a thread of its own, so the tracer never
    /// blocks on a full pipe.
    fn follow(
        self: &Arc<Self>,
        pipe: impl io::Read + Send + 'static,
        echo: Option<String>,
        mut file: Option<fs::File>,
    ) {
        let log = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(prefix) = &echo {
                    eprintln!("{prefix}{line}");
                }
                if let Some(file) = file.as_mut() {
                    let _ = writeln!(file, "{line}");
                }
                log.update(|state| state.lines.push(line));
            }
            log.update(|state| state.closed = true);
        });
    }

    fn update(&self, change: impl FnOnce(&mut LogState)) {
        let mut state = self.lock();
        change(&mut state);
        self.changed.notify_all();
    }

    fn lines(&self) -> Vec<String> {
        self.lock().lines.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Waits until `found` finds something in the lines, the log closes, or
    /// `ceiling` passes.
    fn wait_for<T>(&self, ceiling: Duration, found: impl Fn(&[String]) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + ceiling;
        let mut state = self.lock();
        loop {
            if let Some(value) = found(&state.lines) {
                return Some(value);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if state.closed || left.is_zero() {
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|poison| poison.into_inner())
                .0;
        }
    }

    /// Waits until the reader has seen the end of the pipe (the tracer has
    /// exited), so the log is whole.
    fn wait_closed(&self) {
        let mut state = self.lock();
        while !state.closed {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(|poison| poison.into_inner());
        }
    }

    fn tail(&self) -> String {
        let state = self.lock();
        state.lines[state.lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

/// A datagram socket for systemd's notification protocol, bound at a fresh
/// path that anyone may write to (the tracer may run as another user),
/// removed on drop.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

/// How often the readiness wait looks at the child between datagrams.
const NOTIFY_POLL: Duration = Duration::from_millis(100);

impl NotifySocket {
    fn bind() -> Result<Self, TracerError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "tracer-notify-{}-{}.sock",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_file(&path);
        let bind = io_error(format!("bind {}", path.display()));
        let socket = UnixDatagram::bind(&path).map_err(bind)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o777))
            .map_err(io_error(format!("open {} to the tracer", path.display())))?;
        socket
            .set_read_timeout(Some(NOTIFY_POLL))
            .map_err(io_error("set a read timeout"))?;
        Ok(Self { socket, path })
    }

    fn path(&self) -> &OsStr {
        self.path.as_os_str()
    }

    /// Whether a datagram holding `READY=1` arrived within one poll.
    fn received_ready(&self) -> Result<bool, TracerError> {
        let mut buffer = [0u8; 4096];
        match self.socket.recv(&mut buffer) {
            Ok(len) => Ok(String::from_utf8_lossy(&buffer[..len])
                .lines()
                .any(|line| line == "READY=1")),
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(false)
            }
            Err(err) => Err(io_error("read the notify socket")(err)),
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Resident memory of process `pid` in KiB: (now, peak), from
/// `/proc/<pid>/status`.
pub fn memory_kib(pid: u32) -> io::Result<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .ok_or_else(|| io::Error::other(format!("no {name} in /proc/{pid}/status")))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}
