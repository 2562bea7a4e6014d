//! Root integration tests: the traced tree changes, bad input arrives, and
//! other HTTP servers on the host must stay untraced.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, TcpStream},
    time::{Duration, Instant},
};

use crate::support::*;
use harness::{app::WorkerClass, patience, sink::Sink};

/// A worker killed mid-run is replaced by gunicorn; the replacement, forked
/// after the tracer started, is traced from its first request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reforked_workers_are_traced() {
    let app = start_app(WorkerClass::Sync, &[]).await;
    let sink = start_sink().await;
    let tracer = Tracer::start(app.master_pid(), &sink, "flask-refork");
    let addr = app.addr();
    let before = app.worker_pids().expect("workers");
    assert_eq!(before.len(), 3);
    for _ in 0..30 {
        request(addr, "GET", "/light", b"");
    }
    // SAFETY: signals a worker of the gunicorn we started.
    unsafe { libc::kill(before[0] as i32, libc::SIGKILL) };
    assert!(
        eventually(Duration::from_secs(20), || {
            app.worker_pids()
                .is_ok_and(|now| now.len() == 3 && now.iter().any(|p| !before.contains(p)))
        })
        .await,
        "gunicorn did not replace the killed worker"
    );
    let replacement = *app
        .worker_pids()
        .expect("workers")
        .iter()
        .find(|p| !before.contains(p))
        .expect("a new worker");
    // Batches until a span from the replacement arrives: it serves only
    // once it has imported the app, which takes seconds on a slow (or
    // emulated) machine. Never arriving means its fork was missed.
    let served_by_replacement = |sink: &Sink| {
        server_spans(sink, "flask-refork")
            .iter()
            .any(|s| attr_i64(s, "process.pid") == i64::from(replacement))
    };
    let mut expected = 30;
    let deadline = Instant::now() + patience::ceiling(Duration::from_secs(90));
    while !served_by_replacement(&sink) && Instant::now() < deadline {
        let sent = tokio::task::spawn_blocking(move || {
            (0..30)
                .map(|_| request(addr, "GET", "/light", b""))
                .collect::<Vec<_>>()
        })
        .await
        .expect("client");
        assert!(sent.iter().all(|s| s.status == 200));
        expected += sent.len();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        eventually(Duration::from_secs(20), || server_spans(
            &sink,
            "flask-refork"
        )
        .len()
            >= expected)
        .await,
        "got {} of {expected} spans",
        server_spans(&sink, "flask-refork").len()
    );
    tracer.stop();
    let spans = server_spans(&sink, "flask-refork");
    assert_eq!(spans.len(), expected, "every request traced, none twice");
    assert!(
        served_by_replacement(&sink),
        "the replacement worker {replacement} served traced requests"
    );
}

fn raw_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(bytes).expect("send");
    let _ = stream.shutdown(Shutdown::Write);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    response
}

/// Not HTTP, a request line cut mid-way, an oversized header block and a
/// client that resets mid-request: no span is invented, nothing crashes,
/// the loss counters move, and tracing goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_invents_nothing_and_is_counted() {
    let app = start_app(WorkerClass::Sync, &[]).await;
    let sink = start_sink().await;
    let tracer = Tracer::start(app.master_pid(), &sink, "flask-bad");
    let addr = app.addr();

    tokio::task::spawn_blocking(move || {
        // Binary garbage: gunicorn answers 400 to something that is no request.
        raw_exchange(
            addr,
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
        );
        // A request line cut mid-way, then the client goes away.
        raw_exchange(addr, b"GET /wo");
        // An oversized header block: a real request, answered with an error.
        let mut huge = b"GET /huge HTTP/1.1\r\nHost: t\r\n".to_vec();
        for i in 0..200 {
            huge.extend(format!("X-Filler-{i}: {}\r\n", "a".repeat(100)).as_bytes());
        }
        huge.extend(b"\r\n");
        let response = raw_exchange(addr, &huge);
        assert!(
            status_of(&response) >= 400,
            "gunicorn refuses the oversized head"
        );
        // A client that resets mid-request (RST, not FIN), body unfinished.
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .write_all(
                b"POST /echo-size HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\npartial",
            )
            .expect("send");
        std::thread::sleep(Duration::from_millis(200));
        let raw = socket2_linger_zero(stream);
        drop(raw);
    })
    .await
    .expect("clients");

    // Tracing goes on: a good request after all that is traced.
    let good = tokio::task::spawn_blocking(move || request(addr, "GET", "/light", b""))
        .await
        .expect("client");
    assert_eq!(good.status, 200);
    assert!(
        eventually(Duration::from_secs(15), || {
            server_spans(&sink, "flask-bad")
                .iter()
                .any(|s| attr_str(s, "url.path") == "/light")
        })
        .await,
        "the good request after bad input was not traced"
    );
    assert!(
        eventually(Duration::from_secs(15), || {
            dropped(&sink, DropReason::ResponseWithoutRequest) >= 1.0
                && dropped(&sink, DropReason::RequestWithoutResponse) >= 2.0
        })
        .await,
        "loss counters did not move: response_without_request={} request_without_response={}",
        dropped(&sink, DropReason::ResponseWithoutRequest),
        dropped(&sink, DropReason::RequestWithoutResponse)
    );
    assert_eq!(
        tracer.stop().code(),
        exit_code(Exit::Ok),
        "the tracer survived"
    );
    let paths: Vec<String> = server_spans(&sink, "flask-bad")
        .iter()
        .map(|s| {
            format!(
                "{} {}",
                attr_str(s, "url.path"),
                attr_i64(s, "http.response.status_code")
            )
        })
        .collect();
    // The oversized request was real and was answered: it is a span (with the
    // error status), built from its request line. Nothing else but /light.
    assert_eq!(paths.len(), 2, "spans: {paths:?}");
    assert!(paths.contains(&"/light 200".to_owned()));
    assert!(
        paths.iter().any(|p| p.starts_with("/huge 4")),
        "spans: {paths:?}"
    );
}

/// Closes with SO_LINGER 0, so the peer sees a reset.
fn socket2_linger_zero(stream: TcpStream) -> TcpStream {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    stream
}

/// Another gunicorn on the same host, not in the traced tree, is not traced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_outside_the_tree_are_not_traced() {
    let traced = start_app(WorkerClass::Sync, &[]).await;
    let untraced = start_app(WorkerClass::Sync, &[]).await;
    let sink = start_sink().await;
    let tracer = Tracer::start(traced.master_pid(), &sink, "flask-only");
    let (traced_addr, untraced_addr) = (traced.addr(), untraced.addr());
    tokio::task::spawn_blocking(move || {
        for _ in 0..40 {
            request(untraced_addr, "GET", "/light", b"");
            request(traced_addr, "GET", "/missing", b"");
        }
    })
    .await
    .expect("clients");
    assert!(
        eventually(Duration::from_secs(15), || server_spans(
            &sink,
            "flask-only"
        )
        .len()
            >= 40)
        .await,
        "traced requests missing"
    );
    // Stopping flushes: a span of the untraced server would be here now.
    tracer.stop();
    let spans = sink.spans();
    let server: Vec<_> = spans.iter().filter(|s| s.kind == "SERVER").collect();
    assert_eq!(server.len(), 40);
    assert!(
        server
            .iter()
            .all(|s| attr_i64(s, "server.port") == i64::from(traced_addr.port()))
    );
    assert!(server.iter().all(|s| attr_str(s, "url.path") == "/missing"));
}

/// IPv6, and a request line that arrives in pieces (separate reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_and_a_request_line_in_pieces() {
    let root = workspace_root();
    let port = std::net::TcpListener::bind("[::1]:0")
        .expect("IPv6 loopback")
        .local_addr()
        .expect("addr")
        .port();
    let mut gunicorn = std::process::Command::new(root.join(".venv/bin/gunicorn"))
        .args([
            "-w",
            "1",
            "--no-control-socket",
            "-b",
            &format!("[::1]:{port}"),
            "app:app",
        ])
        .current_dir(root.join("harness/app"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("gunicorn");
    let addr: std::net::SocketAddr = format!("[::1]:{port}").parse().expect("addr");
    assert!(
        eventually(Duration::from_secs(20), || TcpStream::connect(addr).is_ok()).await,
        "gunicorn on [::1] did not start"
    );
    let sink = start_sink().await;
    let tracer = Tracer::start(gunicorn.id(), &sink, "flask-v6");
    tokio::task::spawn_blocking(move || {
        request(addr, "GET", "/light", b"");
        let mut stream = TcpStream::connect(addr).expect("connect");
        for piece in [
            &b"GE"[..],
            b"T /missi",
            b"ng?x=1 HTTP/1.1\r\nHo",
            b"st: t\r\nConnection: close\r\n\r\n",
        ] {
            stream.write_all(piece).expect("send");
            std::thread::sleep(Duration::from_millis(30));
        }
        let mut response = Vec::new();
        stream.read_to_end(&mut response).expect("read");
        assert_eq!(status_of(&response), 404);
    })
    .await
    .expect("client");
    let arrived = eventually(Duration::from_secs(15), || {
        server_spans(&sink, "flask-v6").len() >= 2
    })
    .await;
    tracer.stop();
    // SAFETY: signals our own child.
    unsafe { libc::kill(gunicorn.id() as i32, libc::SIGTERM) };
    let _ = gunicorn.wait();
    assert!(arrived, "spans: {}", server_spans(&sink, "flask-v6").len());
    let spans = server_spans(&sink, "flask-v6");
    assert_eq!(spans.len(), 2);
    assert!(spans.iter().all(|s| attr_str(s, "client.address") == "::1"));
    let split = spans
        .iter()
        .find(|s| attr_str(s, "url.path") == "/missing")
        .expect("the request sent in pieces is traced");
    assert_eq!(attr_i64(split, "http.response.status_code"), 404);
    // It lasted at least as long as the pieces took to arrive.
    assert!(split.end_unix_ns - split.start_unix_ns >= 90_000_000);
}

/// Killing the tracer with SIGKILL mid-load: clients see no error, and the
/// kernel detaches every program of ours (they live only through our fds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_load_leaves_the_service_and_the_kernel_clean() {
    let ours = [
        "sock_recv_length",
        "sock_send_length",
        "inet_sock_set_state",
        "sched_process_fork",
        "sched_process_exit",
    ];
    let app = start_app(WorkerClass::Sync, &[]).await;
    let sink = start_sink().await;
    let tracer = Tracer::start(app.master_pid(), &sink, "flask-kill");
    assert!(
        loaded_programs()
            .iter()
            .any(|name| ours.contains(&name.as_str()))
    );
    let mut load =
        harness::loadgen::LoadConfig::get(app.addr(), "/light", 200.0, Duration::from_secs(6));
    load.connections = 10;
    let running = tokio::spawn(harness::loadgen::run(load));
    // Mid-load: once the tracer has exported some of it.
    assert!(
        eventually(Duration::from_secs(20), || server_spans(
            &sink,
            "flask-kill"
        )
        .len()
            >= 50)
        .await,
        "no spans under load before the kill"
    );
    drop(tracer); // SIGKILL (Tracer's Drop kills)
    let report = running.await.expect("load task").expect("load ran");
    let counts = &report.counts;
    assert_eq!(
        counts.ok_2xx, counts.scheduled,
        "every request answered: {counts:?}"
    );
    assert_eq!(counts.failures(), 0, "{counts:?}");
    assert!(
        eventually(Duration::from_secs(10), || {
            !loaded_programs()
                .iter()
                .any(|name| ours.contains(&name.as_str()))
        })
        .await,
        "programs still loaded after SIGKILL: {:?}",
        loaded_programs()
    );
}

/// Names of the BPF programs loaded in the kernel, from `bpftool`.
fn loaded_programs() -> Vec<String> {
    let output = std::process::Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .expect("bpftool runs (cargo xtask setup installs it)");
    let programs: Vec<serde_json::Value> =
        serde_json::from_slice(&output.stdout).expect("bpftool json");
    programs
        .iter()
        .filter_map(|p| p.get("name").and_then(|n| n.as_str()).map(str::to_owned))
        .collect()
}
