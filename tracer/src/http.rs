//! HTTP/1.x message heads, parsed with `httparse` from the captured bytes.
//! Only what spans need is kept: method, path (query stripped unless asked),
//! version, status, and how long the body is, to know when a response ends.

/// Header slots offered to the parser; a head with more is not parsed.
const MAX_HEADERS: usize = 64;

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<T> {
    Complete(T),
    /// The head is not complete yet; more bytes may complete it.
    Partial,
    Invalid,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The request target's path; the query string only if asked for.
    pub path: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Bytes of the head, including the blank line.
    pub head_len: usize,
    /// The `Host` header (a call's `server.address`), when captured.
    pub host: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyLength {
    None,
    Known(u64),
    /// Chunked or delimited by the connection's end.
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub minor_version: u8,
    pub head_len: usize,
    pub body: BodyLength,
    /// Whether `head_len` is the whole head's (not a capture cut short).
    pub head_complete: bool,
}

impl ResponseHead {
    /// Total bytes of head and body, when the head says. A length no
    /// response can reach (`Content-Length: 18446744073709551615`) saturates.
    pub fn total_len(&self) -> Option<u64> {
        match self.body {
            BodyLength::None => Some(self.head_len as u64),
            BodyLength::Known(len) => Some((self.head_len as u64).saturating_add(len)),
            BodyLength::Unknown => None,
        }
    }

    /// Bytes of the body among the `written` bytes of the whole response
    /// (chunk framing included: what crossed the wire after the head), or
    /// `None` when where the head ends is not known.
    pub fn body_len(&self, written: u64) -> Option<u64> {
        match self.body {
            BodyLength::None => Some(0),
            BodyLength::Known(len) => Some(len.min(written.saturating_sub(self.head_len as u64))),
            BodyLength::Unknown if self.head_complete => {
                Some(written.saturating_sub(self.head_len as u64))
            }
            BodyLength::Unknown => None,
        }
    }
}

/// The methods the HTTP semantic conventions know; any other is `_OTHER`
/// in `http.request.method`, so made-up methods cannot grow a metric's
/// series.
const KNOWN_METHODS: [&str; 9] = [
    "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE",
];

/// `method` as `http.request.method` gives it (case-sensitive, as the
/// conventions say).
pub fn method_attribute(method: &str) -> &'static str {
    KNOWN_METHODS
        .into_iter()
        .find(|known| *known == method)
        .unwrap_or("_OTHER")
}

pub fn parse_request(bytes: &[u8], keep_query: bool) -> Parsed<RequestHead> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(head_len)) => {
            request_head(&request, head_len, keep_query).map_or(Parsed::Invalid, Parsed::Complete)
        }
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Invalid,
    }
}

/// The request line alone, for a head cut short by the capture size: the
/// request is real, only its later headers are unknown.
pub fn parse_request_line(bytes: &[u8], keep_query: bool) -> Option<RequestHead> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(_) | Err(httparse::Error::TooManyHeaders) => {
            request_head(&request, bytes.len(), keep_query)
        }
        Err(_) => None,
    }
}

fn request_head(
    request: &httparse::Request<'_, '_>,
    head_len: usize,
    keep_query: bool,
) -> Option<RequestHead> {
    let target = request.path?;
    let mut head = RequestHead {
        method: request.method?.to_owned(),
        path: target.to_owned(),
        minor_version: request.version?,
        head_len,
        host: header(request.headers, "host")
            .and_then(|host| std::str::from_utf8(host).ok())
            .map(|host| host.trim().to_owned()),
    };
    if !keep_query {
        head.strip_query();
    }
    Some(head)
}

impl RequestHead {
    /// Cuts the query string (and fragment) off the path.
    pub fn strip_query(&mut self) {
        if let Some(end) = self.path.find(['?', '#']) {
            self.path.truncate(end);
        }
    }
}

/// The status line alone, for a head cut short by the capture size: the
/// response is real, but where its body ends is unknown.
pub fn parse_response_line(bytes: &[u8]) -> Option<ResponseHead> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(bytes) {
        Ok(_) | Err(httparse::Error::TooManyHeaders) => Some(ResponseHead {
            status: response.code?,
            minor_version: response.version?,
            head_len: bytes.len(),
            body: BodyLength::Unknown,
            head_complete: false,
        }),
        Err(_) => None,
    }
}

/// `request_method` decides whether a body follows (not after HEAD).
pub fn parse_response(bytes: &[u8], request_method: &str) -> Parsed<ResponseHead> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(bytes) {
        Ok(httparse::Status::Complete(head_len)) => head_len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Invalid,
    };
    let (Some(status), Some(minor_version)) = (response.code, response.version) else {
        return Parsed::Invalid;
    };
    let body = if request_method == "HEAD" || status < 200 || status == 204 || status == 304 {
        BodyLength::None
    } else if header(response.headers, "transfer-encoding").is_some() {
        BodyLength::Unknown
    } else {
        match header(response.headers, "content-length") {
            Some(value) => match std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
            {
                Some(len) => BodyLength::Known(len),
                None => return Parsed::Invalid,
            },
            None => BodyLength::Unknown,
        }
    };
    Parsed::Complete(ResponseHead {
        status,
        minor_version,
        head_len,
        body,
        head_complete: true,
    })
}

fn header<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case(name))
        .map(|header| header.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_are_other() {
        assert_eq!(method_attribute("PATCH"), "PATCH");
        assert_eq!(method_attribute("get"), "_OTHER");
        assert_eq!(method_attribute("BREW"), "_OTHER");
    }

    #[test]
    fn request_with_query_is_stripped() {
        let Parsed::Complete(head) =
            parse_request(b"GET /work?user=secret HTTP/1.1\r\nHost: x\r\n\r\n", false)
        else {
            panic!("not parsed");
        };
        assert_eq!(head.method, "GET");
        assert_eq!(head.path, "/work");
        assert_eq!(head.minor_version, 1);
        assert_eq!(head.head_len, 43);
        let Parsed::Complete(kept) = parse_request(b"GET /a?b=c HTTP/1.0\r\n\r\n", true) else {
            panic!("not parsed");
        };
        assert_eq!(kept.path, "/a?b=c");
    }

    #[test]
    fn partial_and_invalid_requests() {
        assert_eq!(parse_request(b"GET /wo", false), Parsed::Partial);
        assert_eq!(parse_request(b"\x16\x03\x01\x00", false), Parsed::Invalid);
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nHost x\r\n\r\n", false),
            Parsed::Invalid
        );
    }

    #[test]
    fn request_line_of_a_cut_head() {
        let head = parse_request_line(b"POST /upload HTTP/1.1\r\nX-Long: aaaa", false).unwrap();
        assert_eq!(
            (head.method.as_str(), head.path.as_str()),
            ("POST", "/upload")
        );
        assert!(parse_request_line(b"POST /upl", false).is_none());
    }

    #[test]
    fn status_line_of_a_cut_head() {
        let head = parse_response_line(b"HTTP/1.1 404 Not Found\r\nServer: x\r\nX-Lo").unwrap();
        assert_eq!((head.status, head.body), (404, BodyLength::Unknown));
        assert_eq!(head.body_len(5000), None, "where the head ends is unknown");
        assert!(parse_response_line(b"HTTP/1.1 40").is_none());
    }

    #[test]
    fn response_lengths() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 48889\r\n\r\n";
        let Parsed::Complete(head) = parse_response(ok, "GET") else {
            panic!("not parsed");
        };
        assert_eq!(head.status, 200);
        assert_eq!(head.total_len(), Some(ok.len() as u64 + 48889));
        assert_eq!(head.body_len(ok.len() as u64 + 48889), Some(48889));
        let Parsed::Complete(head) = parse_response(ok, "HEAD") else {
            panic!("not parsed");
        };
        assert_eq!(head.body, BodyLength::None);
        assert_eq!(head.body_len(ok.len() as u64), Some(0));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let Parsed::Complete(head) = parse_response(chunked, "GET") else {
            panic!("not parsed");
        };
        assert_eq!(head.body, BodyLength::Unknown);
        // Chunk framing counts: it is what followed the head on the wire.
        assert_eq!(head.body_len(chunked.len() as u64 + 15), Some(15));
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n", "GET"),
            Parsed::Invalid
        );
        assert_eq!(parse_response(b"HTTP/1.1 2", "GET"), Parsed::Partial);
    }

    /// Found by the fuzzer: the largest Content-Length overflowed the total.
    #[test]
    fn absurd_content_length_does_not_overflow() {
        let absurd = b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n";
        let Parsed::Complete(head) = parse_response(absurd, "GET") else {
            panic!("not parsed");
        };
        assert_eq!(head.body, BodyLength::Known(u64::MAX));
        assert_eq!(head.total_len(), Some(u64::MAX));
    }
}
