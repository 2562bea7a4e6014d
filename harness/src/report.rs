//! The results folder of a benchmark: `raw.json`, `raw.csv` (one row per
//! configuration × rate × run), `summary.md` (the published experiment's
//! tables, overhead ratios against `bare`, span counts, the published numbers
//! normalised to their own baseline) and `SETUP.md`.
//!
//! Everything here is a pure function of [`BenchResults`] except the writing
//! itself, so reports can be tested on synthetic results. Medians are over
//! runs; the spread shown next to them is the minimum and maximum.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::app::Config;
use crate::bench::{BenchResults, Point};
use crate::setup::Setup;

/// p50 and p99 in ms.
pub type P50P99 = (f64, f64);

/// One rate of the published result (docs/results.md).
#[derive(Debug, Clone, Copy)]
pub struct Published {
    pub qps: u32,
    pub bare: P50P99,
    /// Not run at 1250 req/s: saturated.
    pub otel: Option<P50P99>,
    pub beyla: P50P99,
}

pub const PUBLISHED: [Published; 4] = [
    Published {
        qps: 250,
        bare: (7.84, 15.04),
        otel: Some((10.58, 21.38)),
        beyla: (8.02, 15.92),
    },
    Published {
        qps: 500,
        bare: (7.63, 14.95),
        otel: Some((10.67, 27.31)),
        beyla: (8.04, 15.74),
    },
    Published {
        qps: 1000,
        bare: (7.52, 14.86),
        otel: Some((27.07, 171.18)),
        beyla: (7.79, 16.07),
    },
    Published {
        qps: 1250,
        bare: (7.75, 21.83),
        otel: None,
        beyla: (8.20, 30.81),
    },
];

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot serialise the results")]
    Json(#[from] serde_json::Error),
}

fn write(path: PathBuf, contents: impl AsRef<[u8]>) -> Result<PathBuf, ReportError> {
    fs::write(&path, contents).map_err(|source| ReportError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Creates `root/<YYYY-MM-DD>-<host>/` (with `-2`, `-3`, ... if it exists).
pub fn create_results_dir(root: &Path, unix_ns: u64, host: &str) -> Result<PathBuf, ReportError> {
    let base = format!("{}-{host}", utc_date(unix_ns));
    let mut dir = root.join(&base);
    let mut n = 2;
    while dir.exists() {
        dir = root.join(format!("{base}-{n}"));
        n += 1;
    }
    fs::create_dir_all(&dir).map_err(|source| ReportError::Write {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

/// `YYYY-MM-DD` (UTC) of a Unix time in ns.
pub fn utc_date(unix_ns: u64) -> String {
    // Civil-from-days, after Howard Hinnant's public-domain algorithm.
    let days = (unix_ns / 1_000_000_000 / 86_400) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Writes raw.json, raw.csv, summary.md and SETUP.md into `dir`.
pub fn write_reports(
    dir: &Path,
    results: &BenchResults,
    setup: &Setup,
) -> Result<Vec<PathBuf>, ReportError> {
    Ok(vec![
        write(dir.join("raw.json"), serde_json::to_string_pretty(results)?)?,
        write(dir.join("raw.csv"), csv(results))?,
        write(dir.join("summary.md"), summary(results))?,
        write(dir.join("SETUP.md"), setup_markdown(setup, results))?,
    ])
}

const CSV_HEADER: &str = "config,rate,level,run,achieved_rate,saturated,scheduled,sent,responses,ok_2xx,non_2xx,connect_errors,timeouts,resets,other_errors,unfinished,p50_ms,p75_ms,p90_ms,p99_ms,p99_9_ms,p99_99_ms,max_ms,mean_ms,app_cpu_percent,app_cpu_us_per_request,tracer_process_us_per_request,bpf_us_per_request,bpf_run_count,spans_received";

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

/// One row per configuration × rate × run.
pub fn csv(results: &BenchResults) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    for p in &results.points {
        let c = &p.load.counts;
        let l = &p.load.latency;
        let non_2xx = c
            .non_2xx
            .iter()
            .map(|(status, n)| format!("{status}:{n}"))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(
            out,
            "{},{},{},{},{:.2},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.2},{:.1},{},{},{},{}",
            p.config,
            p.rate,
            opt(p.level),
            p.run,
            p.load.achieved_rate,
            p.saturated,
            c.scheduled,
            c.sent,
            c.responses(),
            c.ok_2xx,
            non_2xx,
            c.connect_errors,
            c.timeouts,
            c.resets,
            c.other_errors,
            c.unfinished,
            l.p50_ms,
            l.p75_ms,
            l.p90_ms,
            l.p99_ms,
            l.p99_9_ms,
            l.p99_99_ms,
            l.max_ms,
            l.mean_ms,
            p.app_cpu_percent,
            p.app_cpu_us_per_request,
            opt(p.tracer_process_us_per_request.map(|v| format!("{v:.2}"))),
            opt(p.bpf_us_per_request.map(|v| format!("{v:.2}"))),
            opt(p.bpf_run_count),
            opt(p.spans_received),
        );
    }
    out
}

/// Median of `values` (None if empty).
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    })
}

fn points(results: &BenchResults, config: Config, rate: f64) -> impl Iterator<Item = &Point> {
    results
        .points
        .iter()
        .filter(move |p| p.config == config && p.rate == rate)
}

fn values(
    results: &BenchResults,
    config: Config,
    rate: f64,
    f: impl Fn(&Point) -> Option<f64>,
) -> Vec<f64> {
    points(results, config, rate).filter_map(f).collect()
}

/// "median [min–max]" (just the value for a single run, "–" for none).
fn spread(values: &[f64], digits: usize) -> String {
    let Some(m) = median(values) else {
        return "–".into();
    };
    if values.len() < 2 {
        return format!("{m:.digits$}");
    }
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{m:.digits$} [{min:.digits$}–{max:.digits$}]")
}

/// Ratio of medians config/bare, with the range of per-run ratios.
fn ratio(results: &BenchResults, config: Config, rate: f64, f: impl Fn(&Point) -> f64) -> String {
    let ours: Vec<&Point> = points(results, config, rate).collect();
    let bare: Vec<&Point> = points(results, Config::Bare, rate).collect();
    let med = |ps: &[&Point]| median(&ps.iter().map(|p| f(p)).collect::<Vec<_>>());
    let (Some(a), Some(b)) = (med(&ours), med(&bare)) else {
        return "–".into();
    };
    if b == 0.0 {
        return "–".into();
    }
    let per_run: Vec<f64> = ours
        .iter()
        .filter_map(|o| {
            let base = bare.iter().find(|b| b.run == o.run)?;
            (f(base) > 0.0).then(|| f(o) / f(base))
        })
        .collect();
    let range = if per_run.len() > 1 {
        let min = per_run.iter().copied().fold(f64::INFINITY, f64::min);
        let max = per_run.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!(" [{min:.2}–{max:.2}]")
    } else {
        String::new()
    };
    format!("{:.2}{range}", a / b)
}

fn rate_label(results: &BenchResults, rate: f64) -> String {
    let level = results
        .points
        .iter()
        .find(|p| p.rate == rate)
        .and_then(|p| p.level);
    match level {
        Some(level) => format!("{rate:.0} ({:.0}%)", level * 100.0),
        None => format!("{rate:.0}"),
    }
}

/// The whole `summary.md`.
pub fn summary(results: &BenchResults) -> String {
    let mut out = String::new();
    let runs = results.runs;
    let _ = writeln!(out, "# Benchmark: bare vs OpenTelemetry vs eBPF tracer\n");
    let _ = writeln!(
        out,
        "Started {} (UTC). {} run(s) of {:.0} s per configuration and rate, {} connections, configurations interleaved. \
         Latency is measured from each request's scheduled send time (open loop, coordinated-omission corrected). \
         Values are medians over runs, with [min–max] when there are several.\n",
        utc_date(results.started_unix_ns),
        runs,
        results.duration_s,
        results.connections
    );
    if let Some(capacity) = results.capacity {
        let _ = writeln!(
            out,
            "Bare capacity measured at **{capacity:.0} req/s**; rates are fractions of it (the published 250/500/1000/1250 req/s were 17/33/70/90% of bare CPU).\n"
        );
    }
    for reason in &results.skipped {
        let _ = writeln!(out, "> **Note:** {reason}\n");
    }

    let _ = writeln!(out, "## Latency\n");
    let _ = writeln!(
        out,
        "| rate (req/s) | config | p50 ms | p99 ms | max ms | achieved req/s | status |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for &rate in &results.rates {
        for &config in &results.configs {
            let saturated: Vec<&Point> = points(results, config, rate)
                .filter(|p| p.saturated)
                .collect();
            let status = if saturated.is_empty() {
                "ok".to_owned()
            } else {
                let achieved: Vec<f64> = saturated.iter().map(|p| p.load.achieved_rate).collect();
                format!(
                    "**saturated** in {}/{runs} run(s), achieved {}",
                    saturated.len(),
                    spread(&achieved, 0)
                )
            };
            let _ = writeln!(
                out,
                "| {} | {config} | {} | {} | {} | {} | {status} |",
                rate_label(results, rate),
                spread(
                    &values(results, config, rate, |p| Some(p.load.latency.p50_ms)),
                    2
                ),
                spread(
                    &values(results, config, rate, |p| Some(p.load.latency.p99_ms)),
                    2
                ),
                spread(
                    &values(results, config, rate, |p| Some(p.load.latency.max_ms)),
                    2
                ),
                spread(
                    &values(results, config, rate, |p| Some(p.load.achieved_rate)),
                    0
                ),
            );
        }
    }

    let _ = writeln!(out, "\n## CPU\n");
    let _ = writeln!(
        out,
        "App CPU is gunicorn's master and workers (incl. recycled workers) as % of one core and µs per request. \
         Tracer CPU is the tracer process plus the run time of its BPF programs (`kernel.bpf_stats_enabled`); \
         BPF programs run in the context of the task that triggers them, so that time is also inside the app's CPU.\n"
    );
    let _ = writeln!(
        out,
        "| rate (req/s) | config | app CPU % | app CPU µs/req | tracer µs/req | of which BPF µs/req | BPF runs/req |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for &rate in &results.rates {
        for &config in &results.configs {
            let runs_per_req = |p: &Point| {
                let n = p.load.counts.responses();
                p.bpf_run_count
                    .filter(|_| n > 0)
                    .map(|c| c as f64 / n as f64)
            };
            let _ = writeln!(
                out,
                "| {} | {config} | {} | {} | {} | {} | {} |",
                rate_label(results, rate),
                spread(
                    &values(results, config, rate, |p| Some(p.app_cpu_percent)),
                    1
                ),
                spread(
                    &values(results, config, rate, |p| Some(p.app_cpu_us_per_request)),
                    0
                ),
                spread(
                    &values(results, config, rate, Point::tracer_us_per_request),
                    2
                ),
                spread(&values(results, config, rate, |p| p.bpf_us_per_request), 2),
                spread(&values(results, config, rate, runs_per_req), 1),
            );
        }
    }

    summary_spans(&mut out, results);

    let _ = writeln!(out, "\n## Overhead against bare\n");
    let _ = writeln!(
        out,
        "Ratio of the medians (config / bare at the same rate), [range of the per-run ratios].\n"
    );
    let _ = writeln!(
        out,
        "| rate (req/s) | config | p50 | p99 | max | app CPU µs/req |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for &rate in &results.rates {
        for &config in results.configs.iter().filter(|&&c| c != Config::Bare) {
            let _ = writeln!(
                out,
                "| {} | {config} | {} | {} | {} | {} |",
                rate_label(results, rate),
                ratio(results, config, rate, |p| p.load.latency.p50_ms),
                ratio(results, config, rate, |p| p.load.latency.p99_ms),
                ratio(results, config, rate, |p| p.load.latency.max_ms),
                ratio(results, config, rate, |p| p.app_cpu_us_per_request),
            );
        }
    }

    summary_published(&mut out, results);
    summary_errors(&mut out, results);
    out
}

fn summary_spans(out: &mut String, results: &BenchResults) {
    let _ = writeln!(out, "\n## Spans received against requests\n");
    if let Some(endpoint) = &results.external_collector {
        let _ = writeln!(
            out,
            "Spans went to the external collector {endpoint} and were not counted here."
        );
        return;
    }
    let _ = writeln!(
        out,
        "Server spans whose start lies in the measured window, against requests answered in it. Any difference is flagged.\n"
    );
    let _ = writeln!(
        out,
        "| rate (req/s) | config | run | requests | spans | difference |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    let mut mismatches = 0;
    for p in results.points.iter().filter(|p| p.spans_received.is_some()) {
        let spans = p.spans_received.unwrap_or(0);
        let requests = p.spans_expected();
        let diff = spans as i64 - requests as i64;
        let flag = if diff == 0 {
            "0".to_owned()
        } else {
            mismatches += 1;
            format!("**{diff:+} ⚠**")
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {requests} | {spans} | {flag} |",
            rate_label(results, p.rate),
            p.config,
            p.run
        );
    }
    let _ = writeln!(
        out,
        "\n{}",
        if mismatches == 0 {
            "Every span count equals its request count.".to_owned()
        } else {
            format!("**⚠ {mismatches} point(s) where spans received differ from requests sent.**")
        }
    );
}

fn summary_published(out: &mut String, results: &BenchResults) {
    let _ = writeln!(out, "\n## Published numbers next to ours\n");
    let _ = writeln!(
        out,
        "Each side normalised to its own bare baseline (p50 ratio / p99 ratio), so shapes compare across machines. \
         Published: i7-1280P, Linux 6.2, wrk2, Beyla as the eBPF tracer.\n"
    );
    let _ = writeln!(
        out,
        "| published rate | our rate | published OTel | published Beyla | our otel | our ebpf |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    let pair = |p50: String, p99: String| format!("{p50} / {p99}");
    for Published {
        qps,
        bare,
        otel,
        beyla,
    } in PUBLISHED
    {
        let ours = results.rates.iter().copied().find(|&r| {
            results
                .points
                .iter()
                .any(|p| p.rate == r && p.published_qps == Some(qps))
        });
        let published = |v: Option<(f64, f64)>| {
            v.map_or("saturated".into(), |(p50, p99)| {
                pair(
                    format!("{:.2}", p50 / bare.0),
                    format!("{:.2}", p99 / bare.1),
                )
            })
        };
        let mine = |config: Config| match ours {
            Some(rate) if results.configs.contains(&config) => pair(
                ratio(results, config, rate, |p| p.load.latency.p50_ms),
                ratio(results, config, rate, |p| p.load.latency.p99_ms),
            ),
            _ => "not run".into(),
        };
        let _ = writeln!(
            out,
            "| {qps} | {} | {} | {} | {} | {} |",
            ours.map_or("–".into(), |r| rate_label(results, r)),
            published(otel),
            published(Some(beyla)),
            mine(Config::Otel),
            mine(Config::Ebpf),
        );
    }
    let _ = writeln!(
        out,
        "\nPublished app CPU at 1000 req/s: bare 70%, OTel 95%, Beyla 72% plus 6% for Beyla itself."
    );
}

fn summary_errors(out: &mut String, results: &BenchResults) {
    let failed: Vec<&Point> = results
        .points
        .iter()
        .filter(|p| {
            let c = &p.load.counts;
            !c.non_2xx.is_empty()
                || c.connect_errors + c.timeouts + c.resets + c.other_errors + c.unfinished > 0
                || c.sent < c.scheduled
        })
        .collect();
    if failed.is_empty() {
        let _ = writeln!(
            out,
            "\n## Errors\n\nNone: every scheduled request was sent and answered 2xx."
        );
        return;
    }
    let _ = writeln!(out, "\n## Errors\n");
    let _ = writeln!(
        out,
        "| rate | config | run | not sent | non-2xx | connect | timeout | reset | other | unfinished |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for p in failed {
        let c = &p.load.counts;
        let _ = writeln!(
            out,
            "| {:.0} | {} | {} | {} | {:?} | {} | {} | {} | {} | {} |",
            p.rate,
            p.config,
            p.run,
            c.scheduled - c.sent,
            c.non_2xx,
            c.connect_errors,
            c.timeouts,
            c.resets,
            c.other_errors,
            c.unfinished
        );
    }
}

/// The whole `SETUP.md`.
pub fn setup_markdown(setup: &Setup, results: &BenchResults) -> String {
    let mut out = String::from("# Setup\n\n");
    let rows = [
        ("host", setup.host.clone()),
        (
            "CPU",
            format!("{} ({} online)", setup.cpu_model, setup.cpus),
        ),
        ("memory", setup.memory.clone()),
        ("kernel", setup.kernel.clone()),
        ("python", setup.python.clone()),
        ("python packages", setup.python_packages.join(", ")),
        ("harness", setup.harness_version.clone()),
        ("tracer", setup.tracer.clone()),
        ("command line", format!("`{}`", setup.command_line)),
        ("started (UTC date)", utc_date(results.started_unix_ns)),
        (
            "configurations",
            results
                .configs
                .iter()
                .map(|c| c.name())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (
            "rates (req/s)",
            results
                .rates
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (
            "runs × duration",
            format!("{} × {:.0} s", results.runs, results.duration_s),
        ),
        ("connections", results.connections.to_string()),
        (
            "OTLP",
            results
                .external_collector
                .clone()
                .unwrap_or_else(|| "embedded sink (OTLP/gRPC on loopback)".into()),
        ),
    ];
    out.push_str("| | |\n|---|---|\n");
    for (key, value) in rows {
        let _ = writeln!(out, "| {key} | {value} |");
    }
    out.push_str(
        "\nThe app (gunicorn, 3 sync workers) is pinned to core 0 with `taskset`; the harness (load generator, \
         OTLP sink) and the tracer run on core 1. Each point starts the configuration afresh, warms it up at the \
         target rate, then measures.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400 * 1_000_000_000), "2000-02-29");
        assert_eq!(utc_date(1_798_761_599 * 1_000_000_000), "2026-12-31");
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(spread(&[3.0, 1.0, 2.0], 1), "2.0 [1.0–3.0]");
        assert_eq!(spread(&[3.0], 1), "3.0");
    }
}
