//! How the tracer exits: one code per kind of failure, so scripts, tests and
//! systemd can tell them apart.
use std::process::ExitCode;

/// The tracer's exit codes; this is their one definition.
///
/// Codes for failures that a restart cannot fix are
/// [`Exit::is_permanent_failure`]: `deploy/tracer.service` lists exactly
/// those in `RestartPreventExitStatus=` (a test checks).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Stopped by SIGINT or SIGTERM (pending spans flushed), or the whole
    /// traced tree exited; `tracer doctor`: tracing can run here.
    Ok = 0,
    /// Anything else: an I/O error (reading capabilities, polling the ring
    /// buffer, installing signal handlers), or no async runtime.
    Failure = 1,
    /// Bad arguments or configuration.
    Usage = 2,
    /// A `--pid` names no running process.
    NoSuchPid = 3,
    /// Neither root nor CAP_BPF + CAP_PERFMON.
    NotPermitted = 4,
    /// The kernel cannot run the tracer: no BTF, no ring buffer, no probe
    /// set loads, or a BPF map refused an update; `tracer doctor`: a check
    /// failed (privileges included), tracing cannot run here.
    KernelUnsupported = 6,
    /// The OTLP exporter could not be set up.
    ExporterSetup = 7,
    /// The Prometheus endpoint cannot listen on its address, most often a
    /// port in use: a restart may find it free.
    PrometheusListen = 8,
}

impl Exit {
    pub const ALL: [Exit; 8] = [
        Self::Ok,
        Self::Failure,
        Self::Usage,
        Self::NoSuchPid,
        Self::NotPermitted,
        Self::KernelUnsupported,
        Self::ExporterSetup,
        Self::PrometheusListen,
    ];

    /// The process exit status.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// A failure that restarting the tracer unchanged will not fix.
    pub const fn is_permanent_failure(self) -> bool {
        match self {
            Self::Usage | Self::NoSuchPid | Self::NotPermitted | Self::KernelUnsupported => true,
            Self::Ok | Self::Failure | Self::ExporterSetup | Self::PrometheusListen => false,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_does_not_restart_on_permanent_failures() {
        let unit = include_str!("../../deploy/tracer.service");
        let mut listed: Vec<u8> = unit
            .lines()
            .find_map(|line| line.strip_prefix("RestartPreventExitStatus="))
            .expect("the unit sets RestartPreventExitStatus=")
            .split_whitespace()
            .map(|code| code.parse().expect("a numeric exit status"))
            .collect();
        listed.sort_unstable();
        let permanent: Vec<u8> = Exit::ALL
            .into_iter()
            .filter(|exit| exit.is_permanent_failure())
            .map(Exit::code)
            .collect();
        assert_eq!(listed, permanent, "ALL is in ascending order");
    }
}
