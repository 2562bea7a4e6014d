//! A description of the machine and software a benchmark ran on, for
//! `SETUP.md`: host, CPU, memory, kernel, tool versions, command line.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

/// Python packages whose versions matter to the experiment.
const PYTHON_PACKAGES: [&str; 5] = [
    "flask",
    "gunicorn",
    "opentelemetry-sdk",
    "opentelemetry-distro",
    "opentelemetry-instrumentation-flask",
];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    pub host: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub memory: String,
    pub kernel: String,
    pub python: String,
    pub python_packages: Vec<String>,
    pub harness_version: String,
    pub tracer: String,
    pub command_line: String,
}

/// The host name, for the results folder and the report.
pub fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".into())
}

fn first_line_with(path: &str, key: &str) -> String {
    fs::read_to_string(path)
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn output(program: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    Some(text.trim().to_owned())
}

impl Setup {
    /// Reads everything from /proc and the tools themselves.
    pub fn collect(venv: &Path, tracer: Option<&Path>, command_line: String) -> Self {
        let python = venv.join("bin/python");
        let freeze = output(&python, &["-m", "pip", "freeze"]).unwrap_or_default();
        let python_packages = freeze
            .lines()
            .filter(|l| {
                let name = l
                    .split("==")
                    .next()
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                PYTHON_PACKAGES.contains(&name.as_str())
            })
            .map(str::to_owned)
            .collect();
        Self {
            host: host_name(),
            cpu_model: first_line_with("/proc/cpuinfo", "model name"),
            cpus: crate::affinity::online_cpus(),
            memory: first_line_with("/proc/meminfo", "MemTotal"),
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|k| k.trim().to_owned())
                .unwrap_or_default(),
            python: output(&python, &["--version"]).unwrap_or_else(|| "not found".into()),
            python_packages,
            harness_version: env!("CARGO_PKG_VERSION").into(),
            tracer: tracer.map_or_else(
                || "not used".into(),
                |t| {
                    format!(
                        "{} ({})",
                        t.display(),
                        output(t, &["--version"]).unwrap_or_default()
                    )
                },
            ),
            command_line,
        }
    }
}
