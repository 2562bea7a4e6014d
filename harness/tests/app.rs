//! The real app under gunicorn, bare and under OpenTelemetry, exporting to
//! the sink. Skipped (with a message) when the virtualenv is missing.

use std::path::PathBuf;
use std::time::Duration;

use harness::app::{App, AppOptions, Config};
use harness::loadgen::{self, LoadConfig};
use harness::sink::Sink;

fn paths() -> Option<(PathBuf, PathBuf)> {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let venv = crate_dir.join("../.venv");
    if !venv.join("bin/gunicorn").exists() {
        eprintln!(
            "skipped: no virtualenv at {} (cargo xtask setup)",
            venv.display()
        );
        return None;
    }
    Some((crate_dir.join("app"), venv))
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn bare_and_otel_serve_and_stop_cleanly() {
    let Some((app_dir, venv)) = paths() else {
        return;
    };
    let any = "127.0.0.1:0".parse().expect("addr");
    let sink = Sink::start(any, any).await.expect("sink");
    let endpoint = format!("http://{}", sink.grpc_addr());
    let log_dir = std::env::temp_dir().join(format!("harness-app-test-{}", std::process::id()));
    for config in [Config::Bare, Config::Otel] {
        let mut options = AppOptions::new(config, app_dir.clone(), venv.clone(), endpoint.clone());
        options.log_dir = log_dir.clone();
        let app = App::start(&options).await.expect("start");
        let workers = app.worker_pids().expect("workers");
        assert_eq!(workers.len(), 3, "{workers:?}");
        let mut load = LoadConfig::get(app.addr(), "/work", 20.0, Duration::from_secs(1));
        load.connections = 2;
        let report = loadgen::run(load).await.expect("load");
        assert_eq!(report.counts.ok_2xx, 20, "{:?}", report.counts);
        if config == Config::Otel {
            // 20 requests plus the health checks; the batch processor flushes
            // every 5 s.
            assert!(sink.wait_for_spans(21, Duration::from_secs(15)).await);
            assert!(sink.span_count("flask-otel") >= 21);
            assert!(
                sink.spans()
                    .iter()
                    .any(|s| s.name == "GET /work" && s.kind == "SERVER")
            );
        }
        let master = app.master_pid();
        drop(app);
        assert!(!pid_alive(master));
        assert!(workers.iter().all(|&w| !pid_alive(w)));
    }
    let _ = std::fs::remove_dir_all(log_dir);
}
