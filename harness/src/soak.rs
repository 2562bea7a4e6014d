//! The soak: the Flask app under gunicorn with `--max-requests`, so workers
//! are re-forked all the time, traced for minutes at a constant rate. It
//! checks that every request became a span, that the tracer's memory stays
//! flat, and that its kernel maps hold no entry for a task that is gone.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    app::{App, AppOptions, Config},
    cpu,
    loadgen::{self, LoadConfig},
    losses::Losses,
    measure,
};

/// The tracer's maps keyed by something that ends: tasks and connections.
const TRACKED_MAPS: [&str; 2] = ["TRACED_TASKS", "CONNECTIONS"];
/// Minutes are loaded in slices of this, with the tracer's memory sampled
/// between them.
const SLICE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub duration: Duration,
    pub rate: f64,
    /// gunicorn's `--max-requests`: each worker is replaced after this many.
    pub max_requests: u32,
    pub tracer: PathBuf,
    pub app_dir: PathBuf,
    pub venv: PathBuf,
}

#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    pub requests: u64,
    pub spans: u64,
    /// The tracer's loss counters, as last exported.
    pub losses: Losses,
    /// The tracer's resident memory in KiB, after each slice of load.
    pub rss_kib: Vec<u64>,
    /// Distinct worker pids seen, and how many were alive at the end.
    pub workers_seen: usize,
    pub workers_alive: usize,
    /// Entries in the tracer's maps at the end, by map.
    pub map_entries: BTreeMap<String, usize>,
    /// `TRACED_TASKS` keys whose task no longer exists.
    pub dead_tasks: Vec<u32>,
}

impl SoakReport {
    /// What is wrong, if anything: the soak's pass criteria.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if self.spans != self.requests {
            failures.push(format!(
                "{} spans for {} requests (losses: {})",
                self.spans, self.requests, self.losses
            ));
        }
        if let (Some(first), Some(last)) = (self.rss_kib.first(), self.rss_kib.last())
            && *last > first + first / 10
        {
            failures.push(format!("tracer memory grew from {first} to {last} KiB"));
        }
        if !self.dead_tasks.is_empty() {
            failures.push(format!(
                "TRACED_TASKS holds tasks that are gone: {:?}",
                self.dead_tasks
            ));
        }
        // Closed connections are removed; a few may be open or closing.
        let connections = self.map_entries.get("CONNECTIONS").copied().unwrap_or(0);
        if connections > 64 {
            failures.push(format!("CONNECTIONS holds {connections} entries at rest"));
        }
        if self.workers_seen <= self.workers_alive {
            failures.push("no worker was re-forked: the soak tested nothing".into());
        }
        failures
    }

    pub fn markdown(&self, options: &SoakOptions) -> Result<String> {
        let mut out = String::new();
        writeln!(
            out,
            "# Soak: {:.0} s at {:.0} requests/s, gunicorn --max-requests {}\n",
            options.duration.as_secs_f64(),
            options.rate,
            options.max_requests
        )?;
        writeln!(out, "| measure | value |\n|---|---|")?;
        writeln!(out, "| requests answered | {} |", self.requests)?;
        writeln!(out, "| server spans received | {} |", self.spans)?;
        let ratio = self.spans as f64 / self.requests.max(1) as f64;
        writeln!(out, "| spans / requests | {ratio:.4} |")?;
        writeln!(
            out,
            "| requests lost (counted) | {} |",
            self.losses.requests()
        )?;
        writeln!(out, "| losses counted | {} |", self.losses)?;
        writeln!(
            out,
            "| workers seen / alive at the end | {} / {} |",
            self.workers_seen, self.workers_alive
        )?;
        let (first, last) = (
            self.rss_kib.first().copied().unwrap_or(0),
            self.rss_kib.last().copied().unwrap_or(0),
        );
        writeln!(out, "| tracer RSS start → end (KiB) | {first} → {last} |")?;
        writeln!(
            out,
            "| tracer RSS every {} s (KiB) | {:?} |",
            SLICE.as_secs(),
            self.rss_kib
        )?;
        for (map, entries) in &self.map_entries {
            writeln!(out, "| `{map}` entries at the end | {entries} |")?;
        }
        writeln!(
            out,
            "| dead tasks left in `TRACED_TASKS` | {} |",
            self.dead_tasks.len()
        )?;
        let failures = self.failures();
        writeln!(
            out,
            "\nVerdict: {}",
            if failures.is_empty() {
                "pass".to_owned()
            } else {
                format!("FAIL: {}", failures.join("; "))
            }
        )?;
        Ok(out)
    }
}

/// Runs the soak. Call from a thread pinned to the tools core
/// ([`measure::pin_to_tools_core`]).
pub async fn run(options: &SoakOptions) -> Result<SoakReport> {
    let sink = measure::start_sink().await?;
    let mut app_options = AppOptions::new(
        Config::Ebpf,
        options.app_dir.clone(),
        options.venv.clone(),
        format!("http://{}", sink.grpc_addr()),
    );
    app_options.tracer = Some(options.tracer.clone());
    app_options.log_dir = std::env::temp_dir().join(format!("soak-{}", std::process::id()));
    let jitter = (options.max_requests / 4).to_string();
    app_options.extra_args = vec![
        "--max-requests".into(),
        options.max_requests.to_string(),
        "--max-requests-jitter".into(),
        jitter,
    ];
    let app = App::start(&app_options).await.context("starting the app")?;
    let tracer = app.tracer_pid().context("the app has no tracer")?;
    let service = Config::Ebpf.service_name().unwrap_or_default();

    let mut report = SoakReport {
        rss_kib: vec![rss_kib(tracer)?],
        ..SoakReport::default()
    };
    let mut workers = std::collections::BTreeSet::new();
    let mut left = options.duration;
    while !left.is_zero() {
        let slice = left.min(SLICE);
        let mut load = LoadConfig::get(app.addr(), "/light", options.rate, slice);
        load.connections = 20;
        // Workers live seconds each: sample the tree often to count them.
        let master = app.master_pid();
        let sample_workers = async {
            loop {
                workers.extend(cpu::children(master).unwrap_or_default());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let result = tokio::select! {
            result = loadgen::run(load) => result?,
            never = sample_workers => never,
        };
        let counts = &result.counts;
        if counts.responses() != counts.sent {
            bail!("the app failed requests during the soak: {counts:?}");
        }
        report.requests += counts.responses();
        report.rss_kib.push(rss_kib(tracer)?);
        left -= slice;
    }

    // Everything sent is answered; give the tracer time to export it all.
    let accounted = measure::wait_until_accounted(&sink, service, report.requests).await?;
    report.spans = accounted.spans;
    report.losses = accounted.losses;
    report.workers_alive = app.worker_pids()?.len();
    report.workers_seen = workers.len();
    let maps = tracked_maps(tracer)?;
    for (name, keys) in &maps {
        report.map_entries.insert(name.clone(), keys.len());
    }
    if let Some(tasks) = maps.get("TRACED_TASKS") {
        report.dead_tasks = tasks
            .iter()
            .filter_map(|key| {
                key.first_chunk::<4>()
                    .map(|bytes| u32::from_le_bytes(*bytes))
            })
            .filter(|pid| !Path::new(&format!("/proc/{pid}")).exists())
            .collect();
    }
    Ok(report)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let (rss, _) = crate::tracer::memory_kib(pid)
        .with_context(|| format!("reading the tracer's memory (pid {pid})"))?;
    Ok(rss)
}

/// The keys of the tracer's [`TRACKED_MAPS`], read with bpftool from the
/// maps its file descriptors hold.
fn tracked_maps(tracer: u32) -> Result<BTreeMap<String, Vec<Vec<u8>>>> {
    let mut maps = BTreeMap::new();
    for id in cpu::bpf_map_ids(tracer)? {
        let info = bpftool(&["map", "show", "id", &id.to_string()])?;
        let name = info["name"].as_str().unwrap_or_default().to_owned();
        if !TRACKED_MAPS.contains(&name.as_str()) {
            continue;
        }
        let dump = bpftool(&["map", "dump", "id", &id.to_string()])?;
        let keys = dump
            .as_array()
            .context("bpftool map dump did not give a list")?
            .iter()
            .map(|entry| {
                entry["key"]
                    .as_array()
                    .map(|bytes| {
                        bytes
                            .iter()
                            .filter_map(|b| b.as_str())
                            .filter_map(|b| u8::from_str_radix(b.trim_start_matches("0x"), 16).ok())
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect();
        maps.insert(name, keys);
    }
    Ok(maps)
}

fn bpftool(args: &[&str]) -> Result<serde_json::Value> {
    let output = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .context("running bpftool (cargo xtask setup installs it)")?;
    if !output.status.success() {
        bail!(
            "bpftool {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).context("bpftool printed no JSON")
}
