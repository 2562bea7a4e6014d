//! Distributed traces (issue 13): a W3C `traceparent` in a request head
//! makes the server span its child; HTTP/1.x calls a traced process makes
//! on sockets it connected are CLIENT spans, children of the server span
//! their thread was serving; and two services on one host, both traced,
//! form one trace. Real gunicorn calling real gunicorn and an untraced
//! server of the test's own, one tracer selecting both by port.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use harness::{
    app::{App, WorkerClass},
    sink::ReceivedSpan,
    tls::ServerTls,
};
use serde_json::Value;

use crate::support::*;

const UPSTREAM: &str = "chain-upstream";
const DOWNSTREAM: &str = "chain-downstream";
/// Requests to `/chain`: each makes three calls.
const CHAINS: usize = 200;
const SPANS_ARRIVE: Duration = Duration::from_secs(60);

/// gunicorn with threaded workers, so that a call's parent must be its
/// thread's request, not its process's; `env` tells routes whom to call;
/// serving HTTPS with `tls`.
async fn gunicorn(env: &[(&str, String)], tls: Option<&ServerTls>) -> App {
    let mut options = app_options();
    options.worker_class = keep_alive_class();
    options.tls = tls.cloned();
    options.env = env
        .iter()
        .map(|(name, value)| (name.to_string(), value.clone()))
        .collect();
    App::start(&options).await.expect("gunicorn starts")
}

/// Upstream's `/chain` calls downstream twice and an untraced server once;
/// a services file selects upstream and downstream by port.
struct Chain {
    upstream: App,
    downstream: App,
    /// Downstream's: `https` when it serves TLS.
    scheme: &'static str,
    untraced: CannedServer,
    config: PathBuf,
}

impl Chain {
    /// Downstream serves HTTPS with `tls`, and upstream trusts its
    /// certificate.
    async fn start(tls: Option<&ServerTls>) -> Chain {
        let untraced = CannedServer::start(Canned::Status(200));
        let downstream = gunicorn(&[], tls).await;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut env = vec![
            (
                "CHAIN_DOWNSTREAM",
                format!("{scheme}://{}", downstream.addr()),
            ),
            ("CHAIN_UNTRACED", untraced.base_url()),
        ];
        if let Some(tls) = tls {
            let ca = tls.certificate.display().to_string();
            env.extend([("SSL_CERT_FILE", ca.clone()), ("REQUESTS_CA_BUNDLE", ca)]);
        }
        let upstream = gunicorn(&env, None).await;
        let config = std::env::temp_dir().join(format!("tracer-chain-{}.yaml", std::process::id()));
        std::fs::write(
            &config,
            format!(
                "services:\n  - name: {UPSTREAM}\n    port: {}\n  - name: {DOWNSTREAM}\n    port: {}\n",
                upstream.addr().port(),
                downstream.addr().port()
            ),
        )
        .expect("write the config file");
        Chain {
            upstream,
            downstream,
            scheme,
            untraced,
            config,
        }
    }

    fn config_path(&self) -> String {
        self.config.display().to_string()
    }

    /// What upstream's `/chain` calls, by (port, path), for each call.
    fn calls(&self) -> BTreeSet<(u16, &'static str)> {
        let downstream = self.downstream.addr().port();
        BTreeSet::from([
            (downstream, "/light"),
            (downstream, "/users/7"),
            (self.untraced.addr().port(), "/untraced"),
        ])
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

/// Spans counted by service and kind, for failure messages.
fn census(spans: &[ReceivedSpan]) -> BTreeMap<(String, String), usize> {
    let mut counts = BTreeMap::new();
    for span in spans {
        *counts
            .entry((span.service.clone(), span.kind.clone()))
            .or_default() += 1;
    }
    counts
}

fn count(spans: &[ReceivedSpan], service: &str, kind: &str) -> usize {
    spans
        .iter()
        .filter(|span| span.service == service && span.kind == kind)
        .count()
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A CLIENT span's attributes are those of a successful GET of `path` on
/// 127.0.0.1:`port` over `scheme`.
fn assert_call(call: &ReceivedSpan, scheme: &str, port: u16, path: &str) {
    assert_eq!(call.kind, "CLIENT");
    assert_eq!(call.name, "GET");
    assert_eq!(attr_str(call, "http.request.method"), "GET");
    assert_eq!(attr_str(call, "server.address"), "127.0.0.1");
    assert_eq!(attr_i64(call, "server.port"), i64::from(port));
    assert_eq!(
        attr_str(call, "url.full"),
        format!("{scheme}://127.0.0.1:{port}{path}")
    );
    assert_eq!(attr_str(call, "url.scheme"), scheme);
    assert_eq!(attr_i64(call, "http.response.status_code"), 200);
    assert_eq!(attr_str(call, "network.peer.address"), "127.0.0.1");
    assert_eq!(attr_i64(call, "network.peer.port"), i64::from(port));
    assert_ne!(call.status_code, 2, "a 200 is no error: {call:?}");
}

/// Where a CLIENT span went: its `server.port` and the path of `url.full`.
fn target(call: &ReceivedSpan) -> (u16, String) {
    let port = attr_i64(call, "server.port") as u16;
    let url = attr_str(call, "url.full");
    let path = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .and_then(|rest| rest.find('/').map(|at| rest[at..].to_owned()))
        .unwrap_or_else(|| panic!("url.full {url:?} is no http URL with a path"));
    (port, path)
}

/// 200 `/chain` requests from four clients at once, with both services and
/// the tracer on one host: each is one trace of exactly six spans (and the
/// server spans' own "in queue" and "processing" children): upstream's
/// server span, its three calls, and downstream's server span under each
/// of the two calls that reached it; none linked across traces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_requests_form_one_trace_each() {
    chains_form_one_trace_each(None).await;
}

/// The same over HTTPS to downstream (gunicorn `--certfile`): upstream's
/// calls are seen in its libssl, downstream's requests in its own, and the
/// two are linked by their connection's ports as plain ones are, because
/// OpenSSL's records carry their real socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_chain_requests_form_one_trace_each() {
    let dir = std::env::temp_dir().join(format!("tracer-chain-tls-{}", std::process::id()));
    chains_form_one_trace_each(Some(&certificate(&dir))).await;
    let _ = std::fs::remove_dir_all(dir);
}

async fn chains_form_one_trace_each(tls: Option<&ServerTls>) {
    let chain = Chain::start(tls).await;
    let sink = start_sink().await;
    // Started once both answer: their readiness probes make no spans.
    let tracer = Tracer::select(&sink, &["--config", &chain.config_path()]);
    let plan = vec![("GET", "/chain".to_owned(), &b""[..]); CHAINS];
    let sent = parallel_requests(chain.upstream.addr(), plan, 4).await;
    let statuses: BTreeSet<u16> = sent.iter().map(|sent| sent.status).collect();
    assert_eq!(
        statuses,
        BTreeSet::from([200]),
        "every chain of calls worked"
    );
    // The server counts an answer once written: the app can be done first.
    assert!(
        eventually(SPANS_ARRIVE, || chain.untraced.answered() == CHAINS).await,
        "the untraced server answered {} of {CHAINS}",
        chain.untraced.answered()
    );

    let arrived = eventually(SPANS_ARRIVE, || {
        let spans = sink.spans();
        count(&spans, UPSTREAM, "SERVER") >= CHAINS
            && count(&spans, DOWNSTREAM, "SERVER") >= 2 * CHAINS
            && count(&spans, UPSTREAM, "CLIENT") >= 3 * CHAINS
    })
    .await;
    assert!(
        arrived,
        "expected {CHAINS} upstream server spans, {} downstream server spans and {} client spans, got {:?}",
        2 * CHAINS,
        3 * CHAINS,
        census(&sink.spans())
    );
    assert_eq!(tracer.stop().code(), exit_code(Exit::Ok));
    let spans = sink.spans();
    let by_id: HashMap<&str, &ReceivedSpan> = spans
        .iter()
        .map(|span| (span.span_id.as_str(), span))
        .collect();
    assert_eq!(by_id.len(), spans.len(), "span ids are unique");
    let mut by_trace: HashMap<&str, Vec<&ReceivedSpan>> = HashMap::new();
    for span in &spans {
        by_trace.entry(&span.trace_id).or_default().push(span);
    }

    let roots: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|span| span.service == UPSTREAM && span.kind == "SERVER")
        .collect();
    assert_eq!(roots.len(), CHAINS, "one upstream server span per request");
    let downstream_port = chain.downstream.addr().port();
    for root in roots {
        assert_eq!(attr_str(root, "url.path"), "/chain");
        assert_eq!(
            root.parent_span_id, "",
            "the test sent no traceparent: a root"
        );
        let trace = &by_trace[root.trace_id.as_str()];
        let calls: Vec<&&ReceivedSpan> = trace.iter().filter(|s| s.kind == "CLIENT").collect();
        assert_eq!(calls.len(), 3, "three calls in the trace of {root:?}");
        let mut targets = BTreeSet::new();
        let mut served = Vec::new();
        for call in calls {
            assert_eq!(call.service, UPSTREAM);
            assert_eq!(call.parent_span_id, root.span_id, "{call:?}");
            let (port, path) = target(call);
            let scheme = if port == downstream_port {
                chain.scheme
            } else {
                "http"
            };
            assert_call(call, scheme, port, &path);
            // The call happened while upstream served the request.
            assert!(
                root.start_unix_ns <= call.start_unix_ns && call.end_unix_ns <= root.end_unix_ns,
                "call {call:?} outside its request {root:?}"
            );
            let under: Vec<&&ReceivedSpan> = trace
                .iter()
                .filter(|s| s.kind == "SERVER" && s.parent_span_id == call.span_id)
                .collect();
            if port == downstream_port {
                assert_eq!(under.len(), 1, "one downstream span under {call:?}");
                assert_eq!(under[0].service, DOWNSTREAM);
                assert_eq!(attr_str(under[0], "url.path"), path);
                assert_eq!(attr_str(under[0], "url.scheme"), chain.scheme);
                served.push(under[0].span_id.as_str());
            } else {
                assert_eq!(under.len(), 0, "the untraced server has no span");
            }
            targets.insert((port, path));
        }
        let expected: BTreeSet<(u16, String)> = chain
            .calls()
            .into_iter()
            .map(|(port, path)| (port, path.to_owned()))
            .collect();
        assert_eq!(targets, expected, "each call once");
        // Everything else in the trace is a server span's own child.
        let servers: BTreeSet<&str> = served
            .iter()
            .copied()
            .chain([root.span_id.as_str()])
            .collect();
        let others = trace
            .iter()
            .filter(|s| s.kind != "CLIENT" && !servers.contains(s.span_id.as_str()));
        for other in others {
            assert_eq!(
                other.kind, "INTERNAL",
                "a stray span in the trace: {other:?}"
            );
            assert!(servers.contains(other.parent_span_id.as_str()), "{other:?}");
        }
    }

    // No cross-links: every call's parent is a /chain span, every
    // downstream span's parent a call, each in the same trace.
    for span in spans.iter().filter(|s| s.kind != "INTERNAL") {
        let parent = by_id.get(span.parent_span_id.as_str());
        match (span.service.as_str(), span.kind.as_str()) {
            (UPSTREAM, "SERVER") => {}
            (UPSTREAM, "CLIENT") => {
                let parent = parent.unwrap_or_else(|| panic!("an orphan call {span:?}"));
                assert_eq!(
                    (parent.kind.as_str(), parent.service.as_str()),
                    ("SERVER", UPSTREAM)
                );
                assert_eq!(parent.trace_id, span.trace_id);
            }
            (DOWNSTREAM, "SERVER") => {
                let parent = parent.unwrap_or_else(|| panic!("an unlinked server span {span:?}"));
                assert_eq!(parent.kind, "CLIENT", "{span:?}");
                assert_eq!(parent.trace_id, span.trace_id);
            }
            _ => panic!("an unexpected span {span:?}"),
        }
    }
    assert_eq!(count(&spans, UPSTREAM, "CLIENT"), 3 * CHAINS);
    assert_eq!(count(&spans, DOWNSTREAM, "SERVER"), 2 * CHAINS);
}

/// HTTPS calls whose large response (`/work`, 48,889 bytes) the client
/// reads in many `SSL_read`s, some of them served from OpenSSL's buffer
/// without touching the socket: each call is one CLIENT span, whole (not
/// cut short), ending after the server span it called, and no plaintext
/// went without its socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_calls_with_large_responses_are_whole() {
    let dir = std::env::temp_dir().join(format!("tracer-fetch-tls-{}", std::process::id()));
    let chain = Chain::start(Some(&certificate(&dir))).await;
    let sink = start_sink().await;
    let tracer = Tracer::select(&sink, &["--config", &chain.config_path()]);
    let n = 100;
    let plan = vec![("GET", "/fetch-work".to_owned(), &b""[..]); n];
    let sent = parallel_requests(chain.upstream.addr(), plan, 4).await;
    assert!(sent.iter().all(|s| s.status == 200), "every fetch worked");
    let arrived = eventually(SPANS_ARRIVE, || {
        let spans = sink.spans();
        count(&spans, UPSTREAM, "CLIENT") >= n && count(&spans, DOWNSTREAM, "SERVER") >= n
    })
    .await;
    assert!(arrived, "got {:?}", census(&sink.spans()));
    assert_eq!(tracer.stop().code(), exit_code(Exit::Ok));
    let spans = sink.spans();
    assert_eq!(count(&spans, UPSTREAM, "CLIENT"), n);
    let downstream_port = chain.downstream.addr().port();
    for call in spans.iter().filter(|s| s.kind == "CLIENT") {
        assert_call(call, "https", downstream_port, "/work");
        let served: Vec<&ReceivedSpan> = spans
            .iter()
            .filter(|s| s.kind == "SERVER" && s.parent_span_id == call.span_id)
            .collect();
        assert_eq!(served.len(), 1, "one server span under {call:?}");
        assert!(
            served[0].end_unix_ns <= call.end_unix_ns,
            "the call {call:?} ended before its response was written"
        );
    }
    assert_eq!(dropped(&sink, DropReason::TlsSocketUnknown), 0.0);
    let _ = std::fs::remove_dir_all(dir);
}

fn traceparent(trace_id: &str, span_id: &str) -> String {
    format!("traceparent: 00-{trace_id}-{span_id}-01")
}

/// A `traceparent` after 2 KiB of other headers (and another after 7 KiB)
/// makes the server span its child; a malformed and an all-zero one are
/// ignored, the spans roots of fresh traces, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_traceparent_after_2kib_of_headers_joins_the_trace() {
    const SERVICE: &str = "traceparent";
    // The W3C recommendation's examples.
    let (trace, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let (deep_trace, deep_parent) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let zero = traceparent(&"0".repeat(32), &"0".repeat(16));
    let heads = [
        head("/light", 2 * 1024, &[&traceparent(trace, parent)]),
        head(
            "/users/1",
            7 * 1024,
            &[&traceparent(deep_trace, deep_parent)],
        ),
        head(
            "/users/2",
            2 * 1024,
            &["traceparent: 00-xyz-00f067aa0ba902b7-01"],
        ),
        head("/users/3", 2 * 1024, &[&zero]),
    ];
    assert!(heads[1].len() < 8 * 1024, "inside the 8 KiB scanned");
    let app = start_app(WorkerClass::Sync, &[]).await;
    let sink = start_sink().await;
    let tracer = Tracer::start(app.master_pid(), &sink, SERVICE);
    let addr = app.addr();
    let statuses: Vec<u16> = tokio::task::spawn_blocking(move || {
        heads
            .iter()
            .map(|head| send(addr, &[head.as_slice()]))
            .collect()
    })
    .await
    .expect("client");
    assert_eq!(statuses, [200; 4]);
    assert!(
        eventually(Duration::from_secs(20), || server_spans(&sink, SERVICE)
            .len()
            >= 4)
        .await,
        "got {} of 4 spans",
        server_spans(&sink, SERVICE).len()
    );
    assert_eq!(tracer.stop().code(), exit_code(Exit::Ok));
    let spans = server_spans(&sink, SERVICE);
    let span = |path: &str| {
        spans
            .iter()
            .find(|span| attr_str(span, "url.path") == path)
            .unwrap_or_else(|| panic!("no span for {path}"))
    };

    for (path, trace, parent) in [
        ("/light", trace, parent),
        ("/users/1", deep_trace, deep_parent),
    ] {
        let joined = span(path);
        assert_eq!(
            (joined.trace_id.as_str(), joined.parent_span_id.as_str()),
            (trace, parent),
            "{path} joins the caller's trace"
        );
        assert_ne!(joined.span_id, parent);
    }
    let roots = [span("/users/2"), span("/users/3")];
    for root in roots {
        assert_eq!(root.parent_span_id, "", "ignored: {root:?}");
        assert!(is_hex(&root.trace_id, 32), "{root:?}");
        assert!(
            ![trace, deep_trace, "0".repeat(32).as_str()].contains(&root.trace_id.as_str()),
            "a fresh trace: {root:?}"
        );
    }
    assert_ne!(roots[0].trace_id, roots[1].trace_id);
    // The final loss counts reach the sink when the tracer stops.
    assert_eq!(
        dropped(&sink, DropReason::TraceparentInvalid),
        2.0,
        "{}",
        losses(&sink)
    );
}

/// Calls that fail: a 503 is a CLIENT span with status ERROR and
/// `error.type` "503"; a response reset after 10 of its 1000 bytes is one
/// with status ERROR and an `error.type`; a refused connection sent no
/// HTTP, so it is no CLIENT span at all. The app answers each with 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_calls_are_client_spans_with_error_status() {
    const SERVICE: &str = "failing-calls";
    let unavailable = CannedServer::start(Canned::Status(503));
    let reset = CannedServer::start(Canned::ResetMidBody);
    // Bound without listening, then free: nothing listens there.
    let refused = harness::app::free_port(0).expect("a free port");
    let mut options = app_options();
    options.env = vec![
        ("CALL_STATUS".into(), unavailable.base_url()),
        ("CALL_RESET".into(), reset.base_url()),
        ("CALL_REFUSED".into(), format!("http://127.0.0.1:{refused}")),
    ];
    let app = App::start(&options).await.expect("gunicorn starts");
    let sink = start_sink().await;
    let tracer = Tracer::start(app.master_pid(), &sink, SERVICE);
    let addr = app.addr();
    let paths = ["/call-status", "/call-reset", "/call-refused"];
    let statuses: Vec<u16> = tokio::task::spawn_blocking(move || {
        paths
            .iter()
            .map(|path| request(addr, "GET", path, b"").status)
            .collect()
    })
    .await
    .expect("client");
    assert_eq!(statuses, [502; 3], "the app saw each call fail");
    // Each server counts its answer once done (after the reset, for that
    // one): the app can have answered 502 first.
    let answered = || (unavailable.answered(), reset.answered());
    assert!(
        eventually(Duration::from_secs(20), || answered() == (1, 1)).await,
        "the servers answered {:?} of (1, 1)",
        answered()
    );

    let clients = || {
        sink.spans()
            .into_iter()
            .filter(|span| span.service == SERVICE && span.kind == "CLIENT")
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(Duration::from_secs(20), || server_spans(&sink, SERVICE)
            .len()
            >= 3)
        .await,
        "got {} of 3 server spans",
        server_spans(&sink, SERVICE).len()
    );
    assert!(
        eventually(Duration::from_secs(20), || clients().len() >= 2).await,
        "got {} of 2 client spans: {:?}",
        clients().len(),
        census(&sink.spans())
    );
    assert_eq!(tracer.stop().code(), exit_code(Exit::Ok));
    let servers = server_spans(&sink, SERVICE);
    let server = |path: &str| {
        servers
            .iter()
            .find(|span| attr_str(span, "url.path") == path)
            .unwrap_or_else(|| panic!("no span for {path}"))
    };
    for path in paths {
        assert_eq!(attr_i64(server(path), "http.response.status_code"), 502);
        assert_eq!(server(path).status_code, 2, "{path}: ERROR");
    }
    let clients = clients();
    assert_eq!(
        clients.len(),
        2,
        "no call span for the refused connection: {clients:?}"
    );
    let call_to = |port: u16| {
        clients
            .iter()
            .find(|span| attr_i64(span, "server.port") == i64::from(port))
            .unwrap_or_else(|| panic!("no call to port {port}: {clients:?}"))
    };

    let failed = call_to(unavailable.addr().port());
    assert_eq!(failed.name, "GET");
    assert_eq!(
        attr_str(failed, "url.full"),
        format!("{}/called", unavailable.base_url())
    );
    assert_eq!(attr_i64(failed, "http.response.status_code"), 503);
    assert_eq!(failed.status_code, 2, "a 503 is an error: {failed:?}");
    assert_eq!(attr_str(failed, "error.type"), "503");
    assert_eq!(failed.parent_span_id, server("/call-status").span_id);

    let cut = call_to(reset.addr().port());
    assert_eq!(cut.status_code, 2, "a reset response is an error: {cut:?}");
    assert!(!attr_str(cut, "error.type").is_empty(), "{cut:?}");
    assert_eq!(cut.parent_span_id, server("/call-reset").span_id);

    // Nothing invented for the port that refused.
    let refused_url = format!(":{refused}/");
    for span in &clients {
        assert_ne!(attr_i64(span, "network.peer.port"), i64::from(refused));
        assert!(
            !attr_str(span, "url.full").contains(&refused_url),
            "{span:?}"
        );
    }
}

/// `--print json`: one `/chain` request gives upstream's server line, its
/// three client lines and downstream's two server lines, with their kinds
/// and ids linked as the spans are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_carry_kind_and_ids() {
    let chain = Chain::start(None).await;
    let mut command = Command::new(tracer_bin());
    command
        .args(["--config", &chain.config_path()])
        .args(["--print", "json", "--otlp-endpoint", "none"])
        .args(probe_set_override());
    let mut tracer = Tracer::launched(command);
    let lines = collect_lines(tracer.take_stdout().expect("stdout is piped"));
    let addr = chain.upstream.addr();
    let sent = tokio::task::spawn_blocking(move || request(addr, "GET", "/chain", b""))
        .await
        .expect("client");
    assert_eq!(sent.status, 200);
    let seen = || lines.lock().expect("lines").clone();
    assert!(
        eventually(SPANS_ARRIVE, || seen().len() >= 6).await,
        "got {} of 6 lines: {:?}",
        seen().len(),
        seen()
    );
    assert_eq!(tracer.stop().code(), exit_code(Exit::Ok));
    let lines: Vec<Value> = seen()
        .iter()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 6, "{lines:?}");
    let of = |service: &str, kind: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|line| line["service"] == service && line["kind"] == kind)
            .collect()
    };
    let text = |line: &Value, key: &str| -> String {
        line[key]
            .as_str()
            .unwrap_or_else(|| panic!("no string {key} in {line}"))
            .to_owned()
    };

    let server = of(UPSTREAM, "server");
    assert_eq!(server.len(), 1, "{lines:?}");
    let server = server[0];
    assert_eq!(server["path"], "/chain");
    let trace_id = text(server, "trace_id");
    assert!(is_hex(&trace_id, 32), "{server}");
    assert!(is_hex(&text(server, "span_id"), 16), "{server}");
    assert_eq!(server.get("parent_span_id"), None, "a root: {server}");

    let calls = of(UPSTREAM, "client");
    assert_eq!(calls.len(), 3, "{lines:?}");
    let mut ports = Vec::new();
    let mut downstream_calls = BTreeSet::new();
    for call in calls {
        assert_eq!(text(call, "trace_id"), trace_id);
        assert_eq!(text(call, "parent_span_id"), text(server, "span_id"));
        assert!(is_hex(&text(call, "span_id"), 16), "{call}");
        assert_eq!(text(call, "server_address"), "127.0.0.1");
        let port = call["server_port"]
            .as_u64()
            .unwrap_or_else(|| panic!("no server_port in {call}")) as u16;
        if port == chain.downstream.addr().port() {
            downstream_calls.insert(text(call, "span_id"));
        }
        ports.push(port);
    }
    ports.sort_unstable();
    let mut expected: Vec<u16> = chain.calls().iter().map(|(port, _)| *port).collect();
    expected.sort_unstable();
    assert_eq!(ports, expected, "two calls downstream, one untraced");

    let served = of(DOWNSTREAM, "server");
    assert_eq!(served.len(), 2, "{lines:?}");
    let parents: BTreeSet<String> = served
        .iter()
        .map(|line| {
            assert_eq!(text(line, "trace_id"), trace_id);
            text(line, "parent_span_id")
        })
        .collect();
    assert_eq!(parents, downstream_calls, "each under its own call");
}
