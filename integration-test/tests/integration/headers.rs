//! `--capture-header` under real gunicorn: the kernel finds the named
//! request headers wherever they sit in a head of up to 8 KiB and sends
//! their values alone; they reach `--print json` and the server span, and
//! nothing else of the head does. Without the flag, no header at all.

use std::{process::Command, time::Duration};

use harness::{
    app::WorkerClass,
    sink::{ReceivedSpan, Sink},
};
use serde_json::{Value, json};

use crate::support::*;

/// A value that must never leave the kernel: its header is not named.
const SECRET: &str = "do-not-capture-me";

/// What one run gave: the `--print json` lines by path, and the server spans.
struct Run {
    lines: Vec<(String, Value)>,
    spans: Vec<ReceivedSpan>,
    sink: Sink,
}

/// gunicorn traced as `service` by a tracer with `args` and `env`, sent
/// each request (its head in parts, see [`send`]) on a connection of its
/// own; returns once every request has its JSON line and its span, the
/// tracer stopped.
async fn run(
    service: &str,
    args: &[&str],
    env: &[(&str, &str)],
    requests: Vec<Vec<Vec<u8>>>,
) -> (Vec<u16>, Run) {
    let app = start_app(WorkerClass::Sync, &[]).await;
    let sink = start_sink().await;
    let mut command = Command::new(tracer_bin());
    command
        .envs(env.iter().copied())
        .args(["--pid", &app.master_pid().to_string()])
        .args(["--service-name", service, "--print", "json"])
        .args(["--otlp-endpoint", &format!("http://{}", sink.grpc_addr())])
        .args(["--stats-interval", "1"])
        .args(probe_set_override())
        .args(args);
    let mut tracer = Tracer::launched(command);
    let addr = app.addr();
    let n = requests.len();
    let statuses = tokio::task::spawn_blocking(move || {
        requests
            .iter()
            .map(|parts| send(addr, &parts.iter().map(Vec::as_slice).collect::<Vec<_>>()))
            .collect()
    })
    .await
    .expect("client");
    let lines = read_lines(tracer.take_stdout().expect("stdout is piped"), n).await;
    assert_eq!(lines.len(), n, "{lines:?}");
    assert!(
        lines.iter().all(|line| !line.contains(SECRET)),
        "an unnamed header left the kernel: {lines:?}"
    );
    let lines = lines
        .iter()
        .map(|line| {
            let value: Value = serde_json::from_str(line).expect("a JSON line");
            (value["path"].as_str().expect("a path").to_owned(), value)
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(20), || server_spans(&sink, service)
            .len()
            >= n)
        .await,
        "got {} of {n} spans",
        server_spans(&sink, service).len()
    );
    assert_eq!(tracer.stop().code(), exit_code(Exit::Ok));
    let spans = server_spans(&sink, service);
    (statuses, Run { lines, spans, sink })
}

impl Run {
    fn line(&self, path: &str) -> &Value {
        &self
            .lines
            .iter()
            .find(|(seen, _)| seen == path)
            .unwrap_or_else(|| panic!("no line for {path}: {:?}", self.lines))
            .1
    }

    fn span(&self, path: &str) -> &ReceivedSpan {
        self.spans
            .iter()
            .find(|span| span.attributes.get("url.path").and_then(|v| v.as_str()) == Some(path))
            .unwrap_or_else(|| panic!("no span for {path}"))
    }
}

/// The span's attributes that come from request headers.
fn header_attributes(span: &ReceivedSpan) -> Vec<&str> {
    span.attributes
        .keys()
        .map(String::as_str)
        .filter(|key| key.starts_with("http.request.header.") || *key == "user_agent.original")
        .collect()
}

/// A head with named headers after 6 KiB of others.
fn deep_head() -> Vec<u8> {
    let deep = head(
        "/light",
        6 * 1024,
        &[
            "X-Tenant: acme",
            &format!("X-Secret: {SECRET}"),
            "User-Agent: headers-test/1.0",
            "x-tenant: \t second  ",
        ],
    );
    assert!(deep.len() > 6 * 1024 && deep.len() < 8 * 1024);
    deep
}

/// Two named headers after 6 KiB of others, one of them twice, beside one
/// not named: the values in order, on the JSON line and the span, and
/// nothing of the unnamed one; a request without them has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_headers_deep_in_the_head_reach_json_and_the_span() {
    let plain = head("/missing", 0, &[&format!("X-Secret: {SECRET}")]);
    let args = [
        "--capture-header",
        "X-Tenant",
        "--capture-header",
        "user-agent",
    ];
    let (statuses, run) = run("headers", &args, &[], vec![vec![deep_head()], vec![plain]]).await;
    assert_eq!(statuses, [200, 404]);
    assert_eq!(
        run.line("/light")["request_headers"],
        json!({"x-tenant": ["acme", "second"], "user-agent": ["headers-test/1.0"]})
    );
    assert_eq!(run.line("/missing").get("request_headers"), None);

    let deep = run.span("/light");
    let strings = |key: &str| {
        deep.attributes
            .get(key)
            .and_then(|value| value.as_strs())
            .unwrap_or_else(|| panic!("no string array {key}: {:?}", deep.attributes))
            .to_vec()
    };
    assert_eq!(strings("http.request.header.x-tenant"), ["acme", "second"]);
    assert_eq!(
        strings("http.request.header.user-agent"),
        ["headers-test/1.0"]
    );
    assert_eq!(attr_str(deep, "user_agent.original"), "headers-test/1.0");
    assert_eq!(header_attributes(deep).len(), 3, "{:?}", deep.attributes);
    assert!(!format!("{:?}", deep.attributes).contains(SECRET));
    assert_eq!(header_attributes(run.span("/missing")), Vec::<&str>::new());
}

/// Without `--capture-header` the same request gives no header attribute
/// and no `request_headers`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_flag_no_header_is_captured() {
    let (statuses, run) = run("no-headers", &[], &[], vec![vec![deep_head()]]).await;
    assert_eq!(statuses, [200]);
    assert_eq!(run.line("/light").get("request_headers"), None);
    assert_eq!(header_attributes(run.span("/light")), Vec::<&str>::new());
}

/// A head in two reads, the names from `TRACER_CAPTURE_HEADER`: split at a
/// line start, the header after the split is found; split inside a name,
/// it is missed, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_split_over_reads() {
    let start = "Host: test\r\nConnection: close\r\n";
    let requests = vec![
        vec![
            format!("GET /light HTTP/1.1\r\n{start}").into_bytes(),
            b"X-Tenant: after-the-split\r\nUser-Agent: split/1\r\n\r\n".to_vec(),
        ],
        vec![
            format!("GET /missing HTTP/1.1\r\n{start}X-Ten").into_bytes(),
            b"ant: cut-in-its-name\r\n\r\n".to_vec(),
        ],
    ];
    let env = [("TRACER_CAPTURE_HEADER", "X-Tenant,user-agent")];
    let (statuses, run) = run("split", &[], &env, requests).await;
    assert_eq!(statuses, [200, 404]);
    assert_eq!(
        run.line("/light")["request_headers"],
        json!({"x-tenant": ["after-the-split"], "user-agent": ["split/1"]})
    );
    assert_eq!(run.line("/missing").get("request_headers"), None);
    // The final loss counts reach the sink when the tracer stops.
    assert!(
        dropped(&run.sink, DropReason::HeaderMissed) >= 1.0,
        "the header cut in its name is not counted"
    );
}

/// A name that is no token, too long a name, or too many: exit 2 with the
/// flag named, from the flag and from its variable alike.
#[test]
fn bad_names_are_usage_errors() {
    let run = |args: &[&str], variable: Option<&str>| {
        let mut command = Command::new(tracer_bin());
        command
            .args(["--pid", "1", "--otlp-endpoint", "none"])
            .args(args);
        if let Some(value) = variable {
            command.env("TRACER_CAPTURE_HEADER", value);
        }
        let output = command.output().expect("tracer runs");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), exit_code(Exit::Usage), "{stderr}");
        assert!(stderr.contains("--capture-header"), "{stderr}");
        stderr
    };
    assert!(run(&["--capture-header", "x tenant"], None).contains("invalid header name"));
    let long = "x".repeat(33);
    assert!(run(&["--capture-header", &long], None).contains("invalid header name"));
    assert!(run(&[], Some("x-a,x:b")).contains("invalid header name"));
    let nine = (0..9)
        .map(|i| format!("x-{i}"))
        .collect::<Vec<_>>()
        .join(",");
    assert!(run(&["--no-trace-context"], Some(&nine)).contains("at most 8"));
    // With the trace context's two headers, six are left.
    let seven = (0..7)
        .map(|i| format!("x-{i}"))
        .collect::<Vec<_>>()
        .join(",");
    assert!(run(&[], Some(&seven)).contains("at most 6"));
}
