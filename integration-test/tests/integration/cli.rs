//! The tracer binary's contract with its user: clear errors with distinct
//! exit codes, both OTLP transports, and tracing that goes on while the
//! collector is unreachable.

use std::{process::Command, time::Duration};

use crate::support::*;
use harness::app::WorkerClass;

fn run_tracer(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(tracer_bin())
        .args(args)
        .output()
        .expect("tracer runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn wrong_input_gives_a_clear_error_and_its_own_exit_code() {
    let (code, stderr) = run_tracer(&["--pid", "999999999", "--otlp-endpoint", "none"]);
    assert_eq!(code, exit_code(Exit::NoSuchPid), "{stderr}");
    assert!(stderr.contains("no such process: 999999999"), "{stderr}");

    let (code, stderr) = run_tracer(&["--pid", "1", "--otlp-endpoint", "localhost:4317"]);
    assert_eq!(code, exit_code(Exit::Usage), "{stderr}");
    assert!(stderr.contains("invalid OTLP endpoint"), "{stderr}");

    let (code, stderr) = run_tracer(&["--pid", "1", "--otlp-protocol", "smtp"]);
    assert_eq!(code, exit_code(Exit::Usage), "{stderr}");
    for bad_size in [
        ["--queue-size", "-5"],
        ["--queue-size", "0"],
        ["--stats-interval", "0"],
    ] {
        let (code, stderr) = run_tracer(&[&["--pid", "1"][..], &bad_size[..]].concat());
        assert_eq!(code, exit_code(Exit::Usage), "{bad_size:?}: {stderr}");
    }
    let (code, stderr) = run_tracer(&["--pid", "1", "--probes", "uprobes"]);
    assert_eq!(code, exit_code(Exit::Usage), "{stderr}");

    // Without privileges: as `nobody`, with every capability dropped.
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(tracer_bin())
        .args(["--pid", "1", "--otlp-endpoint", "none"])
        .output()
        .expect("setpriv runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        exit_code(Exit::NotPermitted),
        "{stderr}"
    );
    assert!(stderr.contains("not permitted"), "{stderr}");
}

/// Doctor tries each probe set for real; the tracer picks the set doctor
/// says `auto` picks, and a set the kernel refuses is a clear error.
#[test]
fn doctor_and_the_tracer_agree_on_the_probe_set() {
    let output = Command::new(tracer_bin())
        .arg("doctor")
        .output()
        .expect("doctor runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let picked = stdout
        .lines()
        .find_map(|line| line.split("--probes auto picks ").nth(1))
        .unwrap_or_else(|| panic!("doctor names no probe set: {stdout}"))
        .trim()
        .to_owned();
    assert!(
        stdout.contains(&format!("ok    probe set {picked}: loads and attaches")),
        "{stdout}"
    );

    let mut target = Command::new("sleep").arg("60").spawn().expect("sleep");
    let mut command = Command::new(tracer_bin());
    command.args(["--pid", &target.id().to_string(), "--otlp-endpoint", "none"]);
    let tracer = launch(command);
    let log = tracer.log().join("\n");
    assert!(log.contains(&format!("with {picked}, listening")), "{log}");
    drop(tracer);

    for refused in ["fentry", "tracepoints", "kprobes"]
        .into_iter()
        .filter(|set| stdout.contains(&format!("no    probe set {set}:")))
    {
        let (code, stderr) = run_tracer(&[
            "--pid",
            &target.id().to_string(),
            "--otlp-endpoint",
            "none",
            "--probes",
            refused,
        ]);
        assert_eq!(code, exit_code(Exit::KernelUnsupported), "{stderr}");
        assert!(
            stderr.contains("no probe set works on this kernel") && stderr.contains(refused),
            "{stderr}"
        );
    }
    let _ = target.kill();
    let _ = target.wait();
}

/// OTLP over HTTP/protobuf as well as gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_over_http_protobuf() {
    let app = start_app(WorkerClass::Sync, &[]).await;
    let sink = start_sink().await;
    let mut command = Command::new(tracer_bin());
    command
        .args([
            "--pid",
            &app.master_pid().to_string(),
            "--service-name",
            "flask-http",
        ])
        .args(["--otlp-endpoint", &format!("http://{}", sink.http_addr())])
        .args(["--otlp-protocol", "http/protobuf"]);
    let mut tracer = launch(command);
    let addr = app.addr();
    requests(addr, "/light", 20).await;
    let arrived = eventually(Duration::from_secs(15), || {
        server_spans(&sink, "flask-http").len() == 20
    })
    .await;
    let status = tracer.stop().expect("the tracer exits");
    assert!(
        arrived,
        "got {} spans",
        server_spans(&sink, "flask-http").len()
    );
    assert_eq!(status.code(), exit_code(Exit::Ok));
}

/// With no collector listening, the tracer warns, keeps tracing (JSON lines
/// keep coming), counts the failed exports, and still exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_collector_is_a_warning_and_tracing_goes_on() {
    let app = start_app(WorkerClass::Sync, &[]).await;
    // A port nothing listens on: bind, note it, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let mut command = Command::new(tracer_bin());
    command
        .args([
            "--pid",
            &app.master_pid().to_string(),
            "--print",
            "json",
            "--stats-interval",
            "1",
        ])
        .args(["--otlp-endpoint", &format!("http://{dead}")]);
    let mut tracer = launch(command);
    let log = tracer.log().join("\n");
    assert!(
        log.contains("unreachable"),
        "no warning about the collector: {log}"
    );
    let addr = app.addr();
    requests(addr, "/missing", 10).await;
    let lines = read_lines(tracer.take_stdout().expect("stdout"), 10).await;
    assert_eq!(lines.len(), 10);
    assert!(
        lines
            .iter()
            .all(|l| l.contains("\"path\":\"/missing\"") && l.contains("\"status\":404"))
    );
    // An export of those requests fails before the tracer is stopped.
    tracer
        .wait_for_line("OTLP export failed", Duration::from_secs(30))
        .unwrap_or_else(|err| panic!("{err}"));
    let status = tracer.stop().expect("the tracer exits");
    let stderr = tracer.log().join("\n");
    assert_eq!(status.code(), exit_code(Exit::Ok), "{stderr}");
    assert!(
        stderr.contains("export_dropped=10"),
        "requests not exported not counted: {stderr}"
    );
}

/// The capability set of `deploy/tracer.service`, as user `nobody` against a
/// root-owned gunicorn: CAP_BPF + CAP_PERFMON to load and attach, and
/// CAP_DAC_READ_SEARCH + CAP_SYS_PTRACE to read the service's
/// `/proc/<pid>/fd` (its listening ports, for handshake times and peer
/// addresses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_as_nobody_with_the_units_capabilities() {
    let app = start_app(WorkerClass::Sync, &[]).await;
    let mut command = tracer_as_nobody("+bpf,+perfmon,+dac_read_search,+sys_ptrace");
    command.args([
        "--pid",
        &app.master_pid().to_string(),
        "--otlp-endpoint",
        "none",
        "--print",
        "json",
    ]);
    let mut tracer = launch(command);
    let log = tracer.log().join("\n");
    assert!(
        log.contains(&format!("listening on ports {{{}}}", app.addr().port())),
        "{log}"
    );
    let addr = app.addr();
    requests(addr, "/light", 5).await;
    let lines = read_lines(tracer.take_stdout().expect("stdout"), 5).await;
    drop(tracer);
    assert_eq!(lines.len(), 5);
    assert!(
        lines
            .iter()
            .all(|l| l.contains("\"peer_address\":\"127.0.0.1\"")),
        "{lines:?}"
    );

    // One capability less (no CAP_PERFMON): a clear error, exit code 4.
    let output = tracer_as_nobody("+bpf,+dac_read_search,+sys_ptrace")
        .args([
            "--pid",
            &app.master_pid().to_string(),
            "--otlp-endpoint",
            "none",
        ])
        .output()
        .expect("setpriv runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        exit_code(Exit::NotPermitted),
        "{stderr}"
    );
    assert!(stderr.contains("CAP_PERFMON"), "{stderr}");

    // The host service's way, under the same set: the exec hook finds a
    // gunicorn started after the tracer (and reads its /proc entries).
    let mut command = tracer_as_nobody("+bpf,+perfmon,+dac_read_search,+sys_ptrace");
    command.args([
        "--exe",
        "gunicorn",
        "--otlp-endpoint",
        "none",
        "--print",
        "json",
    ]);
    let mut selecting = launch(command);
    let later = start_app(WorkerClass::Sync, &[]).await;
    requests(later.addr(), "/missing", 5).await;
    let stdout = selecting.take_stdout().expect("stdout");
    let reader = tokio::task::spawn_blocking(move || {
        std::io::BufRead::lines(std::io::BufReader::new(stdout))
            .map_while(Result::ok)
            .filter(|line| line.contains("\"path\":\"/missing\""))
            .take(5)
            .count()
    });
    let seen =
        tokio::time::timeout(harness::patience::ceiling(Duration::from_secs(30)), reader).await;
    drop(selecting);
    assert_eq!(
        seen.ok().and_then(Result::ok),
        Some(5),
        "as nobody, --exe traces a gunicorn started after it"
    );
}

/// The tracer as user `nobody` holding only `caps` (setpriv syntax, such as
/// `+bpf,+perfmon`), inheritable and ambient so they survive the exec.
fn tracer_as_nobody(caps: &str) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps=-all,{caps}"))
        .arg(format!("--ambient-caps=-all,{caps}"))
        .arg(format!("--bounding-set=-all,{caps}"))
        .arg(tracer_bin());
    command
}
