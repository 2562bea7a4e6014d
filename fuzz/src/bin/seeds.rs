//! Writes the committed seed corpora, `fuzz/corpus/<target>/<name>`, from
//! the named scripts below, and checks that each one decodes back to itself
//! and passes the invariants. From `fuzz/`:
//!
//! ```sh
//! RUSTFLAGS="--cfg fuzzing" cargo run --bin seeds
//! ```
//!
//! (`--cfg fuzzing` makes tracer's build script skip the BPF programs.)
use std::{fs, mem::offset_of, path::Path};

use arbitrary::{Arbitrary, Unstructured};
use tracer_common::{
    CAPTURE_LEN, DIRECTION_RECV, DIRECTION_SEND, DataEvent, EventKind, HeaderEvent,
};
use tracer_fuzz::{
    Capture::{self, Full, Kernel},
    Op::{self, *},
    Request, Response, Script, close_record, data_record, frame, header_record, http_input,
    open_record, script_records, sock_id, task_record,
};

fn open(sock: u8) -> Op {
    Open {
        sock,
        established_ago: 50,
    }
}

fn client(sock: u8, request: Request) -> Op {
    Client { sock, request }
}

fn server(sock: u8, response: Response) -> Op {
    Server { sock, response }
}

fn read(sock: u8, len: u16, capture: Capture) -> Op {
    Read { sock, len, capture }
}

fn write(sock: u8, len: u16, capture: Capture) -> Op {
    Write { sock, len, capture }
}

fn ok(body: u16) -> Response {
    Response::Sized {
        status: 2,
        body,
        http10: false,
    }
}

fn get(path: u8) -> Request {
    Request::Get {
        path,
        http10: false,
    }
}

/// A request read whole, then its response written whole.
fn exchange(sock: u8, request: Request, response: Response) -> [Op; 4] {
    [
        client(sock, request),
        read(sock, 0, Kernel),
        server(sock, response),
        write(sock, 0, Kernel),
    ]
}

fn raw_send(sock: u8, bytes: &[u8]) -> Op {
    Raw {
        sock,
        recv: false,
        extra: 0,
        bytes: bytes.to_vec(),
    }
}

fn scripts() -> Vec<(&'static str, Vec<Op>)> {
    let mut scripts = vec![
        ("get-keep-alive", {
            let mut ops = vec![open(0)];
            for path in 0..3 {
                ops.extend(exchange(0, get(path), ok(48)));
            }
            ops.push(Close { sock: 0 });
            ops
        }),
        (
            "pipelined-gets-one-read",
            vec![
                open(0),
                client(0, Request::Pipelined { path: 1, count: 2 }),
                read(0, 0, Full),
                server(0, ok(5)),
                write(0, 0, Kernel),
                server(0, ok(6)),
                write(0, 0, Kernel),
                server(0, ok(7)),
                write(0, 0, Kernel),
                Close { sock: 0 },
            ],
        ),
        (
            "post-with-body",
            vec![
                open(0),
                client(0, Request::Post { path: 2, body: 300 }),
                // The head in two reads, then the body (never copied).
                read(0, 60, Kernel),
                read(0, 44, Kernel),
                read(0, 0, Capture::None),
                server(
                    0,
                    Response::Sized {
                        status: 3,
                        body: 2,
                        http10: false,
                    },
                ),
                write(0, 0, Kernel),
                Close { sock: 0 },
            ],
        ),
        ("http10-close-delimited", {
            let mut ops = vec![open(0)];
            ops.extend(exchange(
                0,
                Request::Get {
                    path: 1,
                    http10: true,
                },
                Response::CloseDelimited { body: 700 },
            ));
            ops.push(Close { sock: 0 });
            ops
        }),
        ("chunked-response", {
            let mut ops = vec![open(0)];
            ops.extend(exchange(0, get(1), Response::Chunked { chunks: 3 }));
            ops.extend(exchange(0, get(0), ok(1)));
            ops.push(Close { sock: 0 });
            ops
        }),
        (
            "expect-100-continue",
            vec![
                open(0),
                client(0, Request::PostContinue { path: 1, body: 20 }),
                read(0, 0, Kernel),
                server(0, Response::Continue),
                write(0, 0, Kernel),
                server(0, ok(3)),
                write(0, 0, Kernel),
                Close { sock: 0 },
            ],
        ),
        (
            "head-with-length",
            vec![
                open(0),
                client(0, Request::Head { path: 1 }),
                read(0, 0, Kernel),
                raw_send(0, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
                Close { sock: 0 },
            ],
        ),
        ("no-content-204-not-modified-304", {
            let mut ops = vec![open(0)];
            ops.extend(exchange(0, get(1), Response::NoBody { status: 2 }));
            ops.extend(exchange(0, get(1), Response::NoBody { status: 3 }));
            ops.push(Close { sock: 0 });
            ops
        }),
        ("absurd-content-length", {
            let mut ops = vec![open(0)];
            ops.extend(exchange(0, get(1), Response::AbsurdLength));
            ops.extend(exchange(0, get(0), ok(1)));
            ops.push(Close { sock: 0 });
            ops
        }),
        ("bad-content-length", {
            let mut ops = vec![open(0)];
            ops.extend(exchange(0, get(1), Response::BadLength));
            ops.push(Close { sock: 0 });
            ops
        }),
        ("header-block-past-capture", {
            let mut ops = vec![open(0)];
            ops.extend(exchange(
                0,
                Request::HugeHeaders {
                    path: 1,
                    size: 2000,
                },
                Response::Sized {
                    status: 7,
                    body: 0,
                    http10: false,
                },
            ));
            ops.push(Close { sock: 0 });
            ops
        }),
        ("header-block-past-the-cap", {
            let mut ops = vec![
                open(0),
                client(
                    0,
                    Request::HugeHeaders {
                        path: 1,
                        size: 20_000,
                    },
                ),
            ];
            ops.extend((0..42).map(|_| read(0, CAPTURE_LEN as u16, Full)));
            ops.extend([server(0, ok(0)), write(0, 0, Kernel), Close { sock: 0 }]);
            ops
        }),
        ("lone-cr", {
            let mut ops = vec![open(0)];
            ops.extend(exchange(0, Request::LoneCr { path: 1 }, ok(0)));
            ops.push(Close { sock: 0 });
            ops
        }),
        ("invalid-utf8-path", {
            let mut ops = vec![open(0)];
            ops.extend(exchange(0, Request::InvalidUtf8, ok(0)));
            ops.push(Close { sock: 0 });
            ops
        }),
        (
            "tls-client-hello",
            vec![
                open(0),
                client(0, Request::TlsClientHello),
                read(0, 0, Full),
                raw_send(0, &[0x16, 0x03, 0x03, 0x00, 0x3a, 0x02, 0x00, 0x00, 0x36]),
                Close { sock: 0 },
            ],
        ),
        ("redis-inline", {
            let mut ops = vec![open(0)];
            ops.extend(exchange(0, Request::RedisInline, Response::Binary));
            ops.push(Close { sock: 0 });
            ops
        }),
        ("postgres-startup", {
            let mut ops = vec![open(0)];
            ops.extend(exchange(0, Request::PostgresStartup, Response::Binary));
            ops.push(Close { sock: 0 });
            ops
        }),
        (
            "request-line-in-pieces",
            vec![
                open(0),
                client(0, get(2)),
                read(0, 2, Kernel),
                read(0, 9, Kernel),
                read(0, 0, Kernel),
                server(0, ok(10)),
                write(0, 20, Kernel),
                write(0, 0, Kernel),
                Close { sock: 0 },
            ],
        ),
        (
            "two-connections-and-sweeps",
            vec![
                open(0),
                open(1),
                client(0, get(1)),
                client(1, get(3)),
                read(1, 0, Kernel),
                read(0, 0, Kernel),
                server(1, Response::Chunked { chunks: 1 }),
                server(0, ok(4)),
                write(0, 0, Kernel),
                write(1, 0, Kernel),
                Wait { ns: 5000 },
                Sweep {
                    idle_ago: 1000,
                    forget_ago: 0,
                },
                client(0, get(0)),
                read(0, 0, Kernel),
                Wait { ns: 9000 },
                Sweep {
                    idle_ago: 8000,
                    forget_ago: 8000,
                },
            ],
        ),
        (
            "connection-seen-mid-stream",
            vec![
                server(2, ok(0)),
                write(2, 0, Kernel),
                client(2, get(1)),
                read(2, 0, Kernel),
                server(2, ok(0)),
                write(2, 0, Kernel),
            ],
        ),
    ];
    scripts.sort_by_key(|(name, _)| *name);
    scripts
}

/// Records no kernel should write: each must be counted and skipped.
fn malformed_records() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let sock = sock_id(0);
    let good = data_record(sock, DIRECTION_RECV, 10, 0, 18, b"GET / HTTP/1.1\r\n\r\n");
    let mut unknown_kind = good.clone();
    unknown_kind[0] = 9;
    let mut bad_direction = good.clone();
    bad_direction[offset_of!(DataEvent, direction)] = 7;
    let set = |record: &mut Vec<u8>, offset: usize, value: u32| {
        record[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    };
    let mut captured_past_moved = good.clone();
    set(&mut captured_past_moved, offset_of!(DataEvent, bytes), 1);
    let mut captured_past_capture = good.clone();
    set(
        &mut captured_past_capture,
        offset_of!(DataEvent, bytes),
        u32::MAX,
    );
    let captured = offset_of!(DataEvent, captured);
    set(&mut captured_past_capture, captured, CAPTURE_LEN as u32 + 1);
    let mut value_too_long = header_record(sock, 5, 2, 0, b"x", false);
    let len = offset_of!(HeaderEvent, len);
    value_too_long[len..len + 2].copy_from_slice(&200u16.to_le_bytes());
    let response = data_record(
        sock,
        DIRECTION_SEND,
        11,
        1,
        38,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    );
    vec![
        (
            "malformed-records",
            vec![
                open_record(sock, 1, 1),
                vec![1, 0, 0],
                unknown_kind,
                bad_direction,
                captured_past_moved,
                captured_past_capture,
                good[..good.len() - 1].to_vec(),
                [good.clone(), vec![0]].concat(),
                close_record(sock, 2)[..40].to_vec(),
                good,
                response,
                close_record(sock, 12),
            ],
        ),
        (
            "header-records",
            vec![
                open_record(sock, 1, 1),
                header_record(sock, 2, 0, 1, b"curl/8", false),
                header_record(sock, 2, 0, 0, &[b'v'; 128], true),
                // A name the daemon never gave, a value whose read is lost.
                header_record(sock, 2, 0, 7, b"unknown", false),
                data_record(
                    sock,
                    DIRECTION_RECV,
                    3,
                    0,
                    9000,
                    b"GET / HTTP/1.1\r\nX-Pad: p",
                ),
                header_record(sock, 4, 1, 0, b"lost", false),
                data_record(
                    sock,
                    DIRECTION_SEND,
                    5,
                    1,
                    38,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                ),
                value_too_long,
                close_record(sock, 6),
            ],
        ),
        (
            "task-records",
            vec![
                task_record(EventKind::TaskFork, 1, 100),
                task_record(EventKind::TaskExit, 2, 100),
                task_record(EventKind::TaskExit, 3, 100)[..20].to_vec(),
            ],
        ),
    ]
}

fn write_seed(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(name), bytes).unwrap_or_else(|err| panic!("writing {name}: {err}"));
}

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let dirs = ["assembly", "records", "http"].map(|target| {
        let dir = corpus.join(target);
        // Start afresh so a renamed seed does not linger.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("creating the corpus directory");
        dir
    });
    let [assembly, records, http] = &dirs;

    let mut requests = Vec::new();
    let mut responses = Vec::new();
    for (name, ops) in scripts() {
        let script = Script(ops);
        let bytes = script.encode();
        let decoded = Script::arbitrary(&mut Unstructured::new(&bytes)).expect("decodes");
        assert_eq!(
            decoded, script,
            "{name}: encode is not the inverse of decode"
        );
        let spans = tracer_fuzz::run_script(&script);
        println!("{name}: {} bytes, {spans} spans", bytes.len());
        write_seed(assembly, name, &bytes);
        let records_of = script_records(&script);
        assert_eq!(
            tracer_fuzz::feed_records(records_of.iter().map(Vec::as_slice)),
            spans
        );
        write_seed(records, name, &frame(&records_of));
        for op in &script.0 {
            match op {
                Client { request, .. } if !requests.contains(request) => {
                    requests.push(request.clone())
                }
                Server { response, .. } if !responses.contains(response) => {
                    responses.push(response.clone())
                }
                _ => {}
            }
        }
    }
    for (name, bad) in malformed_records() {
        tracer_fuzz::feed_records(bad.iter().map(Vec::as_slice));
        write_seed(records, name, &frame(&bad));
    }

    for (i, request) in requests.iter().enumerate() {
        let name = format!("request-{i:02}-{}", variant(&format!("{request:?}")));
        write_seed(http, &name, &http_input(i % 2 == 0, 0, &request.bytes()));
    }
    for (i, response) in responses.iter().enumerate() {
        let name = format!("response-{i:02}-{}", variant(&format!("{response:?}")));
        write_seed(http, &name, &http_input(false, i % 2, &response.bytes()));
    }
    write_seed(
        http,
        "response-head-to-head",
        &http_input(false, 1, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
    );
    // What the fuzzer found: `total_len` overflowed (fixed in http.rs).
    write_seed(
        http,
        "regression-total-len-overflow",
        b" HTTP/1.0 200\r\nContent-Length: 18446744073709551615\r\n\r\nOST\xff\xff\x01",
    );
    write_seed(
        http,
        "request-cut-by-capture",
        &http_input(true, 0, b"GET /big?x=1 HTTP/1.1\r\nX-Pad: aaaa"),
    );
}

/// `Get { path: 1, .. }` -> `get`.
fn variant(debug: &str) -> String {
    debug
        .split([' ', '{', '('])
        .next()
        .unwrap_or(debug)
        .to_ascii_lowercase()
}
