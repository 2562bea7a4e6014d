//! HTTPS through OpenSSL: gunicorn terminating TLS itself (`--certfile`),
//! its plaintext seen by the tracer's uprobes in the libssl each worker
//! maps; and processes whose HTTPS cannot be seen (no libssl; a libssl
//! without OpenSSL's functions), whose plain HTTP is still traced, the
//! reason in the tracer's log.

use std::{
    collections::BTreeSet,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Duration,
};

use harness::app::{App, free_port};

use crate::support::*;

/// `tracer doctor --pid <pid>`'s line about the HTTPS of `pid`.
fn doctor_says(pid: u32) -> String {
    let output = Command::new(tracer_bin())
        .args(["doctor", "--pid", &pid.to_string()])
        .output()
        .expect("doctor runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let topic = format!("HTTPS of pid {pid} (OpenSSL): ");
    stdout
        .lines()
        .find(|line| line.contains(&topic))
        .unwrap_or_else(|| panic!("doctor says nothing of pid {pid}: {stdout}"))
        .to_owned()
}

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tracer-https-{}-{name}", std::process::id()))
}

/// Many mixed HTTPS requests, one connection each: exactly one correct
/// span per request, `url.scheme` https, and nothing counted twice or lost
/// (the sockets' own bytes are ciphertext, which makes no record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_https_request_becomes_one_correct_span() {
    let dir = scratch("gunicorn");
    let tls = certificate(&dir);
    let mut options = app_options();
    options.tls = Some(tls.clone());
    let app = App::start(&options)
        .await
        .expect("gunicorn starts with TLS");
    let sink = start_sink().await;
    let tracer = Tracer::start(app.master_pid(), &sink, "flask-https");
    let addr = app.addr();
    for worker in app.worker_pids().expect("workers") {
        let line = doctor_says(worker);
        assert!(
            line.trim_start().starts_with("ok")
                && line.contains("libssl.so")
                && line.contains("SSL_read_ex, SSL_write, SSL_write_ex"),
            "{line}"
        );
        let said = format!("HTTPS: pid {worker}: uprobes on ");
        assert!(
            eventually(Duration::from_secs(10), || tracer.log().contains(&said)).await,
            "no {said:?} in the log"
        );
    }

    let n = 600;
    let sent = parallel_requests_over(addr, Some(tls.client()), mixed_plan(n), 4).await;
    assert_eq!(sent.len(), n);
    assert!(
        sent.iter().all(|s| s.status != 0),
        "every request got a response"
    );
    assert!(
        eventually(Duration::from_secs(30), || server_spans(
            &sink,
            "flask-https"
        )
        .len()
            >= n)
        .await,
        "expected {n} spans, got {}",
        server_spans(&sink, "flask-https").len()
    );
    assert_eq!(tracer.stop().code(), exit_code(Exit::Ok));
    let spans = server_spans(&sink, "flask-https");
    assert_eq!(spans.len(), n, "exactly one span per request");
    for (request, span) in span_of_each(&sent, &spans) {
        assert_server_span(span, request, addr, "https");
    }
    assert_eq!(requests_lost(&sink), 0.0, "no request lost");
    for reason in [
        DropReason::TlsSocketUnknown,
        DropReason::UnparseableResponse,
        DropReason::ResponseWithoutRequest,
    ] {
        assert_eq!(dropped(&sink, reason), 0.0, "{reason}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Workers that gunicorn re-forks (`--max-requests`) get their own uprobes:
/// their HTTPS requests are traced too, and none is invented. Not every
/// one of their first: a worker is attached when the daemon reads its
/// fork, and attaching waits while an exited worker's uprobes are removed
/// (RCU grace periods, README "HTTPS"), so a worker that serves at once
/// can have its first requests unseen (1 run in 8 here, under load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reforked_workers_are_traced() {
    let dir = scratch("reforked");
    let tls = certificate(&dir);
    let mut options = app_options();
    options.tls = Some(tls.clone());
    options.extra_args = vec!["--max-requests".into(), "20".into()];
    let app = App::start(&options)
        .await
        .expect("gunicorn starts with TLS");
    let first_workers = app.worker_pids().expect("workers");
    let sink = start_sink().await;
    let tracer = Tracer::start(app.master_pid(), &sink, "flask-reforked");
    let n = 300;
    let plan = vec![("GET", "/light".to_owned(), &b""[..]); n];
    let sent = parallel_requests_over(app.addr(), Some(tls.client()), plan, 4).await;
    assert!(
        sent.iter().all(|s| s.status == 200),
        "every request answered"
    );
    let reforked = || {
        let pids: BTreeSet<i64> = server_spans(&sink, "flask-reforked")
            .iter()
            .map(|s| attr_i64(s, "process.pid"))
            .collect();
        pids.iter()
            .filter(|&&pid| !first_workers.contains(&(pid as u32)))
            .count()
    };
    // 300 requests at 20 a worker: about 15 workers forked during the run.
    assert!(
        eventually(Duration::from_secs(30), || reforked() >= 10).await,
        "spans from {} re-forked workers only",
        reforked()
    );
    assert_eq!(tracer.stop().code(), exit_code(Exit::Ok));
    let spans = server_spans(&sink, "flask-reforked");
    assert!(spans.len() <= n, "{} spans for {n} requests", spans.len());
    assert!(spans.iter().all(|s| attr_str(s, "url.scheme") == "https"));
    let _ = std::fs::remove_dir_all(dir);
}

/// A plain HTTP server in Python that imports nothing but `socket` (its
/// `http.server` imports `ssl`, through `http.client`), so that it maps no
/// libssl: one response per connection.
const PLAIN_SERVER: &str = r#"
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen(64)
while True:
    client, _ = server.accept()
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = client.recv(4096)
        if not chunk:
            break
        head += chunk
    client.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    client.close()
"#;

/// [`PLAIN_SERVER`], with `preload` (`LD_PRELOAD`) mapped into it. Killed
/// when dropped.
struct PlainServer {
    child: Child,
    addr: SocketAddr,
}

impl PlainServer {
    async fn start(preload: Option<&Path>) -> PlainServer {
        let port = free_port(0).expect("a free port");
        let mut command = Command::new(workspace_root().join(".venv/bin/python"));
        command.args(["-c", PLAIN_SERVER, &port.to_string()]);
        if let Some(library) = preload {
            command.env("LD_PRELOAD", library);
        }
        let child = command.spawn().expect("python");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(
            eventually(Duration::from_secs(20), || TcpStream::connect(addr).is_ok()).await,
            "the plain server never listened on {addr}"
        );
        PlainServer { child, addr }
    }
}

impl Drop for PlainServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process that maps no libssl, and one whose libssl.so.3 is not
/// OpenSSL (a copy of zlib under that name): each gets its plain HTTP
/// traced, one span per request, and the log says why its HTTPS is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_traced_where_https_cannot_be() {
    let dir = scratch("not-openssl");
    std::fs::create_dir_all(&dir).expect("directory");
    let impostor = dir.join("libssl.so.3");
    std::fs::copy("/usr/lib/x86_64-linux-gnu/libz.so.1", &impostor).expect("copy zlib");
    for (preload, reason) in [
        (None, "maps no libssl.so".to_owned()),
        (
            Some(impostor.as_path()),
            format!("{} defines none of SSL_read", impostor.display()),
        ),
    ] {
        let server = PlainServer::start(preload).await;
        let pid = server.child.id();
        let sink = start_sink().await;
        let service = "plain-python";
        let tracer = Tracer::start(pid, &sink, service);
        let line = doctor_says(pid);
        assert!(
            line.trim_start().starts_with("no") && line.contains(&reason),
            "{line}"
        );
        let said = format!("HTTPS: pid {pid}: {reason}");
        assert!(
            eventually(Duration::from_secs(10), || tracer.log().contains(&said)).await,
            "no {said:?} in the log"
        );
        let addr = server.addr;
        let n = 20;
        let sent = requests(addr, "/", n).await;
        assert!(sent.iter().all(|s| s.status == 200), "{sent:?}");
        assert!(
            eventually(Duration::from_secs(20), || server_spans(&sink, service)
                .len()
                >= n)
            .await,
            "expected {n} spans, got {}",
            server_spans(&sink, service).len()
        );
        tracer.stop();
        let spans = server_spans(&sink, service);
        assert_eq!(spans.len(), n);
        assert!(spans.iter().all(|s| attr_str(s, "url.scheme") == "http"));
    }
    let _ = std::fs::remove_dir_all(dir);
}
