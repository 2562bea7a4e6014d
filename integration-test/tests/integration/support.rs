//! Shared pieces of the tracer's root integration tests: the real Flask app
//! under real gunicorn, the real tracer binary attached to it, the harness's
//! real OTLP/gRPC sink, and a small blocking HTTP (and HTTPS) client that
//! times each request as the client saw it.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

pub use tracer::{exit::Exit, stats::DropReason};

use tokio_rustls::rustls::{ClientConfig, ClientConnection, StreamOwned, pki_types::ServerName};

use harness::{
    affinity::pin_current_thread,
    app::{App, AppOptions, Config, WorkerClass},
    loadgen::{self, LoadConfig, LoadReport},
    losses::Losses,
    patience,
    sink::{ReceivedSpan, Sink},
    tls::ServerTls,
    tracer::{Launch, TracerProcess},
};

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn tracer_bin() -> PathBuf {
    release_bin("TRACER_BIN", "tracer")
}

pub fn harness_bin() -> PathBuf {
    release_bin("HARNESS_BIN", "harness")
}

/// The binary `variable` names, else the workspace's release build of `name`.
/// A relative path is the workspace root's: cargo runs the tests from this
/// crate's directory, where `target/release/tracer` does not exist.
fn release_bin(variable: &str, name: &str) -> PathBuf {
    let root = workspace_root();
    std::env::var_os(variable)
        .map(|path| root.join(path))
        .unwrap_or_else(|| root.join("target/release").join(name))
}

/// gunicorn serving the Flask app, untraced by the harness itself.
pub async fn start_app(worker_class: WorkerClass, extra_args: &[&str]) -> App {
    let mut options = app_options();
    options.worker_class = worker_class;
    options.extra_args = extra_args.iter().map(|a| a.to_string()).collect();
    App::start(&options).await.expect("gunicorn starts")
}

/// A self-signed certificate for 127.0.0.1, in a directory of its own.
pub fn certificate(dir: &Path) -> ServerTls {
    std::fs::create_dir_all(dir).expect("certificate directory");
    let key = rcgen::KeyPair::generate().expect("key");
    let certificate = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("parameters")
        .self_signed(&key)
        .expect("certificate");
    let (certificate_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&certificate_path, certificate.pem()).expect("write certificate");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    ServerTls::new(certificate_path, key_path).expect("a usable certificate")
}

/// The bare app's options, to adjust before [`App::start`].
pub fn app_options() -> AppOptions {
    let root = workspace_root();
    AppOptions::new(
        Config::Bare,
        root.join("harness/app"),
        root.join(".venv"),
        String::new(),
    )
}

pub async fn start_sink() -> Sink {
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("address");
    Sink::start(loopback, loopback).await.expect("sink starts")
}

/// `--probes <set>` when `TRACER_PROBES` names one: the same tests then run
/// against each probe set a kernel offers (`cargo xtask vm-test` does).
pub fn probe_set_override() -> Vec<String> {
    match std::env::var("TRACER_PROBES") {
        Ok(set) if !set.is_empty() => vec!["--probes".into(), set],
        _ => Vec::new(),
    }
}

/// The tracer binary, attached to `pid`, exporting to `sink`, its log
/// echoed with a `[tracer]` prefix; started and made ready by the harness's
/// one spawner. Dropping it kills it (SIGKILL).
pub struct Tracer(TracerProcess);

impl Tracer {
    pub fn start(pid: u32, sink: &Sink, service: &str) -> Tracer {
        Self::start_with(pid, sink, service, &[])
    }

    /// [`Tracer::start`] with more command-line arguments.
    pub fn start_with(pid: u32, sink: &Sink, service: &str, extra_args: &[&str]) -> Tracer {
        let pid = pid.to_string();
        let selection = [&["--pid", &pid, "--service-name", service][..], extra_args].concat();
        Self::select(sink, &selection)
    }

    /// The tracer with these selectors and options, exporting to `sink`.
    pub fn select(sink: &Sink, args: &[&str]) -> Tracer {
        let mut command = Command::new(tracer_bin());
        command
            .args(["--otlp-endpoint", &format!("http://{}", sink.grpc_addr())])
            .args(["--stats-interval", "1"])
            .args(probe_set_override())
            .args(args);
        Self::launched(command)
    }

    /// The tracer `command` runs, with its own arguments and environment.
    pub fn launched(command: Command) -> Tracer {
        Tracer(launch(command))
    }

    /// Its stdout (`--print json`), the first time.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.0.take_stdout()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.0.log().join("\n")
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }

    /// Resident memory in KiB: (now, peak).
    pub fn memory_kib(&self) -> (u64, u64) {
        self.0.memory_kib().expect("the tracer is running")
    }

    /// SIGTERM, then the exit status: the tracer must flush and exit 0.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.0.stop().expect("the tracer exits")
    }
}

/// Starts `command` (the tracer, or a wrapper that execs it) with stdout
/// piped, and returns it once ready; panics with its log if it is not.
pub fn launch(command: Command) -> TracerProcess {
    Launch::new(command)
        .echo("[tracer] ")
        .piped_stdout()
        .start()
        .unwrap_or_else(|err| panic!("{err}"))
}

/// What the client saw of one request.
#[derive(Clone, Debug)]
pub struct Sent {
    pub method: &'static str,
    pub path: String,
    pub status: u16,
    pub client_port: u16,
    pub started_unix_ns: u64,
    pub latency_ns: u64,
    /// Bytes after the response head.
    pub body_bytes: u64,
}

pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64
}

/// One request on a new connection, timed from before `connect` to the last
/// response byte, as the client sees it.
pub fn request(addr: SocketAddr, method: &'static str, target: &str, body: &[u8]) -> Sent {
    request_over(addr, None, method, target, body)
}

/// [`request`] over TLS when `tls` is given (the server's certificate for
/// its IP address), the handshake included in the time.
pub fn request_over(
    addr: SocketAddr,
    tls: Option<&Arc<ClientConfig>>,
    method: &'static str,
    target: &str,
    body: &[u8],
) -> Sent {
    let started_unix_ns = unix_ns();
    let started = Instant::now();
    let stream = TcpStream::connect(addr).expect("connect");
    let client_port = stream.local_addr().expect("local address").port();
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let response = match tls {
        None => exchange(stream, head.as_bytes(), body),
        Some(config) => {
            let name = ServerName::from(addr.ip());
            let connection = ClientConnection::new(config.clone(), name).expect("TLS client");
            exchange(StreamOwned::new(connection, stream), head.as_bytes(), body)
        }
    };
    let latency_ns = started.elapsed().as_nanos() as u64;
    let head_end = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map_or(response.len(), |at| at + 4);
    Sent {
        method,
        path: target.split('?').next().unwrap_or(target).to_owned(),
        status: status_of(&response),
        client_port,
        started_unix_ns,
        latency_ns,
        body_bytes: (response.len() - head_end) as u64,
    }
}

/// Sends `head` and `body`, and reads the response until the server closes.
fn exchange(mut stream: impl Read + Write, head: &[u8], body: &[u8]) -> Vec<u8> {
    stream.write_all(head).expect("send head");
    stream.write_all(body).expect("send body");
    let mut response = Vec::new();
    match stream.read_to_end(&mut response) {
        Ok(_) => {}
        // A TLS server that closes without a close_notify alert (gunicorn's
        // sync workers): the response is whole when its head says so.
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(err) => panic!("read response: {err}"),
    }
    response
}

pub fn status_of(response: &[u8]) -> u16 {
    std::str::from_utf8(response.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// Server spans of `service`.
pub fn server_spans(sink: &Sink, service: &str) -> Vec<ReceivedSpan> {
    sink.spans()
        .into_iter()
        .filter(|span| span.service == service && span.kind == "SERVER")
        .collect()
}

pub fn attr_str<'a>(span: &'a ReceivedSpan, key: &str) -> &'a str {
    span.attributes
        .get(key)
        .and_then(|value| value.as_str())
        .unwrap_or_else(|| panic!("span {} has no string attribute {key}", span.name))
}

pub fn attr_i64(span: &ReceivedSpan, key: &str) -> i64 {
    span.attributes
        .get(key)
        .and_then(|value| value.as_i64())
        .unwrap_or_else(|| panic!("span {} has no int attribute {key}", span.name))
}

/// The tracer's loss counters as the sink last received them.
pub fn losses(sink: &Sink) -> Losses {
    Losses::from_metrics(&sink.metrics()).unwrap_or_else(|err| panic!("{err}"))
}

/// The latest value of the tracer's `tracer.dropped` counter for `reason`.
pub fn dropped(sink: &Sink, reason: DropReason) -> f64 {
    losses(sink).get(reason)
}

/// Requests the tracer reported lost: the reasons that count requests.
pub fn requests_lost(sink: &Sink) -> f64 {
    losses(sink).requests()
}

/// The exit status a run of the tracer is expected to end with.
pub fn exit_code(exit: Exit) -> Option<i32> {
    Some(i32::from(exit.code()))
}

/// Polls `probe` until it holds or `ceiling` (stretched by the machine's
/// patience) passes.
pub async fn eventually(ceiling: Duration, mut probe: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + patience::ceiling(ceiling);
    while Instant::now() < deadline {
        if probe() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    probe()
}

pub fn keep_alive_class() -> WorkerClass {
    WorkerClass::Gthread { threads: 4 }
}

/// Server spans grouped by the client port they came from.
pub fn by_client_port(spans: &[ReceivedSpan]) -> HashMap<i64, Vec<&ReceivedSpan>> {
    let mut by_port: HashMap<i64, Vec<_>> = HashMap::new();
    for span in spans {
        by_port
            .entry(attr_i64(span, "client.port"))
            .or_default()
            .push(span);
    }
    by_port
}

/// Reads `n` lines from a child's stdout (the tracer's `--print json`).
pub async fn read_lines(stdout: std::process::ChildStdout, n: usize) -> Vec<String> {
    tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .take(n)
            .map_while(Result::ok)
            .collect()
    })
    .await
    .expect("reader")
}

/// `n` requests to `path`, one connection each, off the async runtime.
pub async fn requests(addr: SocketAddr, path: &'static str, n: usize) -> Vec<Sent> {
    tokio::task::spawn_blocking(move || (0..n).map(|_| request(addr, "GET", path, b"")).collect())
        .await
        .expect("client")
}

/// Open-loop GETs of `path` at `rate` over 20 keep-alive connections, from a
/// thread of its own on core 1 (servers run on core 0).
pub async fn drive(addr: SocketAddr, path: &str, rate: f64, duration: Duration) -> LoadReport {
    let mut config = LoadConfig::get(addr, path, rate, duration);
    config.connections = 20;
    tokio::task::spawn_blocking(move || {
        pin_current_thread(1).expect("pin to core 1");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(loadgen::run(config))
            .expect("load runs")
    })
    .await
    .expect("load thread")
}

/// A planned request: method, target, body.
pub type Planned = (&'static str, String, &'static [u8]);

/// `n` requests of six kinds in turn: a GET with a query string to strip,
/// a slow one, a light one, a 404, a 500, and a POST whose body must never
/// be captured.
pub fn mixed_plan(n: usize) -> Vec<Planned> {
    (0..n)
        .map(|i| match i % 6 {
            0 => ("GET", format!("/work?user={i}&token=secret"), &b""[..]),
            1 => ("GET", "/slow".to_owned(), &b""[..]),
            2 => ("GET", "/light".to_owned(), &b""[..]),
            3 => ("GET", "/missing".to_owned(), &b""[..]),
            4 => ("GET", "/fail".to_owned(), &b""[..]),
            _ => (
                "POST",
                "/echo-size".to_owned(),
                &b"payload that must never be captured"[..],
            ),
        })
        .collect()
}

/// `SLOW_SECONDS` of harness/app/app.py.
const SLOW_FLOOR_NS: u64 = 20_000_000;

/// Each request with its span. Client ports can be reused across many
/// connections: a request's span is the one on its port that starts
/// within the client's own window. Panics for a request without one.
pub fn span_of_each<'a>(
    sent: &'a [Sent],
    spans: &'a [ReceivedSpan],
) -> Vec<(&'a Sent, &'a ReceivedSpan)> {
    let mut by_port = by_client_port(spans);
    sent.iter()
        .map(|request| {
            let window = request.started_unix_ns.saturating_sub(1_000_000)
                ..=request.started_unix_ns + request.latency_ns;
            let candidates = by_port.get_mut(&i64::from(request.client_port));
            let index = candidates
                .as_ref()
                .and_then(|spans| spans.iter().position(|s| window.contains(&s.start_unix_ns)))
                .unwrap_or_else(|| panic!("no span for {request:?}"));
            (request, candidates.expect("candidates").swap_remove(index))
        })
        .collect()
}

/// What the server span of `request` to the app at `addr` says, over
/// `scheme`: its name and attributes, its status, and a time inside what
/// the client saw that covers the app's work.
pub fn assert_server_span(span: &ReceivedSpan, request: &Sent, addr: SocketAddr, scheme: &str) {
    assert_eq!(span.name, format!("{} {}", request.method, request.path));
    assert_eq!(attr_str(span, "http.request.method"), request.method);
    assert_eq!(
        attr_str(span, "url.path"),
        request.path,
        "query strings are stripped"
    );
    assert_eq!(attr_str(span, "url.scheme"), scheme);
    assert_eq!(
        attr_i64(span, "http.response.status_code"),
        i64::from(request.status)
    );
    assert_eq!(attr_i64(span, "server.port"), i64::from(addr.port()));
    assert_eq!(attr_str(span, "client.address"), "127.0.0.1");
    assert_eq!(attr_str(span, "network.protocol.version"), "1.1");
    assert_eq!(
        span.status_code == 2,
        request.status >= 500,
        "ERROR status exactly for 5xx"
    );
    // The span lies inside what the client saw: it starts after the
    // client began and lasts no longer than the client waited.
    let duration = span.end_unix_ns - span.start_unix_ns;
    assert!(
        span.start_unix_ns + 1_000_000 >= request.started_unix_ns,
        "span starts before the client did"
    );
    assert!(
        duration <= request.latency_ns,
        "span {duration} ns longer than the client's {} ns for {request:?}",
        request.latency_ns
    );
    // And it covers the server's work: /slow cannot answer in less than
    // its sleep, however loaded the machine.
    if request.path == "/slow" {
        assert!(
            duration >= SLOW_FLOOR_NS,
            "a /slow span of {duration} ns is shorter than the app's sleep"
        );
    }
}

/// Each request of `plan` on a connection of its own, from `clients`
/// threads at once (each a contiguous share), off the async runtime: so
/// requests also queue in the accept queue.
pub async fn parallel_requests(addr: SocketAddr, plan: Vec<Planned>, clients: usize) -> Vec<Sent> {
    parallel_requests_over(addr, None, plan, clients).await
}

/// [`parallel_requests`], over TLS when `tls` is given.
pub async fn parallel_requests_over(
    addr: SocketAddr,
    tls: Option<Arc<ClientConfig>>,
    plan: Vec<Planned>,
    clients: usize,
) -> Vec<Sent> {
    tokio::task::spawn_blocking(move || {
        let tls = tls.as_ref();
        std::thread::scope(|scope| {
            let handles: Vec<_> = plan
                .chunks(plan.len().div_ceil(clients).max(1))
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|(method, target, body)| {
                                request_over(addr, tls, method, target, body)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("client"))
                .collect()
        })
    })
    .await
    .expect("clients")
}

/// A request head on its own connection: `headers` after `padding` bytes
/// of other headers (at most 500 bytes each, well inside gunicorn's
/// `limit_request_field_size` of 8190 and `limit_request_fields` of 100).
pub fn head(path: &str, padding: usize, headers: &[&str]) -> Vec<u8> {
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    let mut n = 0;
    while head.len() < padding {
        head.push_str(&format!("X-Pad-{n}: {}\r\n", "p".repeat(480)));
        n += 1;
    }
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Sends `parts` of one request on a new connection, each only once the
/// server has read the one before (so that each is a read of its own), and
/// returns the response's status.
pub fn send(addr: SocketAddr, parts: &[&[u8]]) -> u16 {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let client_port = stream.local_addr().expect("local address").port();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            assert!(
                wait_delivered(client_port, addr.port()),
                "the server never read part {i}"
            );
        }
        stream.write_all(part).expect("send");
    }
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read response");
    status_of(&response)
}

/// Waits (within the machine's patience) until [`delivered`]; false if not.
pub fn wait_delivered(from_port: u16, to_port: u16) -> bool {
    let deadline = Instant::now() + patience::ceiling(Duration::from_secs(10));
    while !delivered(from_port, to_port) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Whether every byte sent on the loopback connection from `from_port` to
/// `to_port` has reached the other end's TCP (the sender's send queue is
/// acknowledged) and been read there (the receiver's receive queue is
/// empty), from `/proc/net/tcp`.
pub fn delivered(from_port: u16, to_port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    // Columns: sl local rem st tx_queue:rx_queue ...; addresses hex IP:port.
    let queues = |local: u16, remote: u16| {
        table.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = |address: &str| u16::from_str_radix(address.rsplit(':').next()?, 16).ok();
            if port(fields.get(1)?)? != local || port(fields.get(2)?)? != remote {
                return None;
            }
            let (tx, rx) = fields.get(4)?.split_once(':')?;
            Some((
                u64::from_str_radix(tx, 16).ok()?,
                u64::from_str_radix(rx, 16).ok()?,
            ))
        })
    };
    matches!(
        (queues(from_port, to_port), queues(to_port, from_port)),
        (Some((0, _)), Some((_, 0)))
    )
}

/// How a [`CannedServer`] answers each request.
#[derive(Clone, Copy, Debug)]
pub enum Canned {
    /// A whole response with this status and a short body, then close.
    Status(u16),
    /// A head promising 1000 bytes, 10 of them, and, once the client has
    /// read those, a reset (SO_LINGER 0, then close).
    ResetMidBody,
}

/// A plain HTTP server on a thread of the test process, which no tracer
/// selects: it reads each request head on a connection of its own and
/// answers as told. Stopped when dropped.
pub struct CannedServer {
    addr: SocketAddr,
    answered: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl CannedServer {
    pub fn start(answer: Canned) -> CannedServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local address");
        let (answered, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let thread = {
            let (answered, stop) = (answered.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    // A client that gave up is its own test's failure.
                    if let Ok(stream) = stream
                        && answer_one(stream, answer)
                    {
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        };
        CannedServer {
            addr,
            answered,
            stop,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`, for the app's environment.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests answered so far.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }
}

impl Drop for CannedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop to see the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request head and answers it; whether it could.
fn answer_one(mut stream: TcpStream, answer: Canned) -> bool {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    match answer {
        Canned::Status(status) => {
            let response = format!(
                "HTTP/1.1 {status} Canned\r\nContent-Length: 6\r\nConnection: close\r\n\r\ncanned"
            );
            stream.write_all(response.as_bytes()).is_ok()
        }
        Canned::ResetMidBody => {
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{}",
                "x".repeat(10)
            );
            let (Ok(local), Ok(peer)) = (stream.local_addr(), stream.peer_addr()) else {
                return false;
            };
            // Reset only once the client has the partial response, so that
            // what it (and the tracer) saw is the head and 10 bytes.
            if stream.write_all(response.as_bytes()).is_err()
                || !wait_delivered(local.port(), peer.port())
            {
                return false;
            }
            socket2::SockRef::from(&stream)
                .set_linger(Some(Duration::ZERO))
                .is_ok()
        }
    }
}

/// Lines of a child's stdout as they come, read by a thread of their own,
/// so that a test can wait for them with a ceiling.
pub fn collect_lines(stdout: std::process::ChildStdout) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().expect("lines").push(line);
        }
    });
    lines
}
