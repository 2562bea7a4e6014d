//! A minimal HTTP/1.1 client exchange: write prebuilt request bytes, read one
//! response (status line and headers parsed with httparse, body framed by
//! `Content-Length`, `chunked` or connection close).
//!
//! Invariants: one request in flight per connection (no pipelining), so bytes
//! after the response are never expected and are discarded; the body is read
//! and dropped, only its length is kept.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MAX_HEADERS: usize = 64;
const READ_CHUNK: usize = 16 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The peer closed the connection before a complete response.
    #[error("connection closed after {received} bytes of the response")]
    Closed { received: usize },
    /// Reading or writing the socket failed.
    #[error("socket I/O failed")]
    Io(#[from] io::Error),
    /// The response is not valid HTTP/1.x.
    #[error("malformed response: {0}")]
    Malformed(String),
}

/// What the client needs to know about a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// False when the server asked to close (or the body ran to EOF).
    pub keep_alive: bool,
    pub body_len: usize,
}

/// Serialises a request. `host` goes into the `Host` header; a body gets a
/// `Content-Length`.
pub fn build_request(method: &str, host: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: harness\r\n");
    if !body.is_empty() || method == "POST" || method == "PUT" {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Writes `request` and reads one response. `buf` is scratch space reused
/// across calls to avoid allocations.
pub async fn exchange<S>(
    stream: &mut S,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> Result<Response, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(request).await?;
    read_response(stream, buf).await
}

enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

struct Head {
    status: u16,
    keep_alive: bool,
    framing: Framing,
    len: usize,
}

fn parse_head(bytes: &[u8]) -> Result<Option<Head>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    let status = response
        .code
        .ok_or_else(|| HttpError::Malformed("no status code".into()))?;
    let mut keep_alive = response.version == Some(1);
    let mut framing = Framing::UntilClose;
    for header in response.headers.iter() {
        let value = String::from_utf8_lossy(header.value);
        if header.name.eq_ignore_ascii_case("content-length") {
            let n = value
                .trim()
                .parse()
                .map_err(|_| HttpError::Malformed(format!("bad Content-Length {value:?}")))?;
            framing = Framing::Length(n);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            framing = Framing::Chunked;
        } else if header.name.eq_ignore_ascii_case("connection") {
            let value = value.to_ascii_lowercase();
            if value.contains("close") {
                keep_alive = false;
            } else if value.contains("keep-alive") {
                keep_alive = true;
            }
        }
    }
    if matches!(status, 204 | 304) || (100..200).contains(&status) {
        framing = Framing::Length(0);
    }
    if matches!(framing, Framing::UntilClose) {
        keep_alive = false;
    }
    Ok(Some(Head {
        status,
        keep_alive,
        framing,
        len,
    }))
}

/// Reads more bytes into `buf`; `Err(Closed)` on EOF.
async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Result<(), HttpError> {
    buf.reserve(READ_CHUNK);
    if stream.read_buf(buf).await? == 0 {
        return Err(HttpError::Closed {
            received: buf.len(),
        });
    }
    Ok(())
}

/// Reads one response from `stream`.
pub async fn read_response<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<Response, HttpError> {
    buf.clear();
    let head = loop {
        if let Some(head) = parse_head(buf)? {
            break head;
        }
        fill(stream, buf).await?;
    };
    let body_len = match head.framing {
        Framing::Length(n) => {
            while buf.len() < head.len + n {
                fill(stream, buf).await?;
            }
            n
        }
        Framing::Chunked => read_chunked(stream, buf, head.len).await?,
        Framing::UntilClose => loop {
            buf.reserve(READ_CHUNK);
            if stream.read_buf(buf).await? == 0 {
                break buf.len() - head.len;
            }
        },
    };
    Ok(Response {
        status: head.status,
        keep_alive: head.keep_alive,
        body_len,
    })
}

async fn read_chunked<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    mut pos: usize,
) -> Result<usize, HttpError> {
    let mut body_len = 0;
    loop {
        match httparse::parse_chunk_size(&buf[pos..]) {
            Ok(httparse::Status::Complete((line, 0))) => {
                // Last chunk: optional trailers, then an empty line.
                pos += line;
                loop {
                    if let Some(end) = find_crlf(&buf[pos..]) {
                        if end == 0 {
                            return Ok(body_len);
                        }
                        pos += end + 2;
                    } else {
                        fill(stream, buf).await?;
                    }
                }
            }
            Ok(httparse::Status::Complete((line, size))) => {
                let size = usize::try_from(size)
                    .map_err(|_| HttpError::Malformed("chunk too large".into()))?;
                let next = pos + line + size + 2;
                while buf.len() < next {
                    fill(stream, buf).await?;
                }
                body_len += size;
                pos = next;
            }
            Ok(httparse::Status::Partial) => fill(stream, buf).await?,
            Err(_) => return Err(HttpError::Malformed("bad chunk size".into())),
        }
    }
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(raw: &[u8]) -> Result<Response, HttpError> {
        let mut reader = raw;
        read_response(&mut reader, &mut Vec::new()).await
    }

    #[tokio::test]
    async fn content_length_keep_alive() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            .await
            .expect("parse");
        assert_eq!(
            r,
            Response {
                status: 200,
                keep_alive: true,
                body_len: 5
            }
        );
    }

    #[tokio::test]
    async fn connection_close_and_http10() {
        let r =
            parse(b"HTTP/1.1 404 NOT FOUND\r\nConnection: close\r\nContent-Length: 2\r\n\r\nno")
                .await
                .expect("parse");
        assert_eq!((r.status, r.keep_alive), (404, false));
        let r = parse(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await
            .expect("parse");
        assert!(!r.keep_alive);
    }

    #[tokio::test]
    async fn chunked_with_trailer() {
        let r = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n")
            .await
            .expect("parse");
        assert_eq!(r.body_len, 5);
        assert!(r.keep_alive);
    }

    #[tokio::test]
    async fn body_until_close() {
        let r = parse(b"HTTP/1.1 200 OK\r\n\r\nabcdef")
            .await
            .expect("parse");
        assert_eq!((r.body_len, r.keep_alive), (6, false));
    }

    #[tokio::test]
    async fn truncated_body_is_closed_error() {
        let err = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::Closed { .. }));
    }

    #[test]
    fn request_bytes() {
        let req = build_request("POST", "127.0.0.1:1", "/echo-size", b"xy");
        assert_eq!(
            req,
            b"POST /echo-size HTTP/1.1\r\nHost: 127.0.0.1:1\r\nUser-Agent: harness\r\nContent-Length: 2\r\n\r\nxy"
        );
    }
}
