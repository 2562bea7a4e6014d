//! Report generation from synthetic results: files, tables, flags.

use std::collections::BTreeMap;
use std::path::PathBuf;

use harness::app::Config;
use harness::bench::{BenchResults, Point};
use harness::latency::{self, LatencySummary};
use harness::loadgen::{Counts, LoadReport};
use harness::setup::Setup;
use harness::{plot, report};

fn latency(p50_ms: f64) -> LatencySummary {
    let mut h = latency::new_histogram();
    for i in 0..1000u64 {
        // p50 at `p50_ms`, a tail to twice that.
        let ms = if i < 500 {
            p50_ms * 0.9
        } else {
            p50_ms * (1.0 + i as f64 / 1000.0)
        };
        latency::record(&mut h, (ms * 1e6) as u64);
    }
    LatencySummary::from_histogram(&h)
}

fn point(
    config: Config,
    rate: f64,
    level: f64,
    run: usize,
    p50_ms: f64,
    spans: Option<u64>,
) -> Point {
    let responses = (rate * 10.0) as u64;
    Point {
        config,
        rate,
        level: Some(level),
        published_qps: harness::bench::PUBLISHED_LEVELS
            .iter()
            .find(|l| l.0 == level)
            .map(|l| l.1),
        run,
        saturated: config == Config::Otel && level > 0.5,
        load: LoadReport {
            target_rate: rate,
            achieved_rate: if config == Config::Otel && level > 0.5 {
                rate * 0.8
            } else {
                rate
            },
            duration_s: 10.0,
            connections: 20,
            started_unix_ns: 1_800_000_000_000_000_000,
            ended_unix_ns: 1_800_000_010_000_000_000,
            counts: Counts {
                scheduled: responses,
                sent: responses,
                ok_2xx: responses,
                non_2xx: BTreeMap::new(),
                ..Counts::default()
            },
            latency: latency(p50_ms),
            records: Vec::new(),
        },
        app_cpu_percent: 50.0,
        app_cpu_us_per_request: 700.0,
        tracer_process_us_per_request: (config == Config::Ebpf).then_some(4.0),
        bpf_us_per_request: (config == Config::Ebpf).then_some(1.5),
        bpf_run_count: (config == Config::Ebpf).then_some(responses * 6),
        spans_received: spans,
    }
}

fn results() -> BenchResults {
    let mut points = Vec::new();
    for run in 1..=3 {
        for (rate, level) in [(50.0, 0.17), (210.0, 0.70)] {
            let responses = (rate * 10.0) as u64;
            points.push(point(
                Config::Bare,
                rate,
                level,
                run,
                4.0 + run as f64 * 0.1,
                None,
            ));
            points.push(point(Config::Otel, rate, level, run, 6.0, Some(responses)));
            // One ebpf run lost two spans: it must be flagged.
            let lost = if run == 2 && level > 0.5 { 2 } else { 0 };
            points.push(point(
                Config::Ebpf,
                rate,
                level,
                run,
                4.1,
                Some(responses - lost),
            ));
        }
    }
    BenchResults {
        started_unix_ns: 1_800_000_000_000_000_000,
        capacity: Some(300.0),
        configs: Config::ALL.to_vec(),
        rates: vec![50.0, 210.0],
        runs: 3,
        duration_s: 10.0,
        connections: 20,
        external_collector: None,
        skipped: vec!["nothing really".into()],
        points,
    }
}

#[test]
fn writes_every_file_with_the_expected_tables() {
    let root: PathBuf =
        std::env::temp_dir().join(format!("harness-report-test-{}", std::process::id()));
    let results = results();
    let dir = report::create_results_dir(&root, results.started_unix_ns, "testhost").expect("dir");
    assert!(dir.ends_with("2027-01-15-testhost"), "{}", dir.display());
    let second =
        report::create_results_dir(&root, results.started_unix_ns, "testhost").expect("dir");
    assert!(second.ends_with("2027-01-15-testhost-2"));

    let setup = Setup {
        host: "testhost".into(),
        command_line: "harness bench --quick".into(),
        ..Setup::default()
    };
    report::write_reports(&dir, &results, &setup).expect("reports");
    let plots = plot::write_plots(&dir, &results).expect("plots");
    assert_eq!(plots.len(), 6);
    for name in [
        "raw.json",
        "raw.csv",
        "summary.md",
        "SETUP.md",
        "latency_vs_rate.svg",
        "latency_vs_rate.png",
        "distribution_50rps.svg",
        "distribution_210rps.png",
    ] {
        let len = std::fs::metadata(dir.join(name))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(len > 100, "{name} missing or empty");
    }

    let csv = std::fs::read_to_string(dir.join("raw.csv")).expect("csv");
    assert_eq!(csv.lines().count(), 1 + 3 * 2 * 3);
    assert!(csv.lines().all(|l| l.split(',').count() == 30), "{csv}");

    let json: BenchResults =
        serde_json::from_str(&std::fs::read_to_string(dir.join("raw.json")).expect("json"))
            .expect("parse");
    assert_eq!(json, results);

    let summary = std::fs::read_to_string(dir.join("summary.md")).expect("summary");
    // Medians with their spread: bare p50 runs are 0.9 × (4.1, 4.2, 4.3).
    assert!(
        summary.contains("| 50 (17%) | bare | 3.78 [3.69–3.87]"),
        "{summary}"
    );
    assert!(
        summary.contains("**saturated** in 3/3 run(s), achieved 168"),
        "{summary}"
    );
    assert!(
        summary.contains("| 210 (70%) | ebpf | 2 | 2100 | 2098 | **-2 ⚠** |"),
        "{summary}"
    );
    assert!(
        summary.contains("1 point(s) where spans received differ"),
        "{summary}"
    );
    // Overhead ratios: otel 6.0 / bare 4.2, per run 6.0 / 4.3 to 6.0 / 4.1.
    assert!(
        summary.contains("| 50 (17%) | otel | 1.43 [1.40–1.46]"),
        "{summary}"
    );
    // Published OTel at 1000 req/s: 27.07 / 7.52 and 171.18 / 14.86.
    assert!(
        summary.contains("| 1000 | 210 (70%) | 3.60 / 11.52 | 1.04 / 1.08 |"),
        "{summary}"
    );
    assert!(
        summary.contains("| 500 | – | 1.40 / 1.83 | 1.05 / 1.05 | not run | not run |"),
        "{summary}"
    );
    assert!(
        summary.contains("| 210 (70%) | ebpf | 50.0 [50.0–50.0] | 700 [700–700] | 5.50 [5.50–5.50] | 1.50 [1.50–1.50] |"),
        "{summary}"
    );
    assert!(summary.contains("> **Note:** nothing really"));

    let setup_md = std::fs::read_to_string(dir.join("SETUP.md")).expect("setup");
    assert!(setup_md.contains("| command line | `harness bench --quick` |"));
    let _ = std::fs::remove_dir_all(root);
}
