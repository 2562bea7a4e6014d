//! The OpenTelemetry SDK's environment variables, each shown changing what
//! the collector receives: the real tracer, configured by `OTEL_*` alone
//! (none of this process's, and none of `support::Tracer`'s flags), tracing
//! Debian's nginx and exporting to the harness's sink, which records every
//! export request's headers and encoding. Stopping the tracer flushes
//! everything, so what the sink holds after a stop is final.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use crate::support::*;
use harness::{
    nginx::Nginx,
    sink::{ReceivedExport, Signal, Sink, SinkOptions, SinkTls, Transport},
    tracer::TracerProcess,
};

const PATH: &str = "/index.html";
const BOTH_PROTOCOLS: [&str; 2] = ["grpc", "http/protobuf"];

/// The tracer for `pid` with `args`, its environment this process's without
/// any `OTEL_*` variable, plus `vars`.
fn tracer_command(pid: u32, args: &[&str], vars: &[(&str, &str)]) -> Command {
    let mut command = Command::new(tracer_bin());
    command
        .args(["--pid", &pid.to_string()])
        .args(probe_set_override())
        .args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    command.envs(vars.iter().copied());
    command
}

/// [`tracer_command`], started and ready.
fn start_tracer(pid: u32, args: &[&str], vars: &[(&str, &str)]) -> TracerProcess {
    launch(tracer_command(pid, args, vars))
}

fn stop(mut tracer: TracerProcess) {
    let status = tracer.stop().expect("the tracer exits");
    assert_eq!(status.code(), exit_code(Exit::Ok));
}

/// The sink's endpoint for `protocol`, as a base URL.
fn base_url(sink: &Sink, protocol: &str) -> String {
    let addr = match protocol {
        "grpc" => sink.grpc_addr(),
        _ => sink.http_addr(),
    };
    format!("http://{addr}")
}

fn transport(protocol: &str) -> Transport {
    match protocol {
        "grpc" => Transport::Grpc,
        _ => Transport::Http,
    }
}

/// `n` requests, then waits until their server spans arrived.
async fn traced_requests(nginx: &Nginx, sink: &Sink, service: &str, n: usize) {
    requests(nginx.addr(), PATH, n).await;
    assert!(
        eventually(Duration::from_secs(20), || {
            sink.server_span_count(service) >= n as u64
        })
        .await,
        "{} of {n} spans arrived",
        sink.server_span_count(service)
    );
}

fn exports(sink: &Sink, signal: Signal) -> Vec<ReceivedExport> {
    sink.exports()
        .into_iter()
        .filter(|export| export.signal == signal)
        .collect()
}

/// [`exports`], which must not be none.
fn some_exports(sink: &Sink, signal: Signal) -> Vec<ReceivedExport> {
    let exports = exports(sink, signal);
    assert!(!exports.is_empty(), "no {signal:?} export arrived");
    exports
}

fn header<'a>(export: &'a ReceivedExport, name: &str) -> Option<&'a str> {
    export.headers.get(name).map(String::as_str)
}

/// The requests the duration histogram counted, as last exported: the sum
/// over attribute sets of each one's latest (cumulative) count.
fn requests_counted(sink: &Sink) -> u64 {
    let mut latest: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let points = sink
        .metrics()
        .into_iter()
        .filter(|metric| metric.name == "http.server.request.duration")
        .flat_map(|metric| metric.points);
    for point in points {
        let slot = latest.entry(format!("{:?}", point.attributes)).or_default();
        if point.time_unix_ns >= slot.0 {
            *slot = (point.time_unix_ns, point.count.unwrap_or(0));
        }
    }
    latest.values().map(|(_, count)| count).sum()
}

/// OTEL_EXPORTER_OTLP_HEADERS (percent-decoded) on every export, the
/// per-signal list instead for metrics; OTEL_RESOURCE_ATTRIBUTES on the
/// spans' resource, with OTEL_SERVICE_NAME over its `service.name`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_and_resource_attributes_reach_the_collector() {
    const SERVICE: &str = "otel-env-headers";
    let nginx = Nginx::start(18_191, 0).expect("nginx starts");
    for protocol in BOTH_PROTOCOLS {
        let sink = start_sink().await;
        let endpoint = base_url(&sink, protocol);
        let tracer = start_tracer(
            nginx.pid(),
            &[],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "X-Api-Key=s3cr%3Dt,x-team=blue%20team",
                ),
                (
                    "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
                    "x-api-key=metrics-key",
                ),
                ("OTEL_SERVICE_NAME", SERVICE),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "service.name=not-this,deployment.environment=stag%20ing,host.name=web-1",
                ),
            ],
        );
        traced_requests(&nginx, &sink, SERVICE, 5).await;
        stop(tracer);

        for export in some_exports(&sink, Signal::Traces) {
            assert_eq!(export.transport, transport(protocol));
            assert_eq!(header(&export, "x-api-key"), Some("s3cr=t"), "{protocol}");
            assert_eq!(header(&export, "x-team"), Some("blue team"), "{protocol}");
        }
        for export in some_exports(&sink, Signal::Metrics) {
            assert_eq!(
                header(&export, "x-api-key"),
                Some("metrics-key"),
                "{protocol}"
            );
            assert_eq!(header(&export, "x-team"), None, "{protocol}");
        }
        for span in server_spans(&sink, SERVICE) {
            let resource = |key: &str| span.resource.get(key).and_then(|value| value.as_str());
            assert_eq!(resource("deployment.environment"), Some("stag ing"));
            assert_eq!(resource("host.name"), Some("web-1"));
        }
    }
}

/// For http/protobuf the generic endpoint gets `/v1/metrics` appended and a
/// per-signal endpoint is used as it is (the sink answers only those two
/// paths); a per-signal protocol moves one signal to the other transport;
/// the flags take precedence over all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_signal_endpoints_and_protocols_and_flags_over_them() {
    const SERVICE: &str = "otel-env-endpoints";
    let nginx = Nginx::start(18_192, 0).expect("nginx starts");
    let sink = start_sink().await;
    let http_traces = format!("http://{}/v1/traces", sink.http_addr());
    let (http_base, grpc) = (base_url(&sink, "http/protobuf"), base_url(&sink, "grpc"));
    let all_http = [
        ("OTEL_SERVICE_NAME", SERVICE),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", http_base.as_str()),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", http_traces.as_str()),
    ];
    let metrics_over_grpc = [
        ("OTEL_SERVICE_NAME", SERVICE),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", grpc.as_str()),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", http_traces.as_str()),
    ];
    for (vars, metrics_transport) in [
        (&all_http[..], Transport::Http),
        (&metrics_over_grpc[..], Transport::Grpc),
    ] {
        sink.clear();
        let tracer = start_tracer(nginx.pid(), &[], vars);
        traced_requests(&nginx, &sink, SERVICE, 5).await;
        stop(tracer);
        let transports = |signal| -> Vec<Transport> {
            some_exports(&sink, signal)
                .iter()
                .map(|export| export.transport)
                .collect()
        };
        assert!(
            transports(Signal::Traces)
                .iter()
                .all(|&transport| transport == Transport::Http),
            "{vars:?}"
        );
        assert!(
            transports(Signal::Metrics)
                .iter()
                .all(|&transport| transport == metrics_transport),
            "{vars:?}"
        );
    }

    sink.clear();
    let flagged = start_sink().await;
    let tracer = start_tracer(
        nginx.pid(),
        &[
            "--otlp-endpoint",
            &base_url(&flagged, "grpc"),
            "--otlp-protocol",
            "grpc",
        ],
        &metrics_over_grpc,
    );
    traced_requests(&nginx, &flagged, SERVICE, 5).await;
    stop(tracer);
    assert!(
        flagged
            .exports()
            .iter()
            .all(|export| export.transport == Transport::Grpc)
    );
    some_exports(&flagged, Signal::Metrics);
    assert!(
        sink.exports().is_empty(),
        "the variables' collector got exports despite the flags"
    );
}

/// OTEL_EXPORTER_OTLP_COMPRESSION=gzip compresses every trace export; the
/// per-signal `none` leaves metrics as they are. The sink decodes both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_compression_per_signal() {
    const SERVICE: &str = "otel-env-gzip";
    let nginx = Nginx::start(18_193, 0).expect("nginx starts");
    for protocol in BOTH_PROTOCOLS {
        let sink = start_sink().await;
        let endpoint = base_url(&sink, protocol);
        let tracer = start_tracer(
            nginx.pid(),
            &[],
            &[
                ("OTEL_SERVICE_NAME", SERVICE),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
                ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "none"),
            ],
        );
        traced_requests(&nginx, &sink, SERVICE, 5).await;
        stop(tracer);
        assert!(
            some_exports(&sink, Signal::Traces)
                .iter()
                .all(|export| export.gzip),
            "{protocol}: a trace export came uncompressed"
        );
        assert!(
            some_exports(&sink, Signal::Metrics)
                .iter()
                .all(|export| !export.gzip),
            "{protocol}: a metrics export came compressed"
        );
        assert_eq!(sink.server_span_count(SERVICE), 5, "{protocol}");
        assert_eq!(requests_counted(&sink), 5, "{protocol}");
    }
}

/// A collector that answers trace exports in 2 s: with a 300 ms
/// OTEL_EXPORTER_OTLP_TRACES_TIMEOUT every export fails and the requests
/// are counted lost at shutdown; with 5,000 ms all of them arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_timeout_bounds_each_export() {
    const SERVICE: &str = "otel-env-timeout";
    let nginx = Nginx::start(18_194, 0).expect("nginx starts");
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let slow = SinkOptions {
        reply_delay: Duration::from_secs(2),
        ..SinkOptions::default()
    };
    for protocol in BOTH_PROTOCOLS {
        let sink = Sink::start_with(loopback, loopback, slow.clone())
            .await
            .expect("sink starts");
        let endpoint = base_url(&sink, protocol);
        let vars = |timeout_ms| {
            [
                ("OTEL_SERVICE_NAME", SERVICE),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", timeout_ms),
            ]
        };
        let tracer = start_tracer(nginx.pid(), &[], &vars("300"));
        requests(nginx.addr(), PATH, 5).await;
        tracer
            .wait_for_line("OTLP export failed", Duration::from_secs(20))
            .unwrap_or_else(|err| panic!("{protocol}: {err}"));
        stop(tracer);
        assert_eq!(
            dropped(&sink, DropReason::ExportDropped),
            5.0,
            "{protocol}: the 5 requests were not counted lost"
        );

        sink.clear();
        let tracer = start_tracer(nginx.pid(), &[], &vars("5000"));
        traced_requests(&nginx, &sink, SERVICE, 5).await;
        stop(tracer);
        assert_eq!(dropped(&sink, DropReason::ExportDropped), 0.0, "{protocol}");
    }
}

/// traceidratio 0.25 over 10,000 requests: the spans are within 5 sigma of a
/// quarter, while the duration histogram counts every request; always_off
/// exports no span and still counts them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_thins_spans_and_the_metrics_count_every_request() {
    const SERVICE: &str = "otel-env-sampling";
    const RATIO: f64 = 0.25;
    let nginx = Nginx::start(18_195, 0).expect("nginx starts");
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let counting = SinkOptions {
        keep_spans: false,
        ..SinkOptions::default()
    };
    let sink = Sink::start_with(loopback, loopback, counting)
        .await
        .expect("sink starts");
    let endpoint = base_url(&sink, "grpc");
    let sampled = |sampler| {
        [
            ("OTEL_SERVICE_NAME", SERVICE),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_TRACES_SAMPLER", sampler),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ]
    };
    let tracer = start_tracer(nginx.pid(), &[], &sampled("traceidratio"));
    let load = drive(nginx.addr(), PATH, 2_000.0, Duration::from_secs(5)).await;
    let answered = load.counts.responses();
    // The check below scales with what was answered; it needs only enough
    // requests for its bounds to mean something, far fewer than any machine
    // answers of the 10,000 scheduled.
    assert!(answered >= 1_000, "only {answered} requests answered");
    stop(tracer);
    let spans = sink.server_span_count(SERVICE) as f64;
    let counted = requests_counted(&sink);
    let (expected, sigma) = (
        answered as f64 * RATIO,
        (answered as f64 * RATIO * (1.0 - RATIO)).sqrt(),
    );
    eprintln!(
        "traceidratio {RATIO}: {answered} requests, {counted} counted, {spans} spans \
         (expected {expected:.0} ± {sigma:.0})"
    );
    assert_eq!(
        counted,
        answered,
        "the histogram must count every request (losses {})",
        requests_lost(&sink)
    );
    assert!(
        (spans - expected).abs() <= 5.0 * sigma,
        "{spans} spans for {answered} requests at ratio {RATIO}"
    );

    sink.clear();
    let tracer = start_tracer(nginx.pid(), &[], &sampled("always_off"));
    requests(nginx.addr(), PATH, 50).await;
    stop(tracer);
    assert_eq!(requests_counted(&sink), 50);
    assert_eq!(sink.server_span_count(SERVICE), 0);
}

/// A CA and a server certificate for `localhost`, made for the test: the
/// sink's TLS identity, and the CA's PEM file.
struct PrivateCa {
    identity: SinkTls,
    ca_file: PathBuf,
}

impl PrivateCa {
    fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "otel_env test CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let server_key = rcgen::KeyPair::generate().expect("server key");
        let server = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("server")
            .signed_by(&server_key, &ca, &ca_key)
            .expect("server certificate");
        let ca_file = std::env::temp_dir().join(format!("otel-env-ca-{}.pem", std::process::id()));
        std::fs::write(&ca_file, ca.pem()).expect("write the CA");
        Self {
            identity: SinkTls {
                certificate_pem: server.pem(),
                key_pem: server_key.serialize_pem(),
            },
            ca_file,
        }
    }
}

impl Drop for PrivateCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

/// An https:// collector whose certificate a private CA signed: with
/// OTEL_EXPORTER_OTLP_CERTIFICATE naming the CA, spans and metrics arrive;
/// without, the system's roots do not trust it and nothing does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca() {
    const SERVICE: &str = "otel-env-tls";
    let nginx = Nginx::start(18_196, 0).expect("nginx starts");
    let ca = PrivateCa::new();
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let tls = SinkOptions {
        tls: Some(ca.identity.clone()),
        ..SinkOptions::default()
    };
    let ca_file = ca.ca_file.to_str().expect("UTF-8 path");
    for protocol in BOTH_PROTOCOLS {
        let sink = Sink::start_with(loopback, loopback, tls.clone())
            .await
            .expect("TLS sink starts");
        let port = match protocol {
            "grpc" => sink.grpc_addr().port(),
            _ => sink.http_addr().port(),
        };
        let endpoint = format!("https://localhost:{port}");
        let vars = [
            ("OTEL_SERVICE_NAME", SERVICE),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ];
        let trusted = [
            &vars[..],
            &[("OTEL_EXPORTER_OTLP_CERTIFICATE", ca_file)][..],
        ]
        .concat();
        let tracer = start_tracer(nginx.pid(), &[], &trusted);
        traced_requests(&nginx, &sink, SERVICE, 5).await;
        stop(tracer);
        some_exports(&sink, Signal::Metrics);

        sink.clear();
        let tracer = start_tracer(nginx.pid(), &[], &vars);
        requests(nginx.addr(), PATH, 5).await;
        tracer
            .wait_for_line("OTLP export failed", Duration::from_secs(20))
            .unwrap_or_else(|err| panic!("{protocol}: {err}"));
        stop(tracer);
        assert!(
            sink.exports().is_empty(),
            "{protocol}: an untrusted collector received exports"
        );
    }
}

/// OTEL_SDK_DISABLED=true: nothing reaches the collector named, while the
/// tracer still traces (JSON lines) and logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_sdk_exports_nothing_and_tracing_goes_on() {
    let nginx = Nginx::start(18_197, 0).expect("nginx starts");
    let sink = start_sink().await;
    let endpoint = base_url(&sink, "grpc");
    let mut tracer = start_tracer(
        nginx.pid(),
        &["--print", "json", "--stats-interval", "1"],
        &[
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ],
    );
    let stdout = tracer.take_stdout().expect("stdout is piped");
    requests(nginx.addr(), PATH, 5).await;
    let lines = read_lines(stdout, 5).await;
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert!(lines.iter().all(|line| line.contains(PATH)), "{lines:?}");
    stop(tracer);
    assert!(sink.exports().is_empty(), "{:?}", sink.exports());
}

/// The gaps between metric exports, once `n` arrived.
async fn metric_export_gaps(sink: &Sink, n: usize) -> Vec<Duration> {
    let arrived = || exports(sink, Signal::Metrics);
    assert!(
        eventually(Duration::from_secs(40), || arrived().len() >= n).await,
        "{} of {n} metric exports arrived",
        arrived().len()
    );
    arrived()
        .windows(2)
        .map(|pair| pair[1].received_at - pair[0].received_at)
        .collect()
}

fn median(mut gaps: Vec<Duration>) -> Duration {
    gaps.sort();
    gaps[gaps.len() / 2]
}

/// OTEL_METRIC_EXPORT_INTERVAL=300 exports metrics about every 300 ms
/// (the default is 10 s); `--stats-interval 2` takes precedence over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metric_export_interval() {
    let nginx = Nginx::start(18_198, 0).expect("nginx starts");
    let sink = start_sink().await;
    let endpoint = base_url(&sink, "grpc");
    let vars = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
    ];
    let tracer = start_tracer(nginx.pid(), &[], &vars);
    let gaps = metric_export_gaps(&sink, 8).await;
    stop(tracer);
    let typical = median(gaps);
    assert!(
        (Duration::from_millis(150)..Duration::from_millis(1_500)).contains(&typical),
        "metric exports {typical:?} apart at a 300 ms interval"
    );

    sink.clear();
    let tracer = start_tracer(nginx.pid(), &["--stats-interval", "2"], &vars);
    let gaps = metric_export_gaps(&sink, 3).await;
    stop(tracer);
    let typical = median(gaps);
    assert!(
        typical >= Duration::from_millis(1_500),
        "metric exports {typical:?} apart with --stats-interval 2"
    );
}

/// Runs `command` to its exit, which must come within 10 s: a configuration
/// it refuses stops it before it loads anything. Its stderr, and the code.
async fn run_to_exit(mut command: Command) -> (Option<i32>, String) {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the tracer starts");
    let exited = eventually(Duration::from_secs(10), || {
        child.try_wait().is_ok_and(|status| status.is_some())
    })
    .await;
    if !exited {
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("the tracer's output");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        exited,
        "the tracer accepted the configuration and ran: {stderr}"
    );
    (output.status.code(), stderr)
}

/// A bad value is exit 2 with the variable named (and a header list is not
/// echoed); the configuration is checked before anything needs root.
#[tokio::test]
async fn a_bad_value_exits_2_naming_the_variable() {
    for vars in [
        &[("OTEL_EXPORTER_OTLP_HEADERS", "api-key")][..],
        &[("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "api-key=s3cret%zz")][..],
        &[("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "collector:4317")][..],
        &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")][..],
        &[("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli")][..],
        &[("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")][..],
        &[("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")][..],
        &[("OTEL_RESOURCE_ATTRIBUTES", "team")][..],
        &[("OTEL_SDK_DISABLED", "yes")][..],
        &[("OTEL_METRIC_EXPORT_INTERVAL", "soon")][..],
        &[("OTEL_TRACES_SAMPLER", "sometimes")][..],
        &[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ][..],
    ] {
        let (bad, _) = vars[vars.len() - 1];
        let (code, stderr) = run_to_exit(tracer_command(1, &[], vars)).await;
        assert_eq!(code, exit_code(Exit::Usage), "{vars:?}: {stderr}");
        assert!(
            stderr.contains(&format!("tracer: {bad}: ")),
            "{vars:?}: {stderr}"
        );
        assert!(
            !stderr.contains("s3cret"),
            "a header value in the message: {stderr}"
        );
    }
}
