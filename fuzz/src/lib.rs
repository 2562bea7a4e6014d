//! What the fuzz targets and the seed generator share: ring-buffer records
//! encoded as the kernel writes them, the framing of the `records` target's
//! input, a small traffic script language for the `assembly` target (decoded
//! with `arbitrary`, and encodable, so the committed seeds are named scripts),
//! and the invariants every target checks (`Witness`).
use std::collections::HashMap;

use arbitrary::{Arbitrary, Result, Unstructured};
use tracer::{
    assembly::{Assembler, CompletedRequest},
    events::{self, Event},
};
use tracer_common::{
    AF_INET, CAPTURE_LEN, ConnEvent, ConnMeta, DIRECTION_RECV, DIRECTION_SEND, DataEvent,
    EventHeader, EventKind, TaskEvent,
};

// ---------------------------------------------------------------- records

/// The bytes of a record, as the kernel writes it. Only for the
/// `tracer_common` event types, which are `#[repr(C)]` with explicit padding.
fn bytes_of<T: Copy>(value: &T) -> Vec<u8> {
    // SAFETY: every byte of these plain-old-data types is initialized (no
    // implicit padding), and the slice does not outlive `value`.
    unsafe {
        std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>())
    }
    .to_vec()
}

const TGID: u32 = 4242;

fn header(kind: EventKind, timestamp_ns: u64) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        tgid: TGID,
        timestamp_ns,
    }
}

/// A read (`DIRECTION_RECV`) or write of `moved` bytes whose start, `captured`
/// (at most `CAPTURE_LEN` bytes), the kernel copied; `seq` numbers the
/// connection's data records.
pub fn data_record(
    sock: u64,
    direction: u8,
    ts: u64,
    seq: u32,
    moved: u32,
    captured: &[u8],
) -> Vec<u8> {
    let captured = &captured[..captured.len().min(CAPTURE_LEN)];
    // SAFETY: integers and arrays of integers only; all zeroes is a valid
    // value (and leaves any field added later at zero).
    let mut event: DataEvent = unsafe { std::mem::zeroed() };
    event.header = header(EventKind::Data, ts);
    event.sock = sock;
    event.tid = TGID;
    event.direction = direction;
    event.bytes = moved.max(captured.len() as u32);
    event.captured = captured.len() as u32;
    event.seq = seq;
    event.payload[..captured.len()].copy_from_slice(captured);
    bytes_of(&event)
}

pub fn open_record(sock: u64, ts: u64, established_ns: u64) -> Vec<u8> {
    bytes_of(&ConnEvent {
        header: header(EventKind::ConnOpen, ts),
        sock,
        established_ns,
        meta: ConnMeta {
            family: AF_INET,
            local_port: 8000,
            peer_port: 40000 + (sock & 0xff) as u16,
            _pad: 0,
            peer_addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        },
    })
}

pub fn close_record(sock: u64, ts: u64) -> Vec<u8> {
    bytes_of(&ConnEvent {
        header: header(EventKind::ConnClose, ts),
        sock,
        established_ns: 0,
        meta: ConnMeta::unknown(0),
    })
}

pub fn task_record(kind: EventKind, ts: u64, task: u32) -> Vec<u8> {
    bytes_of(&TaskEvent {
        header: header(kind, ts),
        task,
        _pad: 0,
    })
}

/// The `records` target's input: records, each behind its length (u16 LE).
pub fn frame(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for record in records {
        out.extend_from_slice(&(record.len() as u16).to_le_bytes());
        out.extend_from_slice(record);
    }
    out
}

/// Splits a `records` input into records; the last one may be cut short.
pub fn unframe(mut input: &[u8]) -> Vec<&[u8]> {
    let mut records = Vec::new();
    while input.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([input[0], input[1]]));
        let rest = &input[2..];
        let (record, tail) = rest.split_at(len.min(rest.len()));
        records.push(record);
        input = tail;
    }
    records
}

/// Decodes a record and checks what `decode` promises about what it accepts.
pub fn decode_checked(record: &[u8]) -> Option<Event<'_>> {
    let event = events::decode(record).ok()?;
    let expected = match &event {
        Event::Data(data) => {
            assert!(data.payload.len() <= CAPTURE_LEN);
            assert!(data.payload.len() as u64 <= u64::from(data.bytes));
            std::mem::size_of::<DataEvent>()
        }
        Event::ConnOpen { .. } | Event::ConnClose { .. } => std::mem::size_of::<ConnEvent>(),
        Event::TaskFork { .. } | Event::TaskExit { .. } => std::mem::size_of::<TaskEvent>(),
    };
    assert_eq!(record.len(), expected, "a record of the wrong size decoded");
    Some(event)
}

// ---------------------------------------------------------------- invariants

/// Remembers the bytes fed to the assembler, per socket and direction, and
/// checks the spans it emits against them: every span's method and path,
/// and its status, were in those bytes (no invented span); no more spans
/// than request lines with a version (`HTTP/1.`) fed.
#[derive(Default)]
pub struct Witness {
    recv: HashMap<u64, Vec<u8>>,
    send: HashMap<u64, Vec<u8>>,
    spans: Vec<CompletedRequest>,
}

impl Witness {
    pub fn observe(&mut self, event: &Event<'_>) {
        if let Event::Data(data) = event {
            let streams = match data.direction {
                events::Direction::Recv => &mut self.recv,
                events::Direction::Send => &mut self.send,
            };
            streams
                .entry(data.sock)
                .or_default()
                .extend_from_slice(data.payload);
        }
    }

    /// Takes the spans emitted so far; `monotonic` when the input's clock
    /// never went back, so that each span's times are in order.
    pub fn spans(&mut self, done: &mut Vec<CompletedRequest>, monotonic: bool) {
        for span in done.iter() {
            let line = format!("{} {}", span.request.method, span.request.path);
            assert!(
                self.recv
                    .values()
                    .any(|bytes| contains(bytes, line.as_bytes())),
                "invented span: {line:?} was never read"
            );
            let status = format!(" {:03}", span.status);
            assert!(
                self.send
                    .values()
                    .any(|bytes| contains(bytes, status.as_bytes())),
                "invented span: status {} was never written",
                span.status
            );
            assert!(span.request.minor_version <= 1);
            if monotonic {
                assert!(
                    span.start_ns <= span.first_read_ns && span.first_read_ns <= span.end_ns,
                    "times out of order: {span:?}"
                );
            }
        }
        self.spans.append(done);
    }

    /// At the end of an input: no more spans than request lines fed.
    pub fn finish(&self) {
        let request_lines: usize = self
            .recv
            .values()
            .map(|bytes| count(bytes, b"HTTP/1."))
            .sum();
        assert!(
            self.spans.len() <= request_lines,
            "{} spans from {request_lines} request lines",
            self.spans.len()
        );
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// Feeds records to an assembler, checking every invariant; returns the spans.
pub fn feed_records<'a>(records: impl IntoIterator<Item = &'a [u8]>) -> usize {
    let mut assembler = Assembler::new(false);
    let mut witness = Witness::default();
    let mut done = Vec::new();
    for record in records {
        if let Some(event) = decode_checked(record) {
            witness.observe(&event);
            assembler.handle(&event, &mut done);
            witness.spans(&mut done, false);
        }
    }
    assembler.drain(&mut done);
    witness.spans(&mut done, false);
    assert_eq!(assembler.open_connections(), 0);
    witness.finish();
    witness.spans.len()
}

// ---------------------------------------------------------------- traffic

/// Request targets: plain, with a query or fragment, asterisk, absolute form.
pub const PATHS: [&str; 8] = [
    "/",
    "/work",
    "/a/b?user=secret&x=1",
    "/frag#top",
    "*",
    "http://example.test/abs?q",
    "/%E2%82%AC/sp%20ace",
    "?only-query",
];

const STATUSES: [u16; 10] = [100, 101, 200, 201, 204, 301, 304, 404, 500, 599];

/// What a client sends: one message, or for `Pipelined` several at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Get {
        path: u8,
        http10: bool,
    },
    Head {
        path: u8,
    },
    Post {
        path: u8,
        body: u16,
    },
    /// `Expect: 100-continue`; the body follows in the same message.
    PostContinue {
        path: u8,
        body: u16,
    },
    /// `count` GETs back to back, as a pipelining client sends them.
    Pipelined {
        path: u8,
        count: u8,
    },
    /// A header block of `size` bytes more (past the capture, or the cap).
    HugeHeaders {
        path: u8,
        size: u16,
    },
    /// A lone `\r` where a line should end.
    LoneCr {
        path: u8,
    },
    InvalidUtf8,
    TlsClientHello,
    RedisInline,
    PostgresStartup,
}

/// What a server writes back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Sized {
        status: u8,
        body: u16,
        http10: bool,
    },
    Chunked {
        chunks: u8,
    },
    Continue,
    /// A status without a body (1xx, 204, 304...): a length header is ignored.
    NoBody {
        status: u8,
    },
    /// `Content-Length: 18446744073709551615`.
    AbsurdLength,
    /// HTTP/1.0, no length: the body ends with the connection.
    CloseDelimited {
        body: u16,
    },
    BadLength,
    /// A Redis reply, then a Postgres authentication request.
    Binary,
}

fn path(index: u8) -> &'static str {
    PATHS[usize::from(index) % PATHS.len()]
}

fn status(index: u8) -> u16 {
    STATUSES[usize::from(index) % STATUSES.len()]
}

impl Request {
    pub fn bytes(&self) -> Vec<u8> {
        match *self {
            Request::Get { path: p, http10 } => {
                let version = if http10 { "1.0" } else { "1.1" };
                format!(
                    "GET {} HTTP/{version}\r\nHost: app\r\nUser-Agent: fuzz\r\nAccept: */*\r\n\r\n",
                    path(p)
                )
                .into_bytes()
            }
            Request::Head { path: p } => {
                format!("HEAD {} HTTP/1.1\r\nHost: app\r\n\r\n", path(p)).into_bytes()
            }
            Request::Post { path: p, body } | Request::PostContinue { path: p, body } => {
                let expect = if matches!(self, Request::PostContinue { .. }) {
                    "Expect: 100-continue\r\n"
                } else {
                    ""
                };
                let mut bytes = format!(
                    "POST {} HTTP/1.1\r\nHost: app\r\n{expect}Content-Type: application/json\r\nContent-Length: {body}\r\n\r\n",
                    path(p)
                )
                .into_bytes();
                bytes.resize(bytes.len() + usize::from(body), b'{');
                bytes
            }
            Request::Pipelined { path: p, count } => (0..count % 4 + 1)
                .flat_map(|i| {
                    format!("GET {}{i} HTTP/1.1\r\nHost: app\r\n\r\n", path(p)).into_bytes()
                })
                .collect(),
            Request::HugeHeaders { path: p, size } => {
                let mut bytes = format!("GET {} HTTP/1.1\r\nHost: app\r\n", path(p)).into_bytes();
                for _ in 0..usize::from(size) / 100 + 1 {
                    bytes.extend_from_slice(b"X-Pad: ");
                    bytes.extend(std::iter::repeat_n(b'p', 90));
                    bytes.extend_from_slice(b"\r\n");
                }
                bytes.extend_from_slice(b"\r\n");
                bytes
            }
            Request::LoneCr { path: p } => {
                format!("GET {} HTTP/1.1\rHost: app\r\n\r\n", path(p)).into_bytes()
            }
            Request::InvalidUtf8 => {
                b"GET /caf\xc3\x28/\xff\xfe HTTP/1.1\r\nHost: \xff\r\n\r\n".to_vec()
            }
            Request::TlsClientHello => TLS_CLIENT_HELLO.to_vec(),
            Request::RedisInline => b"PING\r\nSET key value\r\n*1\r\n$4\r\nPING\r\n".to_vec(),
            Request::PostgresStartup => POSTGRES_STARTUP.to_vec(),
        }
    }
}

impl Response {
    pub fn bytes(&self) -> Vec<u8> {
        match *self {
            Response::Sized {
                status: s,
                body,
                http10,
            } => {
                let version = if http10 { "1.0" } else { "1.1" };
                let mut bytes = format!(
                    "HTTP/{version} {} Whatever\r\nServer: gunicorn\r\nContent-Type: text/html\r\nContent-Length: {body}\r\n\r\n",
                    status(s)
                )
                .into_bytes();
                bytes.resize(bytes.len() + usize::from(body), b'<');
                bytes
            }
            Response::Chunked { chunks } => {
                let mut bytes =
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                for i in 0..chunks % 8 {
                    bytes.extend(format!("{:x}\r\n{}\r\n", i + 1, "c".repeat(usize::from(i) + 1)).bytes());
                }
                bytes.extend_from_slice(b"0\r\n\r\n");
                bytes
            }
            Response::Continue => b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(),
            Response::NoBody { status: s } => format!(
                "HTTP/1.1 {} Nothing\r\nContent-Length: 10\r\n\r\n",
                [100, 101, 204, 304][usize::from(s) % 4]
            )
            .into_bytes(),
            Response::AbsurdLength => {
                b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\nbody".to_vec()
            }
            Response::CloseDelimited { body } => {
                let mut bytes = b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\n".to_vec();
                bytes.resize(bytes.len() + usize::from(body), b'z');
                bytes
            }
            Response::BadLength => {
                b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\nContent-Length: 99999999999999999999999\r\n\r\n".to_vec()
            }
            Response::Binary => {
                let mut bytes = b"+PONG\r\n$5\r\nvalue\r\n".to_vec();
                bytes.extend_from_slice(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0]);
                bytes
            }
        }
    }
}

/// The start of a TLS 1.2 ClientHello.
pub const TLS_CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03, 0x00, 0x01, 0x02, 0x03, 0x04,
    0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14,
    0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x00, 0x00, 0x20, 0xcc, 0xa8,
    0xcc, 0xa9, 0xc0, 0x2f, 0xc0, 0x30, 0xc0, 0x2b, 0xc0, 0x2c, 0xc0, 0x13, 0xc0, 0x09, 0xc0, 0x14,
    0xc0, 0x0a, 0x00, 0x9c, 0x00, 0x9d, 0x00, 0x2f, 0x00, 0x35, 0xc0, 0x12, 0x00, 0x0a, 0x01, 0x00,
    0x00, 0x58, 0x00, 0x00, 0x00, 0x18, 0x00, 0x16, 0x00, 0x00, 0x13, b'e', b'x', b'a', b'm', b'p',
    b'l', b'e', b'.', b'u', b'l', b'f', b'h', b'e', b'i', b'm', b'.', b'n', b'e', b't',
];

/// A Postgres StartupMessage (protocol 3.0, user=app).
pub const POSTGRES_STARTUP: &[u8] = &[
    0x00, 0x00, 0x00, 0x17, 0x00, 0x03, 0x00, 0x00, b'u', b's', b'e', b'r', 0x00, b'a', b'p', b'p',
    0x00, b'G', b'E', b'T', b' ', 0x00, 0x00,
];

// ---------------------------------------------------------------- scripts

/// How much of a read or write the kernel copied into the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capture {
    /// Up to `CAPTURE_LEN`, zeroed after the blank line that ends the header
    /// part (one followed by another message start does not), as the
    /// programs do.
    Kernel,
    /// Up to `CAPTURE_LEN` bytes as they are.
    Full,
    /// Nothing (a body, or an unreadable buffer).
    None,
    /// The first `n` bytes (capped at `CAPTURE_LEN`).
    Prefix(u16),
}

/// One step of a connection-level script; sockets are numbered 0..4.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// The kernel saw the handshake `established_ago` ns ago (0: never).
    Open {
        sock: u8,
        established_ago: u8,
    },
    Close {
        sock: u8,
    },
    /// The client sends a request: it waits in the socket to be read.
    Client {
        sock: u8,
        request: Request,
    },
    /// The app has a response to write.
    Server {
        sock: u8,
        response: Response,
    },
    /// The app reads up to `len` bytes (0: all that wait).
    Read {
        sock: u8,
        len: u16,
        capture: Capture,
    },
    /// The app writes up to `len` bytes (0: all that wait).
    Write {
        sock: u8,
        len: u16,
        capture: Capture,
    },
    /// A read (`recv`) or write of these bytes, `extra` more moved past them.
    Raw {
        sock: u8,
        recv: bool,
        extra: u16,
        bytes: Vec<u8>,
    },
    Sweep {
        idle_ago: u16,
        forget_ago: u16,
    },
    Wait {
        ns: u16,
    },
    /// The kernel numbered a data record but could not deliver it.
    Lose {
        sock: u8,
    },
}

/// A script: decoded from fuzz input with `arbitrary`, and encodable so that
/// seeds are readable scripts (`encode` is the inverse of `arbitrary`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Script(pub Vec<Op>);

/// Bounds what one input can ask for (each op is a few bytes).
const MAX_OPS: usize = 256;

impl<'a> Arbitrary<'a> for Script {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let mut ops = Vec::new();
        while !u.is_empty() && ops.len() < MAX_OPS {
            ops.push(Op::decode(u)?);
        }
        Ok(Script(ops))
    }
}

impl Script {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for op in &self.0 {
            op.encode(&mut out);
        }
        out
    }
}

fn flag(u: &mut Unstructured<'_>) -> Result<bool> {
    Ok(u8::arbitrary(u)? & 1 == 1)
}

impl Capture {
    fn decode(u: &mut Unstructured<'_>) -> Result<Self> {
        Ok(match u8::arbitrary(u)? % 4 {
            0 => Capture::Kernel,
            1 => Capture::Full,
            2 => Capture::None,
            _ => Capture::Prefix(u16::arbitrary(u)?),
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Capture::Kernel => out.push(0),
            Capture::Full => out.push(1),
            Capture::None => out.push(2),
            Capture::Prefix(n) => {
                out.push(3);
                out.extend_from_slice(&n.to_le_bytes());
            }
        }
    }

    fn apply(&self, bytes: &[u8]) -> Vec<u8> {
        let len = match *self {
            Capture::None => 0,
            Capture::Prefix(n) => usize::from(n),
            Capture::Kernel | Capture::Full => CAPTURE_LEN,
        };
        let mut captured = bytes[..len.min(bytes.len()).min(CAPTURE_LEN)].to_vec();
        if *self == Capture::Kernel {
            let body = (0..captured.len()).find_map(|at| {
                let end = at + 4;
                (captured[at..].starts_with(b"\r\n\r\n")
                    && !captured.get(end).is_some_and(u8::is_ascii_uppercase))
                .then_some(end)
            });
            if let Some(end) = body {
                captured[end..].fill(0);
            }
        }
        captured
    }
}

impl Request {
    fn decode(u: &mut Unstructured<'_>) -> Result<Self> {
        Ok(match u8::arbitrary(u)? % 11 {
            0 => Request::Get {
                path: u8::arbitrary(u)?,
                http10: flag(u)?,
            },
            1 => Request::Head {
                path: u8::arbitrary(u)?,
            },
            2 => Request::Post {
                path: u8::arbitrary(u)?,
                body: u16::arbitrary(u)?,
            },
            3 => Request::PostContinue {
                path: u8::arbitrary(u)?,
                body: u16::arbitrary(u)?,
            },
            4 => Request::Pipelined {
                path: u8::arbitrary(u)?,
                count: u8::arbitrary(u)?,
            },
            5 => Request::HugeHeaders {
                path: u8::arbitrary(u)?,
                size: u16::arbitrary(u)?,
            },
            6 => Request::LoneCr {
                path: u8::arbitrary(u)?,
            },
            7 => Request::InvalidUtf8,
            8 => Request::TlsClientHello,
            9 => Request::RedisInline,
            _ => Request::PostgresStartup,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Request::Get { path, http10 } => out.extend([0, path, u8::from(http10)]),
            Request::Head { path } => out.extend([1, path]),
            Request::Post { path, body } => {
                out.extend([2, path]);
                out.extend(body.to_le_bytes());
            }
            Request::PostContinue { path, body } => {
                out.extend([3, path]);
                out.extend(body.to_le_bytes());
            }
            Request::Pipelined { path, count } => out.extend([4, path, count]),
            Request::HugeHeaders { path, size } => {
                out.extend([5, path]);
                out.extend(size.to_le_bytes());
            }
            Request::LoneCr { path } => out.extend([6, path]),
            Request::InvalidUtf8 => out.push(7),
            Request::TlsClientHello => out.push(8),
            Request::RedisInline => out.push(9),
            Request::PostgresStartup => out.push(10),
        }
    }
}

impl Response {
    fn decode(u: &mut Unstructured<'_>) -> Result<Self> {
        Ok(match u8::arbitrary(u)? % 8 {
            0 => Response::Sized {
                status: u8::arbitrary(u)?,
                body: u16::arbitrary(u)?,
                http10: flag(u)?,
            },
            1 => Response::Chunked {
                chunks: u8::arbitrary(u)?,
            },
            2 => Response::Continue,
            3 => Response::NoBody {
                status: u8::arbitrary(u)?,
            },
            4 => Response::AbsurdLength,
            5 => Response::CloseDelimited {
                body: u16::arbitrary(u)?,
            },
            6 => Response::BadLength,
            _ => Response::Binary,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Response::Sized {
                status,
                body,
                http10,
            } => {
                out.extend([0, status]);
                out.extend(body.to_le_bytes());
                out.push(u8::from(http10));
            }
            Response::Chunked { chunks } => out.extend([1, chunks]),
            Response::Continue => out.push(2),
            Response::NoBody { status } => out.extend([3, status]),
            Response::AbsurdLength => out.push(4),
            Response::CloseDelimited { body } => {
                out.push(5);
                out.extend(body.to_le_bytes());
            }
            Response::BadLength => out.push(6),
            Response::Binary => out.push(7),
        }
    }
}

impl Op {
    fn decode(u: &mut Unstructured<'_>) -> Result<Self> {
        let tag = u8::arbitrary(u)? % 10;
        let sock = u8::arbitrary(u)? % 4;
        Ok(match tag {
            0 => Op::Open {
                sock,
                established_ago: u8::arbitrary(u)?,
            },
            1 => Op::Close { sock },
            2 => Op::Client {
                sock,
                request: Request::decode(u)?,
            },
            3 => Op::Server {
                sock,
                response: Response::decode(u)?,
            },
            4 => Op::Read {
                sock,
                len: u16::arbitrary(u)?,
                capture: Capture::decode(u)?,
            },
            5 => Op::Write {
                sock,
                len: u16::arbitrary(u)?,
                capture: Capture::decode(u)?,
            },
            6 => {
                let recv = flag(u)?;
                let extra = u16::arbitrary(u)?;
                let len = usize::from(u16::arbitrary(u)?) % (CAPTURE_LEN + 1);
                let bytes = u.bytes(len.min(u.len()))?.to_vec();
                Op::Raw {
                    sock,
                    recv,
                    extra,
                    bytes,
                }
            }
            7 => Op::Sweep {
                idle_ago: u16::arbitrary(u)?,
                forget_ago: u16::arbitrary(u)?,
            },
            8 => Op::Wait {
                ns: u16::arbitrary(u)?,
            },
            _ => Op::Lose { sock },
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Op::Open {
                sock,
                established_ago,
            } => out.extend([0, *sock, *established_ago]),
            Op::Close { sock } => out.extend([1, *sock]),
            Op::Client { sock, request } => {
                out.extend([2, *sock]);
                request.encode(out);
            }
            Op::Server { sock, response } => {
                out.extend([3, *sock]);
                response.encode(out);
            }
            Op::Read { sock, len, capture } | Op::Write { sock, len, capture } => {
                out.extend([
                    if matches!(self, Op::Read { .. }) {
                        4
                    } else {
                        5
                    },
                    *sock,
                ]);
                out.extend(len.to_le_bytes());
                capture.encode(out);
            }
            Op::Raw {
                sock,
                recv,
                extra,
                bytes,
            } => {
                out.extend([6, *sock, u8::from(*recv)]);
                out.extend(extra.to_le_bytes());
                out.extend((bytes.len() as u16).to_le_bytes());
                out.extend_from_slice(bytes);
            }
            Op::Sweep {
                idle_ago,
                forget_ago,
            } => {
                out.extend([7, 0]);
                out.extend(idle_ago.to_le_bytes());
                out.extend(forget_ago.to_le_bytes());
            }
            Op::Wait { ns } => {
                out.extend([8, 0]);
                out.extend(ns.to_le_bytes());
            }
            Op::Lose { sock } => out.extend([9, *sock]),
        }
    }
}

/// What playing a script gives: records for the ring buffer, and sweeps.
#[derive(Debug)]
pub enum Step {
    Record(Vec<u8>),
    Sweep {
        idle_before_ns: u64,
        forget_before_ns: u64,
    },
}

/// Bytes waiting in one direction of a socket, bounded so that an input
/// cannot ask for unbounded traffic.
const MAX_QUEUED: usize = 64 * 1024;

pub fn sock_id(sock: u8) -> u64 {
    0xffff_8880_0001_0000 + u64::from(sock) * 0x1000
}

/// Turns a script into what the kernel would report, with a clock that only
/// moves forward.
pub fn play(script: &Script) -> Vec<Step> {
    let mut now: u64 = 1_000_000;
    let mut to_read: HashMap<u8, Vec<u8>> = HashMap::new();
    let mut to_write: HashMap<u8, Vec<u8>> = HashMap::new();
    // Data records are numbered per connection, from 0 when the kernel
    // first sees it (at its handshake, or at its first read or write).
    let mut seqs: HashMap<u8, u32> = HashMap::new();
    let mut steps = Vec::new();
    for op in &script.0 {
        now += 1;
        match op {
            Op::Open {
                sock,
                established_ago,
            } => {
                seqs.remove(sock);
                let established = if *established_ago == 0 {
                    0
                } else {
                    now - u64::from(*established_ago)
                };
                steps.push(Step::Record(open_record(sock_id(*sock), now, established)));
            }
            Op::Close { sock } => {
                seqs.remove(sock);
                to_read.remove(sock);
                to_write.remove(sock);
                steps.push(Step::Record(close_record(sock_id(*sock), now)));
            }
            Op::Client { sock, request } => {
                queue(to_read.entry(*sock).or_default(), request.bytes())
            }
            Op::Server { sock, response } => {
                queue(to_write.entry(*sock).or_default(), response.bytes())
            }
            Op::Read { sock, len, capture } | Op::Write { sock, len, capture } => {
                let (waiting, direction) = if matches!(op, Op::Read { .. }) {
                    (to_read.entry(*sock).or_default(), DIRECTION_RECV)
                } else {
                    (to_write.entry(*sock).or_default(), DIRECTION_SEND)
                };
                let n = match usize::from(*len) {
                    0 => waiting.len(),
                    len => len.min(waiting.len()),
                };
                if n == 0 {
                    continue;
                }
                let moved: Vec<u8> = waiting.drain(..n).collect();
                let seq = next_seq(&mut seqs, *sock);
                steps.push(Step::Record(data_record(
                    sock_id(*sock),
                    direction,
                    now,
                    seq,
                    n as u32,
                    &capture.apply(&moved),
                )));
            }
            Op::Raw {
                sock,
                recv,
                extra,
                bytes,
            } => {
                let direction = if *recv {
                    DIRECTION_RECV
                } else {
                    DIRECTION_SEND
                };
                let moved = bytes.len() as u32 + u32::from(*extra);
                let seq = next_seq(&mut seqs, *sock);
                steps.push(Step::Record(data_record(
                    sock_id(*sock),
                    direction,
                    now,
                    seq,
                    moved,
                    bytes,
                )));
            }
            Op::Sweep {
                idle_ago,
                forget_ago,
            } => steps.push(Step::Sweep {
                idle_before_ns: now - u64::from(*idle_ago),
                forget_before_ns: now - u64::from(*forget_ago),
            }),
            Op::Wait { ns } => now += u64::from(*ns),
            Op::Lose { sock } => {
                next_seq(&mut seqs, *sock);
            }
        }
    }
    steps
}

fn next_seq(seqs: &mut HashMap<u8, u32>, sock: u8) -> u32 {
    let seq = seqs.entry(sock).or_default();
    *seq = seq.wrapping_add(1);
    seq.wrapping_sub(1)
}

fn queue(waiting: &mut Vec<u8>, bytes: Vec<u8>) {
    if waiting.len() + bytes.len() <= MAX_QUEUED {
        waiting.extend(bytes);
    }
}

/// Plays a script into an assembler, checking every invariant.
pub fn run_script(script: &Script) -> usize {
    let mut assembler = Assembler::new(false);
    let mut witness = Witness::default();
    let mut done = Vec::new();
    for step in play(script) {
        match step {
            Step::Record(record) => {
                let event = decode_checked(&record).expect("a record as the kernel writes it");
                witness.observe(&event);
                assembler.handle(&event, &mut done);
            }
            Step::Sweep {
                idle_before_ns,
                forget_before_ns,
            } => assembler.sweep(idle_before_ns, forget_before_ns, &mut done),
        }
        witness.spans(&mut done, true);
    }
    assembler.drain(&mut done);
    witness.spans(&mut done, true);
    assert_eq!(assembler.open_connections(), 0);
    witness.finish();
    witness.spans.len()
}

/// The records a script plays to (its sweeps dropped), for `records` seeds.
pub fn script_records(script: &Script) -> Vec<Vec<u8>> {
    play(script)
        .into_iter()
        .filter_map(|step| match step {
            Step::Record(record) => Some(record),
            Step::Sweep { .. } => None,
        })
        .collect()
}

/// The `http` target's input: a selector byte (bit 0: keep the query; the
/// rest picks the request method for the response parser), then the bytes.
pub const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "OPTIONS", "", "head"];

pub fn http_input(keep_query: bool, method: usize, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![(method as u8) << 1 | u8::from(keep_query)];
    out.extend_from_slice(bytes);
    out
}
