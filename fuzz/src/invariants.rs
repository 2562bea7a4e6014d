//! The invariants the `records` and `assembly` targets check on the spans
//! the assembler emits (`Witness`), and feeding records through them.
use std::collections::{HashMap, HashSet};

use tracer::{
    assembly::{Assembler, CompletedRequest},
    events::{Direction, Event},
};

use crate::{CAPTURE_NAMES, close_record, decode_checked};

/// Follows the input as the assembler must see it, one connection at a
/// time, and checks every span it emits against that:
///
/// - a span comes from the connection of the event that emitted it (for a
///   sweep, from one of the connections the sweep may finish, each one's
///   spans together), and from that connection's bytes since it began (its
///   open, its first record after a close or a sweep forgot it, or the last
///   lost record, after which nothing earlier can be answered);
/// - its request line, `<method> <path>[?…|#…] HTTP/1.<minor>`, was read
///   there, and its status line, `HTTP/1.x <status>`, written there, each
///   after the previous span's: spans of a connection come in the order of
///   their requests, and no two share one request line (so no more spans
///   than request heads fed on a connection);
/// - its times are in order when the input's clock is;
///
/// and it models which connections the assembler holds (`open_connections`).
///
/// Random bytes could break each of these; what they cannot break (a span's
/// method and path appear somewhere in the bytes read, on any socket) is not
/// checked on its own.
#[derive(Default)]
pub struct Witness {
    conns: HashMap<u64, Conn>,
    /// What emitted the spans `spans` takes next.
    source: Source,
    /// Sockets whose connection ended with that event: their bytes are
    /// dropped once its spans are checked.
    ending: Vec<u64>,
    pub(crate) spans: Vec<CompletedRequest>,
}

/// One socket: the model of the assembler's connection on it, and the bytes
/// of that connection that can still give spans.
#[derive(Default)]
struct Conn {
    /// The assembler holds a connection for the socket.
    open: bool,
    /// As the assembler keeps them: the `ConnOpen`'s time, then the last
    /// data record's.
    last_activity_ns: u64,
    /// The data record number expected next (0 for a new connection).
    next_seq: u32,
    recv: Vec<u8>,
    send: Vec<u8>,
    /// Where the next span's request and status lines may start.
    cursor: Cursor,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Cursor {
    recv: usize,
    send: usize,
}

#[derive(Default)]
enum Source {
    /// A task event, or nothing yet: no span.
    #[default]
    Nothing,
    /// An event of this socket.
    Socket(u64),
    /// A sweep, which may finish these connections.
    Sweep(Vec<u64>),
}

impl Conn {
    /// A new connection: nothing before this can give a span any more.
    fn begin(&mut self) {
        self.recv.clear();
        self.send.clear();
        self.cursor = Cursor::default();
    }

    /// Where `span`'s request and status lines end, looking from `cursor`.
    fn matches(&self, cursor: Cursor, span: &CompletedRequest) -> Option<Cursor> {
        Some(Cursor {
            recv: find_request_line(&self.recv, cursor.recv, span)?,
            send: find_status_line(&self.send, cursor.send, span.status)?,
        })
    }
}

impl Witness {
    /// Call before the assembler handles `event`.
    pub fn observe(&mut self, event: &Event<'_>) {
        match event {
            Event::ConnOpen {
                sock, timestamp_ns, ..
            } => {
                // Ends the socket's connection, if any (its spans come now),
                // and starts a new one.
                let conn = self.conns.entry(*sock).or_default();
                conn.open = true;
                conn.last_activity_ns = *timestamp_ns;
                conn.next_seq = 0;
                self.ending.push(*sock);
                self.source = Source::Socket(*sock);
            }
            Event::ConnClose { sock, .. } => {
                if let Some(conn) = self.conns.get_mut(sock) {
                    conn.open = false;
                }
                self.ending.push(*sock);
                self.source = Source::Socket(*sock);
            }
            Event::Data(data) => {
                let conn = self.conns.entry(data.sock).or_default();
                if !conn.open {
                    conn.open = true;
                    conn.next_seq = 0;
                    conn.begin();
                }
                if data.seq != conn.next_seq {
                    // Lost records: what was pending is dropped, unanswered.
                    conn.begin();
                }
                conn.next_seq = data.seq.wrapping_add(1);
                conn.last_activity_ns = data.timestamp_ns;
                match data.direction {
                    Direction::Recv => conn.recv.extend_from_slice(data.payload),
                    Direction::Send => conn.send.extend_from_slice(data.payload),
                }
                self.source = Source::Socket(data.sock);
            }
            // A header value waits for its read: no span comes of it.
            Event::Header(_)
            | Event::TaskFork { .. }
            | Event::TaskExit { .. }
            | Event::ProcessExec { .. }
            | Event::SocketListen { .. } => self.source = Source::Nothing,
        }
    }

    /// Call before the assembler's `sweep` with the same arguments.
    pub fn observe_sweep(&mut self, idle_before_ns: u64, forget_before_ns: u64) {
        let mut finishing = Vec::new();
        for (sock, conn) in &mut self.conns {
            if !conn.open {
                continue;
            }
            if conn.last_activity_ns < forget_before_ns {
                conn.open = false;
                self.ending.push(*sock);
                finishing.push(*sock);
            } else if conn.last_activity_ns < idle_before_ns {
                finishing.push(*sock);
            }
        }
        finishing.sort_unstable();
        self.source = Source::Sweep(finishing);
    }

    /// The connections the assembler should hold.
    pub fn open_connections(&self) -> usize {
        self.conns.values().filter(|conn| conn.open).count()
    }

    /// The sockets of those, in order.
    pub fn open_sockets(&self) -> Vec<u64> {
        let mut socks: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, conn)| conn.open)
            .map(|(sock, _)| *sock)
            .collect();
        socks.sort_unstable();
        socks
    }

    /// Takes the spans the last observed event (or sweep) emitted;
    /// `monotonic` when the input's clock never went back, so that each
    /// span's times are in order.
    pub fn spans(&mut self, done: &mut Vec<CompletedRequest>, monotonic: bool) {
        for span in done.iter() {
            assert!(span.request.minor_version <= 1);
            // Header names are the daemon's own, never bytes of the record.
            assert!(
                span.captured_headers
                    .iter()
                    .all(|(name, _)| CAPTURE_NAMES.contains(&name.as_str())),
                "a captured header of no configured name: {span:?}"
            );
            if monotonic {
                assert!(
                    span.start_ns <= span.first_read_ns && span.first_read_ns <= span.end_ns,
                    "times out of order: {span:?}"
                );
            }
        }
        match std::mem::take(&mut self.source) {
            Source::Nothing => assert!(done.is_empty(), "spans from no connection: {done:?}"),
            Source::Socket(sock) => {
                let conn = self.conns.entry(sock).or_default();
                for span in done.iter() {
                    let Some(next) = conn.matches(conn.cursor, span) else {
                        panic!(
                            "invented span on socket {sock:#x}: {} {} HTTP/1.{} -> {} is not \
                             the next request and status line of its connection ({} bytes read \
                             from {}, {} written from {})",
                            span.request.method,
                            span.request.path,
                            span.request.minor_version,
                            span.status,
                            conn.recv.len(),
                            conn.cursor.recv,
                            conn.send.len(),
                            conn.cursor.send,
                        );
                    };
                    conn.cursor = next;
                }
            }
            Source::Sweep(finishing) => {
                assert!(
                    finishing.len() <= 16,
                    "{} connections finish in one sweep: too many to attribute their spans",
                    finishing.len()
                );
                let mut failed = HashSet::new();
                let Some(assigned) = self.assign(done, 0, &finishing, 0, &mut failed) else {
                    panic!(
                        "invented span in a sweep: {done:?} are not, connection by connection, \
                         the next request and status lines of the connections it may finish \
                         ({finishing:#x?})"
                    );
                };
                for (sock, cursor) in assigned {
                    if let Some(conn) = self.conns.get_mut(&sock) {
                        conn.cursor = cursor;
                    }
                }
            }
        }
        for sock in std::mem::take(&mut self.ending) {
            if let Some(conn) = self.conns.get_mut(&sock) {
                conn.begin();
            }
        }
        self.spans.append(done);
    }

    /// Splits `spans[from..]` into runs, one per connection of `finishing`
    /// not in `used` (a bit mask), each run the next spans of that
    /// connection; the connections' cursors after their run. `failed`
    /// remembers the (from, used) that cannot be split.
    fn assign(
        &self,
        spans: &[CompletedRequest],
        from: usize,
        finishing: &[u64],
        used: u32,
        failed: &mut HashSet<(usize, u32)>,
    ) -> Option<Vec<(u64, Cursor)>> {
        if from == spans.len() {
            return Some(Vec::new());
        }
        if failed.contains(&(from, used)) {
            return None;
        }
        for (bit, sock) in finishing.iter().enumerate() {
            if used & (1 << bit) != 0 {
                continue;
            }
            let Some(conn) = self.conns.get(sock) else {
                continue;
            };
            let mut cursor = conn.cursor;
            for end in from..spans.len() {
                let Some(next) = conn.matches(cursor, &spans[end]) else {
                    break;
                };
                cursor = next;
                if let Some(mut rest) =
                    self.assign(spans, end + 1, finishing, used | (1 << bit), failed)
                {
                    rest.push((*sock, cursor));
                    return Some(rest);
                }
            }
        }
        failed.insert((from, used));
        None
    }

    /// At the end of an input: the assembler holds the connections the
    /// input left open, closing each one finishes all of them, and a drain
    /// after that has nothing left.
    pub fn finish(&mut self, assembler: &mut Assembler, monotonic: bool) {
        assert_eq!(
            assembler.open_connections(),
            self.open_connections(),
            "the assembler holds {} connections, the input left {} open ({:#x?})",
            assembler.open_connections(),
            self.open_connections(),
            self.open_sockets()
        );
        let mut done = Vec::new();
        for sock in self.open_sockets() {
            let record = close_record(sock, 0);
            let event = decode_checked(&record).expect("a close record as the kernel writes it");
            self.observe(&event);
            assembler.handle(&event, &mut done);
            self.spans(&mut done, monotonic);
        }
        assert_eq!(
            assembler.open_connections(),
            0,
            "connections left after closing every socket the input left open"
        );
        assembler.drain(&mut done);
        assert!(
            done.is_empty(),
            "drained spans after every connection was closed: {done:?}"
        );
    }
}

/// The end of the first `<method> <path>[?…|#…] HTTP/1.<minor>` of `span`
/// in `bytes[from..]` (the path is cut at `?` or `#`: `Assembler::new(false)`).
fn find_request_line(bytes: &[u8], from: usize, span: &CompletedRequest) -> Option<usize> {
    let request = &span.request;
    let line = format!("{} {}", request.method, request.path);
    let version = format!(" HTTP/1.{}", request.minor_version);
    let (line, version) = (line.as_bytes(), version.as_bytes());
    let mut at = from;
    while let Some(found) = find(bytes, at, line) {
        let mut end = found + line.len();
        if matches!(bytes.get(end), Some(b'?' | b'#')) {
            // The rest of the target: up to the space before the version.
            end = find(bytes, end, b" ").unwrap_or(bytes.len());
        }
        if bytes[end..].starts_with(version) {
            return Some(end + version.len());
        }
        at = found + 1;
    }
    None
}

/// The end of the first `HTTP/1.<digit> <status>` in `bytes[from..]`.
fn find_status_line(bytes: &[u8], from: usize, status: u16) -> Option<usize> {
    let code = format!(" {status:03}");
    let mut at = from;
    while let Some(found) = find(bytes, at, b"HTTP/1.") {
        let end = found + b"HTTP/1.".len();
        if bytes.get(end).is_some_and(u8::is_ascii_digit)
            && bytes[end + 1..].starts_with(code.as_bytes())
        {
            return Some(end + 1 + code.len());
        }
        at = found + 1;
    }
    None
}

/// Where `needle` first occurs in `haystack[from..]`.
fn find(haystack: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|window| window == needle)
        .map(|at| from + at)
}

/// The targets' assembler: paths cut at `?`, [`CAPTURE_NAMES`] captured.
pub fn capturing_assembler() -> Assembler {
    Assembler::new(false).capturing(
        CAPTURE_NAMES.map(String::from).to_vec(),
        CAPTURE_NAMES.len(),
    )
}

/// Feeds records to an assembler, checking every invariant; returns the spans.
pub fn feed_records<'a>(records: impl IntoIterator<Item = &'a [u8]>) -> usize {
    let mut assembler = capturing_assembler();
    let mut witness = Witness::default();
    let mut done = Vec::new();
    for record in records {
        if let Some(event) = decode_checked(record) {
            witness.observe(&event);
            assembler.handle(&event, &mut done);
            witness.spans(&mut done, false);
        }
    }
    witness.finish(&mut assembler, false);
    witness.spans.len()
}

#[cfg(test)]
mod tests {
    use tracer::http::RequestHead;

    use super::*;
    use crate::{data_record, open_record};
    use tracer_common::{DIRECTION_RECV, DIRECTION_SEND};

    fn span(method: &str, path: &str, status: u16) -> CompletedRequest {
        CompletedRequest {
            tgid: 1,
            side: tracer::events::Side::Server,
            ids: tracer::trace_context::SpanIds::root(),
            response_cut_short: false,
            tls: false,
            request: RequestHead {
                method: method.into(),
                path: path.into(),
                minor_version: 1,
                head_len: 0,
                host: None,
            },
            status,
            start_ns: 0,
            first_read_ns: 0,
            end_ns: 0,
            meta: None,
            response_bytes: 0,
            response_body_bytes: None,
            captured_headers: Vec::new(),
        }
    }

    fn feed(witness: &mut Witness, record: &[u8]) {
        let event = decode_checked(record).expect("a well-formed record");
        witness.observe(&event);
    }

    #[test]
    fn request_lines_match_with_a_cut_query_and_in_order() {
        let bytes = b"xx GET /a?q=1 HTTP/1.1\r\n\r\nGET /a HTTP/1.0\r\n\r\n";
        let first = find_request_line(bytes, 0, &span("GET", "/a", 0)).unwrap();
        assert_eq!(&bytes[..first], b"xx GET /a?q=1 HTTP/1.1");
        // The same line again only once more, and HTTP/1.0 is not 1.1.
        assert_eq!(find_request_line(bytes, first, &span("GET", "/a", 0)), None);
        let mut http10 = span("GET", "/a", 0);
        http10.request.minor_version = 0;
        assert!(find_request_line(bytes, first, &http10).is_some());
        // A method and path without a version are no request line.
        assert_eq!(find_request_line(b"GET /a", 0, &span("GET", "/a", 0)), None);
        assert_eq!(find_status_line(b"HTTP/1.1 2000", 0, 200), Some(12));
        assert_eq!(find_status_line(b"HTTP/1.1 204", 0, 200), None);
        assert_eq!(find_status_line(b" 200 OK", 0, 200), None);
    }

    /// What the old check let through: a span made of one connection's
    /// request and another's response.
    #[test]
    #[should_panic(expected = "invented span")]
    fn a_span_from_another_connections_bytes_fails() {
        let mut witness = Witness::default();
        feed(&mut witness, &open_record(1, 1, 0));
        feed(&mut witness, &open_record(2, 2, 0));
        feed(
            &mut witness,
            &data_record(1, DIRECTION_RECV, 3, 0, 0, b"GET / HTTP/1.1\r\n\r\n"),
        );
        feed(
            &mut witness,
            &data_record(2, DIRECTION_SEND, 4, 0, 0, b"HTTP/1.1 200 OK\r\n\r\n"),
        );
        witness.spans(&mut vec![span("GET", "/", 200)], true);
    }

    #[test]
    #[should_panic(expected = "invented span")]
    fn two_spans_from_one_request_line_fail() {
        let mut witness = Witness::default();
        feed(
            &mut witness,
            &data_record(1, DIRECTION_RECV, 3, 0, 0, b"GET / HTTP/1.1\r\n\r\n"),
        );
        feed(
            &mut witness,
            &data_record(
                1,
                DIRECTION_SEND,
                4,
                1,
                0,
                b"HTTP/1.1 200 OK\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
            ),
        );
        witness.spans(
            &mut vec![span("GET", "/", 200), span("GET", "/", 200)],
            true,
        );
    }

    #[test]
    #[should_panic(expected = "invented span")]
    fn a_span_from_before_a_lost_record_fails() {
        let mut witness = Witness::default();
        feed(
            &mut witness,
            &data_record(1, DIRECTION_RECV, 3, 0, 0, b"GET / HTTP/1.1\r\n\r\n"),
        );
        // Record 1 was lost.
        feed(
            &mut witness,
            &data_record(1, DIRECTION_SEND, 4, 2, 0, b"HTTP/1.1 200 OK\r\n\r\n"),
        );
        witness.spans(&mut vec![span("GET", "/", 200)], true);
    }

    #[test]
    fn sweep_spans_are_split_among_the_connections_it_finishes() {
        let mut witness = Witness::default();
        for sock in [1, 2] {
            feed(
                &mut witness,
                &data_record(sock, DIRECTION_RECV, 3, 0, 0, b"GET /x HTTP/1.1\r\n\r\n"),
            );
            feed(
                &mut witness,
                &data_record(sock, DIRECTION_SEND, 4, 1, 0, b"HTTP/1.1 200 OK\r\n\r\n"),
            );
        }
        // One span of each: the first run must not take both.
        witness.observe_sweep(10, 0);
        witness.spans(
            &mut vec![span("GET", "/x", 200), span("GET", "/x", 200)],
            true,
        );
        assert_eq!(witness.open_connections(), 2);
        witness.observe_sweep(10, 10);
        witness.spans(&mut Vec::new(), true);
        assert_eq!(witness.open_connections(), 0);
    }
}
