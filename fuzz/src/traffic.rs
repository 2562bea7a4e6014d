//! Traffic the scripts send: HTTP requests and responses of every shape the
//! assembler must cope with, and some binary protocols.

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
