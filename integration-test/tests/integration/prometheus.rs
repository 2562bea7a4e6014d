//! The Prometheus endpoint (`--prometheus-port`) against the real app under
//! real gunicorn: while the tracer runs, a scrape's duration histogram adds
//! up exactly to the requests sent, label set by label set, with the OTLP
//! histogram's buckets; the tracer's own counters are there; a port in use
//! is a clear error with its own exit code.

use std::{
    collections::{BTreeMap, HashMap},
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use harness::{
    app::{App, WorkerClass},
    tracer::TracerProcess,
};
use tracer::telemetry::exporter::DURATION_BUCKETS;

use crate::support::*;

const HISTOGRAM: &str = "http_server_request_duration_seconds";
const BODY_SIZES: &str = "http_server_response_body_size_bytes";

/// One sample line of an OpenMetrics exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> &str {
        self.labels
            .get(name)
            .unwrap_or_else(|| panic!("{self:?} has no label {name}"))
    }
}

/// A port nobody listens on now.
fn free_loopback_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
}

/// GET /metrics on a new connection: the exposition's samples.
fn scrape(endpoint: SocketAddr) -> Vec<Sample> {
    let mut stream = TcpStream::connect(endpoint).expect("connect to the Prometheus endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .expect("send the scrape");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the scrape");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
    assert_eq!(status_of(head.as_bytes()), 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    parse_exposition(body)
}

fn malformed(line: &str) -> ! {
    panic!("not OpenMetrics text: {line:?}")
}

/// A strict reading of OpenMetrics text: each line is a `# HELP`, `# TYPE`
/// or `# UNIT` descriptor, or a sample of the family last typed, named by
/// the family plus a suffix its type allows; the last line is `# EOF`.
fn parse_exposition(text: &str) -> Vec<Sample> {
    let body = text
        .strip_suffix("# EOF\n")
        .unwrap_or_else(|| panic!("no final # EOF:\n{text}"));
    let mut family: Option<(&str, &str)> = None;
    let mut samples = Vec::new();
    for line in body.lines() {
        if let Some(descriptor) = line.strip_prefix("# ") {
            let mut words = descriptor.splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("TYPE"), Some(name), Some(kind)) if is_name(name) => {
                    family = Some((name, kind));
                }
                (Some("HELP" | "UNIT"), Some(name), Some(_)) if is_name(name) => {}
                _ => malformed(line),
            }
            continue;
        }
        let sample = parse_sample(line);
        let (name, kind) = family.unwrap_or_else(|| malformed(line));
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "gauge" => &[""],
            "histogram" => &["_bucket", "_sum", "_count"],
            "info" => &["_info"],
            _ => malformed(line),
        };
        let suffix = sample.name.strip_prefix(name);
        if !suffix.is_some_and(|suffix| suffixes.contains(&suffix)) {
            malformed(line);
        }
        samples.push(sample);
    }
    samples
}

fn is_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `name{label="value",...} value`; label values may hold `\\`, `\"` and
/// `\n` escapes. No timestamps, no exemplars: the tracer writes none.
fn parse_sample(line: &str) -> Sample {
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| malformed(line));
    let (name, mut rest) = line.split_at(name_end);
    let mut labels = BTreeMap::new();
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            let (key, quoted) = inner.split_once("=\"").unwrap_or_else(|| malformed(line));
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let closing = loop {
                match chars.next() {
                    Some((at, '"')) => break at,
                    Some((_, '\\')) => value.push(match chars.next() {
                        Some((_, 'n')) => '\n',
                        Some((_, escaped @ ('\\' | '"'))) => escaped,
                        _ => malformed(line),
                    }),
                    Some((_, c)) => value.push(c),
                    None => malformed(line),
                }
            };
            if !is_name(key) || labels.insert(key.to_owned(), value).is_some() {
                malformed(line);
            }
            inner = &quoted[closing + 1..];
            match inner.strip_prefix(',') {
                Some(next) => inner = next,
                None => {
                    rest = inner.strip_prefix('}').unwrap_or_else(|| malformed(line));
                    break;
                }
            }
        }
    }
    let value = rest
        .strip_prefix(' ')
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| malformed(line));
    if !is_name(name) {
        malformed(line);
    }
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

/// (method, status): what a request's histogram labels are checked by; any
/// other label (`http_route`, say) may split a group into several series.
type Group = (String, String);

fn group_of(sample: &Sample) -> Group {
    (
        sample.label("http_request_method").to_owned(),
        sample.label("http_response_status_code").to_owned(),
    )
}

/// The `histogram`'s `suffix` samples (`_count`, `_sum`), added up by group.
fn totals_by_group(samples: &[Sample], histogram: &str, suffix: &str) -> HashMap<Group, f64> {
    let name = format!("{histogram}{suffix}");
    let mut totals = HashMap::new();
    for sample in samples.iter().filter(|sample| sample.name == name) {
        *totals.entry(group_of(sample)).or_default() += sample.value;
    }
    totals
}

fn value_of(samples: &[Sample], name: &str) -> f64 {
    match samples.iter().find(|sample| sample.name == name) {
        Some(sample) => sample.value,
        None => panic!("no {name} in the scrape"),
    }
}

/// The tracer on `app`, OTLP off, serving Prometheus on `endpoint`.
fn launch_scraped(app: &App, endpoint: SocketAddr) -> TracerProcess {
    let mut command = Command::new(tracer_bin());
    command
        .args(["--pid", &app.master_pid().to_string()])
        .args([
            "--service-name",
            "prometheus-test",
            "--otlp-endpoint",
            "none",
        ])
        .args(["--stats-interval", "1"])
        .args(["--prometheus-port", &endpoint.port().to_string()])
        .args(["--prometheus-address", "127.0.0.1"])
        .args(probe_set_override());
    launch(command)
}

/// Requests to a few paths with different statuses, scraped while the
/// tracer runs (with OTLP off: the endpoint is all there is).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_counts_every_request_under_its_labels() {
    let app = start_app(WorkerClass::Sync, &[]).await;
    let endpoint = free_loopback_address();
    let mut tracer = launch_scraped(&app, endpoint);
    let addr = app.addr();

    let plan: [(&'static str, &'static str, &'static [u8], usize); 4] = [
        ("GET", "/work", b"", 60),
        ("GET", "/missing", b"", 40),
        ("GET", "/fail", b"", 20),
        ("POST", "/echo-size", b"a body", 30),
    ];
    let sent: Vec<Sent> = tokio::task::spawn_blocking(move || {
        plan.into_iter()
            .flat_map(|(method, path, body, n)| {
                (0..n).map(move |_| request(addr, method, path, body))
            })
            .collect()
    })
    .await
    .expect("client");
    let mut expected: HashMap<Group, f64> = HashMap::new();
    let mut latency_by_group: HashMap<Group, f64> = HashMap::new();
    let mut body_bytes_by_group: HashMap<Group, f64> = HashMap::new();
    for request in &sent {
        let group = (request.method.to_owned(), request.status.to_string());
        *expected.entry(group.clone()).or_default() += 1.0;
        *body_bytes_by_group.entry(group.clone()).or_default() += request.body_bytes as f64;
        *latency_by_group.entry(group).or_default() += request.latency_ns as f64 / 1e9;
    }
    assert_eq!(
        expected.len(),
        4,
        "four (method, status) groups: {expected:?}"
    );

    assert!(
        eventually(Duration::from_secs(20), || {
            totals_by_group(&scrape(endpoint), HISTOGRAM, "_count") == expected
        })
        .await,
        "scraped counts {:?}, sent {expected:?}",
        totals_by_group(&scrape(endpoint), HISTOGRAM, "_count")
    );
    let samples = scrape(endpoint);

    // Each series: buckets at the OTLP boundaries, cumulative, the last
    // (+Inf) equal to the count.
    let boundaries: Vec<f64> = DURATION_BUCKETS
        .into_iter()
        .chain([f64::INFINITY])
        .collect();
    let counts = samples
        .iter()
        .filter(|sample| sample.name == format!("{HISTOGRAM}_count"));
    for count in counts {
        assert_eq!(count.label("server_port"), addr.port().to_string());
        let mut buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter(|sample| sample.name == format!("{HISTOGRAM}_bucket"))
            .filter(|bucket| {
                let mut labels = bucket.labels.clone();
                labels.remove("le");
                labels == count.labels
            })
            .map(|bucket| {
                let le = bucket.label("le").parse().expect("a numeric le");
                (le, bucket.value)
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let les: Vec<f64> = buckets.iter().map(|&(le, _)| le).collect();
        assert_eq!(les, boundaries, "{count:?}");
        assert!(
            buckets.windows(2).all(|pair| pair[0].1 <= pair[1].1),
            "buckets of {count:?} are not cumulative: {buckets:?}"
        );
        assert_eq!(
            buckets.last().map(|&(_, n)| n),
            Some(count.value),
            "{count:?}"
        );
    }
    // Every response's body was counted, to the byte the client read.
    assert_eq!(totals_by_group(&samples, BODY_SIZES, "_count"), expected);
    assert_eq!(
        totals_by_group(&samples, BODY_SIZES, "_sum"),
        body_bytes_by_group
    );
    // Each traced duration lies within what its client measured.
    for (group, sum) in totals_by_group(&samples, HISTOGRAM, "_sum") {
        let client = latency_by_group[&group];
        assert!(
            sum > 0.0 && sum <= client,
            "{group:?}: {sum} s traced, {client} s seen"
        );
    }

    assert_eq!(
        value_of(&samples, "tracer_requests_total"),
        sent.len() as f64
    );
    for reason in DropReason::ALL {
        let series = samples
            .iter()
            .filter(|sample| {
                sample.name == "tracer_dropped_total"
                    && sample.labels.get("reason").map(String::as_str) == Some(reason.as_str())
            })
            .count();
        assert_eq!(series, 1, "tracer_dropped_total{{reason=\"{reason}\"}}");
    }
    let workers = app.worker_pids().expect("gunicorn's workers").len();
    assert_eq!(
        value_of(&samples, "tracer_traced_processes"),
        (1 + workers) as f64,
        "the master and its workers"
    );
    // One target_info per resource: the traced instance's and the tracer's
    // own, each series under its resource's job and instance.
    let mut jobs: Vec<&str> = samples
        .iter()
        .filter(|sample| sample.name == "target_info")
        .map(|sample| sample.label("job"))
        .collect();
    jobs.sort();
    assert_eq!(jobs, ["prometheus-test", "tracer"]);
    for sample in samples
        .iter()
        .filter(|sample| sample.name.starts_with(HISTOGRAM))
    {
        assert_eq!(sample.label("job"), "prometheus-test", "{sample:?}");
        assert!(!sample.label("instance").is_empty(), "{sample:?}");
    }

    assert_eq!(
        tracer.stop().expect("the tracer exits").code(),
        exit_code(Exit::Ok)
    );
}

/// `http_server_active_requests` of POSTs in the scrape, if it has the series.
fn active_posts(samples: &[Sample]) -> Option<f64> {
    samples
        .iter()
        .find(|sample| {
            sample.name == "http_server_active_requests"
                && sample.label("http_request_method") == "POST"
        })
        .map(|sample| sample.value)
}

/// POSTs whose heads are sent and whose bodies are held back: each handler
/// waits in its read of the body, so exactly that many requests are in
/// flight until the bodies go. As many as one worker has threads: a worker
/// that accepted more would not read the extra heads (not in flight yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_requests_are_the_requests_in_flight() {
    const HELD: usize = 4;
    let app = start_app(WorkerClass::Gthread { threads: 4 }, &[]).await;
    let endpoint = free_loopback_address();
    let mut tracer = launch_scraped(&app, endpoint);
    let addr = app.addr();
    // An instance's series start with its first completed request.
    let first = tokio::task::spawn_blocking(move || request(addr, "GET", "/light", b""))
        .await
        .expect("client");
    assert_eq!(first.status, 200);

    let head =
        b"POST /echo-size HTTP/1.1\r\nHost: test\r\nContent-Length: 4\r\nConnection: close\r\n\r\n";
    let mut held: Vec<TcpStream> = (0..HELD)
        .map(|_| {
            let mut stream = TcpStream::connect(addr).expect("connect");
            stream.write_all(head).expect("send the head");
            stream
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(20), || active_posts(&scrape(endpoint))
            == Some(HELD as f64))
        .await,
        "in flight: {:?}, {HELD} held",
        active_posts(&scrape(endpoint))
    );
    for stream in &mut held {
        stream.write_all(b"body").expect("send the body");
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .expect("read the response");
        assert_eq!(status_of(&response), 200);
    }
    assert!(
        eventually(Duration::from_secs(20), || active_posts(&scrape(endpoint))
            == Some(0.0))
        .await,
        "the series stays, at 0: {:?}",
        active_posts(&scrape(endpoint))
    );
    assert_eq!(
        tracer.stop().expect("the tracer exits").code(),
        exit_code(Exit::Ok)
    );
}

#[test]
fn a_port_in_use_is_a_clear_error_and_its_own_exit_code() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("a port to take");
    let port = taken.local_addr().expect("its address").port().to_string();
    let output = Command::new(tracer_bin())
        .args(["--pid", &std::process::id().to_string()])
        .args(["--otlp-endpoint", "none"])
        .args([
            "--prometheus-port",
            &port,
            "--prometheus-address",
            "127.0.0.1",
        ])
        .output()
        .expect("tracer runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        exit_code(Exit::PrometheusListen),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "cannot serve Prometheus metrics on 127.0.0.1:{port}: Address already in use"
        )),
        "{stderr}"
    );
}
