//! The tracer as a host service: it selects processes by port, executable,
//! cgroup or systemd unit, traces the ones that start after it from their
//! first request, follows restarts, and gives each instance its own
//! resource. Real gunicorn, Python's real `http.server`, real cgroups.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use harness::{app::App, sink::ReceivedSpan};

use crate::support::*;

/// Requests sent to each server instance.
const REQUESTS: usize = 20;
const SPANS_ARRIVE: Duration = Duration::from_secs(30);

/// A free port, found without listening on it (see `harness::app::free_port`).
fn free_port() -> u16 {
    harness::app::free_port(0).expect("a free port")
}

fn resource_str<'a>(span: &'a ReceivedSpan, key: &str) -> &'a str {
    span.resource
        .get(key)
        .and_then(|value| value.as_str())
        .unwrap_or_else(|| panic!("span {} has no resource attribute {key}", span.name))
}

fn resource_pid(span: &ReceivedSpan) -> u32 {
    span.resource
        .get("process.pid")
        .and_then(|value| value.as_i64())
        .unwrap_or_else(|| panic!("span {} has no process.pid", span.name)) as u32
}

/// The path the tests request: the file server and the Flask app both
/// answer it (404), and no readiness probe uses it.
const PATH: &str = "/missing";

/// Server spans of the test's requests whose resource is the instance
/// rooted at `pid`.
fn spans_of(spans: &[ReceivedSpan], pid: u32) -> Vec<&ReceivedSpan> {
    spans
        .iter()
        .filter(|span| span.kind == "SERVER" && resource_pid(span) == pid)
        .filter(|span| attr_str(span, "url.path") == PATH)
        .collect()
}

async fn gunicorn_on(port: u16, cgroup: Option<PathBuf>) -> App {
    let mut options = app_options();
    options.port = port;
    options.workers = 2;
    options.cgroup = cgroup;
    App::start(&options).await.expect("gunicorn starts")
}

/// Python's own `http.server`, answering once its port does.
struct FileServer {
    child: Child,
    addr: SocketAddr,
}

impl FileServer {
    async fn start(port: u16) -> FileServer {
        let python = workspace_root().join(".venv/bin/python");
        let child = Command::new(python)
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python -m http.server starts");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let answers = eventually(Duration::from_secs(30), || {
            std::net::TcpStream::connect(addr).is_ok()
        })
        .await;
        assert!(answers, "http.server did not listen on {addr}");
        FileServer { child, addr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cgroup v2 directory of this test's own, removed when dropped.
struct TestCgroup(PathBuf);

impl TestCgroup {
    /// `/<prefix>-<pid><suffix>` under the mount.
    fn create(prefix: &str, suffix: &str) -> TestCgroup {
        let mount = tracer::discovery::cgroup::v2_mount().expect("cgroup v2 is mounted");
        let path = mount.join(format!("{prefix}-{}{suffix}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create a test cgroup");
        TestCgroup(path)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Empty once its processes are gone; rmdir is how a cgroup is removed.
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// `n` GETs of [`PATH`].
async fn send(addr: SocketAddr, n: usize) -> Vec<Sent> {
    let sent = requests(addr, PATH, n).await;
    assert!(sent.iter().all(|sent| sent.status == 404), "answered");
    sent
}

/// Waits until `sink` holds `n` server spans of the instance `pid`.
async fn wait_for_instance(sink: &harness::sink::Sink, pid: u32, n: usize) -> bool {
    eventually(SPANS_ARRIVE, || spans_of(&sink.spans(), pid).len() >= n).await
}

/// The tracer starts first, selecting a port nothing listens on; gunicorn
/// starts on it, serves, stops, three times over with new pids. Every
/// request of every instance is one span under that instance's resource,
/// and the tracer outlives them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_selector_follows_a_service_through_restarts() {
    let sink = start_sink().await;
    let port = free_port();
    let mut tracer = Tracer::select(
        &sink,
        &["--port", &port.to_string(), "--service-name", "shop"],
    );
    assert!(
        tracer.log().contains("no running process matches"),
        "a selector that matches nothing yet is a warning: {}",
        tracer.log()
    );
    let mut instances = BTreeSet::new();
    let mut masters = Vec::new();
    for _ in 0..3 {
        let mut app = gunicorn_on(port, None).await;
        let master = app.master_pid();
        send(app.addr(), REQUESTS).await;
        assert!(
            wait_for_instance(&sink, master, REQUESTS).await,
            "instance {master}: {} of {REQUESTS} spans; tracer log:\n{}",
            spans_of(&sink.spans(), master).len(),
            tracer.log()
        );
        app.stop();
        masters.push(master);
    }
    assert!(tracer.is_running(), "the tracer outlives what it traces");
    assert!(
        eventually(Duration::from_secs(30), || tracer
            .log()
            .contains("no selected process is running"))
        .await,
        "idle is said once: {}",
        tracer.log()
    );
    assert!(tracer.stop().success());
    let spans = sink.spans();
    for &master in &masters {
        let mine = spans_of(&spans, master);
        assert_eq!(
            mine.len(),
            REQUESTS,
            "one span per request of instance {master}"
        );
        for span in &mine {
            assert_eq!(span.service, "shop");
            instances.insert(resource_str(span, "service.instance.id").to_owned());
        }
    }
    assert_eq!(
        instances.len(),
        3,
        "each instance has its own service.instance.id"
    );
    assert!(
        spans
            .iter()
            .all(|span| span.kind != "SERVER" || masters.contains(&resource_pid(span))),
        "nothing but the three instances was traced"
    );
}

/// `--exe`, `--cgroup` and `--systemd-unit` each select the gunicorn they
/// name, started after the tracer; a server outside the selection stays
/// untraced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exe_cgroup_and_unit_selectors_take_only_what_they_name() {
    let outside = FileServer::start(free_port()).await;
    let unit = TestCgroup::create("tracer-test-web", ".service");
    let unit_name = unit.0.file_name().unwrap().to_string_lossy().into_owned();
    let plain = TestCgroup::create("tracer-test-plain", "");
    let cases: [(&str, String, Option<PathBuf>); 3] = [
        ("--exe", "gunicorn".into(), None),
        (
            "--cgroup",
            plain.0.display().to_string(),
            Some(plain.0.clone()),
        ),
        ("--systemd-unit", unit_name.clone(), Some(unit.0.clone())),
    ];
    for (flag, value, cgroup) in cases {
        let sink = start_sink().await;
        let tracer = Tracer::select(&sink, &[flag, &value]);
        // Requests to the outside server first: had they been traced, their
        // spans would be in the sink before the ones awaited below.
        send(outside.addr, 5).await;
        let mut app = gunicorn_on(free_port(), cgroup).await;
        let master = app.master_pid();
        send(app.addr(), REQUESTS).await;
        assert!(
            wait_for_instance(&sink, master, REQUESTS).await,
            "{flag} {value}: {} of {REQUESTS} spans; tracer log:\n{}",
            spans_of(&sink.spans(), master).len(),
            tracer.log()
        );
        app.stop();
        assert!(tracer.stop().success());
        let spans = sink.spans();
        assert_eq!(spans_of(&spans, master).len(), REQUESTS, "{flag}");
        assert!(
            spans_of(&spans, outside.pid()).is_empty(),
            "{flag}: the server outside the selection was traced"
        );
        let expected_name = if flag == "--systemd-unit" {
            unit_name.trim_end_matches(".service").to_owned()
        } else {
            "gunicorn".to_owned()
        };
        for span in spans_of(&spans, master) {
            assert_eq!(span.service, expected_name, "{flag}: service.name");
            assert_eq!(resource_str(span, "process.runtime.name"), "cpython");
        }
    }
}

/// One tracer, two services from a config file: gunicorn by its port,
/// `http.server` by its port; each span carries its own service's name and
/// its own process's resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_traces_two_services_without_mixing_them() {
    let (shop_port, files_port) = (free_port(), free_port());
    let config = std::env::temp_dir().join(format!("tracer-services-{}.yaml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "services:\n  - name: shop\n    port: {shop_port}\n    routes: [\"/light\"]\n  - name: files\n    port: {files_port}\n"
        ),
    )
    .expect("write the config file");
    let sink = start_sink().await;
    let tracer = Tracer::select(&sink, &["--config", &config.display().to_string()]);
    let mut shop = gunicorn_on(shop_port, None).await;
    let files = FileServer::start(files_port).await;
    send(shop.addr(), REQUESTS).await;
    send(files.addr, REQUESTS).await;
    let (shop_pid, files_pid) = (shop.master_pid(), files.pid());
    assert!(
        wait_for_instance(&sink, shop_pid, REQUESTS).await
            && wait_for_instance(&sink, files_pid, REQUESTS).await,
        "tracer log:\n{}",
        tracer.log()
    );
    shop.stop();
    drop(files);
    assert!(tracer.stop().success());
    let spans = sink.spans();
    for (pid, service, executable) in [(shop_pid, "shop", "python"), (files_pid, "files", "python")]
    {
        let mine = spans_of(&spans, pid);
        assert_eq!(mine.len(), REQUESTS, "{service}");
        let ids: BTreeSet<&str> = mine
            .iter()
            .map(|span| resource_str(span, "service.instance.id"))
            .collect();
        assert_eq!(ids.len(), 1, "{service}: one instance");
        for span in mine {
            assert_eq!(span.service, service);
            assert!(resource_str(span, "process.executable.name").starts_with(executable));
        }
    }
    let _ = std::fs::remove_file(config);
}

/// Bad selectors and config files are clear errors with exit code 2.
#[test]
fn bad_selectors_and_config_files_are_clear_errors() {
    let run = |args: &[&str]| {
        let output = Command::new(tracer_bin())
            .args(args)
            .args(["--otlp-endpoint", "none"])
            .output()
            .expect("tracer runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&["--cgroup", "/no/such/cgroup"]);
    assert_eq!(code, exit_code(Exit::Usage), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    let (code, stderr) = run(&["--port", "8000-7000"]);
    assert_eq!(code, exit_code(Exit::Usage), "{stderr}");
    // The TRACER_* variables are the same settings as the flags.
    let output = Command::new(tracer_bin())
        .env("TRACER_CGROUP", "/no/such/cgroup")
        .args(["--otlp-endpoint", "none"])
        .output()
        .expect("tracer runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), exit_code(Exit::Usage), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    let (code, stderr) = run(&[]);
    assert_eq!(code, exit_code(Exit::Usage), "{stderr}");
    assert!(stderr.contains("nothing to trace"), "{stderr}");

    let config = std::env::temp_dir().join(format!("tracer-bad-{}.yaml", std::process::id()));
    for (text, expected) in [
        (
            "services:\n  - name: a\n    prot: 8000\n",
            "unknown field `prot`",
        ),
        ("services:\n  - name: a\n    port: 99999\n", "99999"),
    ] {
        std::fs::write(&config, text).expect("write the config file");
        let (code, stderr) = run(&["--config", &config.display().to_string()]);
        assert_eq!(code, exit_code(Exit::Usage), "{stderr}");
        assert!(
            stderr.contains(expected) && stderr.contains("line 3"),
            "{stderr}"
        );
    }
    let _ = std::fs::remove_file(config);
}
