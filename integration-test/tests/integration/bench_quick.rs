//! CI's end-to-end run of the benchmark: `harness bench --quick` with all
//! three configurations (real gunicorn, the real OpenTelemetry distro, the
//! real tracer), then checks of what it wrote.

use std::{path::PathBuf, process::Command};

use crate::support::{harness_bin, tracer_bin};
use harness::{app::Config, bench::BenchResults};

#[test]
fn quick_bench_reports_every_configuration_with_matching_span_counts() {
    let results_root =
        std::env::temp_dir().join(format!("tracer-bench-quick-{}", std::process::id()));
    let output = Command::new(harness_bin())
        .args(["bench", "--quick", "--tracer"])
        .arg(tracer_bin())
        .arg("--results")
        .arg(&results_root)
        .output()
        .expect("harness runs");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "bench failed: {}", output.status);
    let dir = PathBuf::from(
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .lines()
            .last()
            .expect("results dir"),
    );

    for file in ["raw.json", "raw.csv", "summary.md", "SETUP.md"] {
        assert!(
            dir.join(file).is_file(),
            "{file} missing in {}",
            dir.display()
        );
    }
    let plots = std::fs::read_dir(&dir)
        .expect("results dir")
        .filter_map(Result::ok)
        .filter(|e| {
            e.path()
                .extension()
                .is_some_and(|x| x == "png" || x == "svg")
        })
        .count();
    assert!(plots >= 2, "plots missing");

    let results: BenchResults =
        serde_json::from_str(&std::fs::read_to_string(dir.join("raw.json")).expect("raw.json"))
            .expect("raw.json parses");
    for config in Config::ALL {
        let points: Vec<_> = results
            .points
            .iter()
            .filter(|p| p.config == config)
            .collect();
        assert!(!points.is_empty(), "no numbers for {config}");
        for point in points {
            assert!(
                point.load.latency.count > 0,
                "{config} at {} req/s has no latencies",
                point.rate
            );
            assert!(point.app_cpu_percent > 0.0);
            if config == Config::Bare {
                continue;
            }
            assert_eq!(
                point.spans_received,
                Some(point.spans_expected()),
                "{config} at {} req/s: spans received differ from requests served",
                point.rate
            );
            if config == Config::Ebpf {
                assert!(
                    point.tracer_us_per_request().is_some(),
                    "tracer CPU not measured"
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&results_root);
}
