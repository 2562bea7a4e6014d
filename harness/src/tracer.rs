//! The tracer binary as a child process: attached to a pid, pinned to the
//! tools core, ready once it logs that it is tracing, stopped with SIGTERM.
use std::{
    fs,
    io::{self, Read as _},
    path::Path,
    process::{Child, Command, Stdio},
};

/// What the tracer logs once its programs are attached.
const READY: &str = "tracer::daemon] tracing ";

pub struct TracerProcess(Child);

impl TracerProcess {
    /// Starts `bin --pid pid --otlp-endpoint endpoint --service-name service
    /// extra_args…` on `core` and waits until it traces.
    pub fn start(
        bin: &Path,
        pid: u32,
        endpoint: &str,
        service: &str,
        core: usize,
        extra_args: &[&str],
    ) -> io::Result<Self> {
        let mut child = Command::new("taskset")
            .args(["-c", &core.to_string()])
            .arg(bin)
            .args(["--pid", &pid.to_string(), "--service-name", service])
            .args(["--otlp-endpoint", endpoint])
            .args(extra_args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stderr = child.stderr.take().ok_or(io::ErrorKind::BrokenPipe)?;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains(READY) {
            let n = stderr.read(&mut buf)?;
            if n == 0 {
                let _ = child.wait();
                return Err(io::Error::other(format!(
                    "the tracer exited before tracing: {}",
                    String::from_utf8_lossy(&seen)
                )));
            }
            seen.extend_from_slice(&buf[..n]);
        }
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || io::copy(&mut stderr, &mut io::sink()));
        Ok(Self(child))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Resident memory in KiB: (now, peak).
    pub fn memory_kib(&self) -> io::Result<(u64, u64)> {
        memory_kib(self.pid())
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

impl Drop for TracerProcess {
    fn drop(&mut self) {
        // SAFETY: signals our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}
