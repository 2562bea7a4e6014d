//! Turns the event stream into completed requests, one connection at a time.
//!
//! A request starts at the kernel's handshake for the first request of a
//! connection (so accept-queue time counts, as the client saw it) and at its
//! first byte read for later ones; it ends at the last response byte written.
//! A response is complete when its declared length has been written, or, for
//! chunked and close-delimited bodies, when the next request arrives, the
//! connection ends, or it has been idle for a while. Requests that never got
//! a response, and bytes that are not HTTP, give no span: they are counted.
//!
//! `--capture-header` values come just before the data record of the read
//! they were found in, and go to the request whose head that read holds
//! (the first one, when it holds several pipelined heads).
//!
//! A connection's traced process is its server or its client (the kernel
//! says which): a server reads requests and writes responses, a client
//! writes requests (its calls, from their first byte written to the last
//! response byte read) and reads responses. Both are assembled alike; their
//! place in a trace comes from [`TraceContext`].
use std::{collections::VecDeque, rc::Rc, sync::Arc};

use foldhash::HashMap;

use tracer_common::ConnMeta;

use crate::{
    events::{Data, Direction, Event, Header, Side},
    http::{self, Parsed, RequestHead, ResponseHead},
    inflight::{InFlight, InFlightKey, InFlightLedger},
    trace_context::{CallKey, SpanContext, SpanIds, TraceContext, TraceParent},
};

/// A request head that grows past this without ending is not HTTP we follow.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Captured header values one request keeps (the kernel sends at most 32
/// per read, a head can come in several reads); more are counted lost.
const MAX_HEADER_VALUES: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompletedRequest {
    pub tgid: u32,
    /// A request the process served, or a call it made.
    pub side: Side,
    pub ids: SpanIds,
    pub request: RequestHead,
    pub status: u16,
    /// Monotonic nanoseconds, as the kernel stamps them. A call starts at
    /// its first byte written (`first_read_ns` is the same) and ends at
    /// its last response byte read.
    pub start_ns: u64,
    pub first_read_ns: u64,
    pub end_ns: u64,
    /// Addresses, when the tracer saw the connection being established.
    pub meta: Option<ConnMeta>,
    /// Over TLS (HTTPS): the kernel saw its plaintext in OpenSSL.
    pub tls: bool,
    pub response_bytes: u64,
    /// Of those, the body's (`http.server.response.body.size`), when known.
    pub response_body_bytes: Option<u64>,
    /// The connection ended before the response's declared length.
    pub response_cut_short: bool,
    /// The request headers named by `--capture-header`, in the order they
    /// came: lowercase name and value, as the kernel copied them.
    pub captured_headers: Vec<(String, String)>,
}

/// What assembly could not turn into spans, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AssemblyCounters {
    pub unparseable_requests: u64,
    pub unparseable_responses: u64,
    pub responses_without_request: u64,
    pub requests_without_response: u64,
    /// Requests dropped because a later record of their connection was lost.
    pub requests_lost_to_gaps: u64,
    /// Captured header values given to no request: their read's record was
    /// lost or carried no bytes, their name is unknown, or their request had
    /// [`MAX_HEADER_VALUES`] already. (Values of a request that is itself
    /// dropped go with it, counted as that request.)
    pub header_values_lost: u64,
    /// Captured header values the kernel cut (and sent so).
    pub header_values_truncated: u64,
    /// Incoming `traceparent` headers that were malformed, all-zero or
    /// repeated: their requests started a trace of their own.
    pub traceparent_invalid: u64,
}

#[derive(Default)]
pub struct Assembler {
    connections: HashMap<u64, Connection>,
    keep_query: bool,
    names: CaptureNames,
    pub counters: AssemblyCounters,
    in_flight: InFlightLedger,
    trace: TraceContext,
}

/// The names of the captured header values, by the index the kernel's
/// records carry: first those the user asked for (`--capture-header`, the
/// spans' attributes), then the trace context's if the user did not.
#[derive(Default)]
struct CaptureNames {
    names: Vec<String>,
    exported: usize,
    traceparent: Option<usize>,
    tracestate: Option<usize>,
}

/// What every connection's assembly shares.
struct Shared<'a> {
    keep_query: bool,
    names: &'a CaptureNames,
    counters: &'a mut AssemblyCounters,
    trace: &'a mut TraceContext,
}

struct Connection {
    tgid: u32,
    /// Until the kernel says, or the first message shows.
    side: Option<Side>,
    established_ns: Option<u64>,
    meta: Option<ConnMeta>,
    /// HTTPS: as the kernel's opening of the connection said.
    tls: bool,
    /// Request bytes (read by a server, written by a client) that do not
    /// yet form a complete head.
    inbound: Vec<u8>,
    inbound_first_ns: u64,
    exchanges: VecDeque<Exchange>,
    requests_seen: u64,
    last_activity_ns: u64,
    /// The data record number expected next; another one means records
    /// were lost in between.
    next_seq: u32,
    in_flight: InFlightLedger,
    /// Captured header values waiting for the data record of their read.
    pending_headers: Vec<PendingHeader>,
    /// Captured header values of the head being gathered in `inbound`.
    head_headers: Vec<CapturedValue>,
}

struct PendingHeader {
    seq: u32,
    value: CapturedValue,
}

struct CapturedValue {
    /// Index in [`CaptureNames::names`].
    name: usize,
    value: String,
    truncated: bool,
}

struct Exchange {
    request: RequestHead,
    start_ns: u64,
    first_read_ns: u64,
    outbound: Vec<u8>,
    response: Option<ResponseHead>,
    response_bytes: u64,
    last_write_ns: u64,
    /// Counts a served request in flight until the exchange goes, however
    /// it goes.
    _in_flight: Option<InFlight>,
    captured_headers: Vec<(String, String)>,
    context: Rc<SpanContext>,
}

impl Exchange {
    fn is_complete(&self) -> bool {
        self.response
            .and_then(|head| head.total_len())
            .is_some_and(|total| self.response_bytes >= total)
    }
}

impl Assembler {
    pub fn new(keep_query: bool) -> Self {
        Self {
            keep_query,
            ..Self::default()
        }
    }

    /// Gives captured header values the names `names`, by index: the
    /// first `exported` are the spans' attributes, the others serve the
    /// trace context only (`traceparent`, `tracestate`).
    pub fn capturing(mut self, names: Vec<String>, exported: usize) -> Self {
        let index = |wanted: &str| names.iter().position(|name| name == wanted);
        self.names = CaptureNames {
            traceparent: index("traceparent"),
            tracestate: index("tracestate"),
            exported: exported.min(names.len()),
            names,
        };
        self
    }

    pub fn open_connections(&self) -> usize {
        self.connections.len()
    }

    /// Requests in flight now, if that changed since `seen` (updated).
    pub fn in_flight_since(&self, seen: &mut u64) -> Option<Vec<(InFlightKey, u32)>> {
        self.in_flight.changed_since(seen)
    }

    /// Feeds one event; completed requests are pushed to `done`.
    pub fn handle(&mut self, event: &Event<'_>, done: &mut Vec<CompletedRequest>) {
        match event {
            Event::ConnOpen {
                tgid,
                sock,
                timestamp_ns,
                established_ns,
                meta,
                side,
                tls,
            } => {
                if let Some(old) = self.connections.remove(sock) {
                    self.finish_connection(old, done);
                }
                // Active from its open: a sweep before its first read must
                // not forget it (and its addresses and handshake time).
                let connection = Connection::new(
                    *tgid,
                    *side,
                    *established_ns,
                    Some(*meta).filter(|m| m.family != 0),
                    *timestamp_ns,
                    &self.in_flight,
                );
                let connection = Connection {
                    tls: *tls,
                    ..connection
                };
                self.connections.insert(*sock, connection);
            }
            Event::ConnClose { sock, .. } => {
                if let Some(connection) = self.connections.remove(sock) {
                    self.finish_connection(connection, done);
                }
            }
            Event::Data(data) => self.handle_data(data, done),
            Event::Header(header) => self.handle_header(header),
            Event::TaskFork { .. }
            | Event::TaskExit { .. }
            | Event::ProcessExec { .. }
            | Event::SocketListen { .. } => {}
        }
    }

    fn handle_data(&mut self, data: &Data<'_>, done: &mut Vec<CompletedRequest>) {
        let in_flight = &self.in_flight;
        let connection = self.connections.entry(data.sock).or_insert_with(|| {
            Connection::new(data.tgid, None, None, None, data.timestamp_ns, in_flight)
        });
        connection.last_activity_ns = data.timestamp_ns;
        if data.seq != connection.next_seq {
            connection.forget_pending(&mut self.counters);
        }
        connection.next_seq = data.seq.wrapping_add(1);
        // Without the kernel's word (its opening was lost), the first
        // message shows which end this is: a server reads first.
        let side = match connection.side {
            Some(side) => side,
            None if data.payload.is_empty() => Side::Server,
            None => *connection.side.insert(match data.direction {
                Direction::Recv => Side::Server,
                Direction::Send => Side::Client,
            }),
        };
        let is_request = data.direction == side.request_direction();
        // The values found in this read; any other pending ones lost theirs.
        let (headers, lost): (Vec<_>, Vec<_>) = std::mem::take(&mut connection.pending_headers)
            .into_iter()
            .partition(|header| header.seq == data.seq && is_request && side == Side::Server);
        self.counters.header_values_lost += lost.len() as u64;
        let mut shared = Shared {
            keep_query: self.keep_query,
            names: &self.names,
            counters: &mut self.counters,
            trace: &mut self.trace,
        };
        if is_request {
            let headers = headers.into_iter().map(|h| h.value).collect();
            connection.on_request_bytes(data, headers, &mut shared, done);
        } else {
            connection.on_response_bytes(data, shared.counters, done);
        }
    }

    fn handle_header(&mut self, header: &Header<'_>) {
        if header.name >= self.names.names.len() {
            self.counters.header_values_lost += 1;
            return;
        }
        // The kernel sends a connection's opening before its first values:
        // without one (lost, or the connection was forgotten) no request
        // of this read can be followed, so its values are lost here.
        let Some(connection) = self.connections.get_mut(&header.sock) else {
            self.counters.header_values_lost += 1;
            return;
        };
        if connection.pending_headers.len() >= MAX_HEADER_VALUES {
            self.counters.header_values_lost += 1;
            return;
        }
        self.counters.header_values_truncated += u64::from(header.truncated);
        connection.pending_headers.push(PendingHeader {
            seq: header.seq,
            value: CapturedValue {
                name: header.name,
                value: String::from_utf8_lossy(header.value).into_owned(),
                truncated: header.truncated,
            },
        });
    }

    /// Finishes responses of unknown length idle since `idle_before_ns`, and
    /// forgets connections silent since `forget_before_ns` (their close was lost).
    pub fn sweep(
        &mut self,
        idle_before_ns: u64,
        forget_before_ns: u64,
        done: &mut Vec<CompletedRequest>,
    ) {
        let stale: Vec<u64> = self
            .connections
            .iter()
            .filter(|(_, connection)| connection.last_activity_ns < forget_before_ns)
            .map(|(sock, _)| *sock)
            .collect();
        for sock in stale {
            if let Some(connection) = self.connections.remove(&sock) {
                self.finish_connection(connection, done);
            }
        }
        for connection in self.connections.values_mut() {
            if connection.last_activity_ns < idle_before_ns {
                connection.finish_answered(done);
            }
        }
        self.trace.sweep();
    }

    /// Finishes every connection, at shutdown.
    pub fn drain(&mut self, done: &mut Vec<CompletedRequest>) {
        let connections: Vec<Connection> = self.connections.drain().map(|(_, c)| c).collect();
        for connection in connections {
            self.finish_connection(connection, done);
        }
    }

    fn finish_connection(&mut self, mut connection: Connection, done: &mut Vec<CompletedRequest>) {
        connection.finish_answered(done);
        // Requests never answered, and a request cut off before its head ended.
        let unanswered = connection.exchanges.len() + usize::from(!connection.inbound.is_empty());
        self.counters.requests_without_response += unanswered as u64;
    }
}

impl Connection {
    fn new(
        tgid: u32,
        side: Option<Side>,
        established_ns: Option<u64>,
        meta: Option<ConnMeta>,
        now_ns: u64,
        in_flight: &InFlightLedger,
    ) -> Self {
        Self {
            tgid,
            side,
            established_ns,
            meta,
            tls: false,
            inbound: Vec::new(),
            inbound_first_ns: 0,
            exchanges: VecDeque::new(),
            requests_seen: 0,
            last_activity_ns: now_ns,
            next_seq: 0,
            in_flight: in_flight.clone(),
            pending_headers: Vec::new(),
            head_headers: Vec::new(),
        }
    }

    /// After lost records nothing pending can be trusted: a response could
    /// be paired with the wrong request, or end at the wrong time.
    fn forget_pending(&mut self, counters: &mut AssemblyCounters) {
        let lost = self.exchanges.len() + usize::from(!self.inbound.is_empty());
        counters.requests_lost_to_gaps += lost as u64;
        self.exchanges.clear();
        self.inbound.clear();
        self.head_headers.clear();
    }

    /// Request bytes, with the header values found in them.
    fn on_request_bytes(
        &mut self,
        data: &Data<'_>,
        headers: Vec<CapturedValue>,
        shared: &mut Shared<'_>,
        done: &mut Vec<CompletedRequest>,
    ) {
        if data.payload.is_empty() {
            shared.counters.header_values_lost += headers.len() as u64;
            return;
        }
        let room = MAX_HEADER_VALUES.saturating_sub(self.head_headers.len());
        shared.counters.header_values_lost += headers.len().saturating_sub(room) as u64;
        self.head_headers.extend(headers.into_iter().take(room));
        // A new request ends a response of unknown length still being written.
        self.finish_answered(done);
        if self.inbound.is_empty() {
            self.inbound_first_ns = data.timestamp_ns;
        }
        self.inbound.extend_from_slice(data.payload);
        let cut_short = (data.bytes as usize) > data.payload.len();
        // Pipelined requests: one read may hold several heads.
        while !self.inbound.is_empty() {
            let (head, consumed) = match http::parse_request(&self.inbound, shared.keep_query) {
                Parsed::Complete(head) => {
                    let consumed = head.head_len;
                    (Some(head), consumed)
                }
                Parsed::Partial if cut_short => (
                    http::parse_request_line(&self.inbound, shared.keep_query),
                    self.inbound.len(),
                ),
                Parsed::Partial if self.inbound.len() <= MAX_HEAD_BYTES => return,
                Parsed::Partial | Parsed::Invalid => (None, self.inbound.len()),
            };
            self.inbound.drain(..consumed.min(self.inbound.len()));
            let first_read_ns = self.inbound_first_ns;
            self.inbound_first_ns = data.timestamp_ns;
            match head {
                Some(request) => self.start_exchange(request, first_read_ns, data.tid, shared),
                None => {
                    shared.counters.unparseable_requests += 1;
                    self.head_headers.clear();
                }
            }
        }
    }

    /// A request whose head is complete, the last of it moved by `tid`.
    fn start_exchange(
        &mut self,
        request: RequestHead,
        first_read_ns: u64,
        tid: u32,
        shared: &mut Shared<'_>,
    ) {
        let start_ns = match self.established_ns {
            Some(established) if self.requests_seen == 0 && established <= first_read_ns => {
                established
            }
            _ => first_read_ns,
        };
        self.requests_seen += 1;
        let values = std::mem::take(&mut self.head_headers);
        let (context, in_flight) = match self.side {
            Some(Side::Client) => {
                let key = self.meta.as_ref().and_then(CallKey::of_call);
                (shared.trace.call(tid, key), None)
            }
            Some(Side::Server) | None => {
                let key = self.meta.as_ref().and_then(CallKey::of_served);
                let incoming = incoming_context(&values, shared);
                let in_flight = self.in_flight.enter(InFlightKey {
                    tgid: self.tgid,
                    server_port: self.meta.map_or(0, |meta| meta.local_port),
                    method: http::method_attribute(&request.method),
                });
                (shared.trace.serve(tid, incoming, key), Some(in_flight))
            }
        };
        let names = shared.names;
        let captured_headers = values
            .into_iter()
            .filter(|value| value.name < names.exported)
            .map(|value| (names.names[value.name].clone(), value.value))
            .collect();
        self.exchanges.push_back(Exchange {
            request,
            start_ns,
            first_read_ns,
            outbound: Vec::new(),
            response: None,
            response_bytes: 0,
            last_write_ns: first_read_ns,
            _in_flight: in_flight,
            captured_headers,
            context,
        });
    }

    fn on_response_bytes(
        &mut self,
        data: &Data<'_>,
        counters: &mut AssemblyCounters,
        done: &mut Vec<CompletedRequest>,
    ) {
        let Some(exchange) = self.exchanges.iter_mut().find(|e| !e.is_complete()) else {
            counters.responses_without_request += 1;
            return;
        };
        if exchange.response.is_none() {
            exchange.context.stop_serving();
            exchange.outbound.extend_from_slice(data.payload);
            let cut_short = (data.bytes as usize) > data.payload.len();
            let parsed = match http::parse_response(&exchange.outbound, &exchange.request.method) {
                // A head longer than the capture: its status line is known,
                // where its body ends is not.
                Parsed::Partial if cut_short => http::parse_response_line(&exchange.outbound)
                    .map_or(Parsed::Invalid, Parsed::Complete),
                parsed => parsed,
            };
            match parsed {
                Parsed::Complete(head) if head.status < 200 => {
                    // 100 Continue and friends: the real response follows.
                    exchange
                        .outbound
                        .drain(..head.head_len.min(exchange.outbound.len()));
                    return;
                }
                Parsed::Complete(head) => {
                    exchange.response = Some(head);
                    exchange.outbound = Vec::new();
                }
                Parsed::Partial if exchange.outbound.len() <= MAX_HEAD_BYTES => {}
                Parsed::Partial | Parsed::Invalid => {
                    counters.unparseable_responses += 1;
                    exchange.outbound.clear();
                    return;
                }
            }
        }
        exchange.response_bytes += u64::from(data.bytes);
        exchange.last_write_ns = data.timestamp_ns;
        self.finish_complete(done);
    }

    /// Emits, in order, the leading exchanges whose response is complete.
    fn finish_complete(&mut self, done: &mut Vec<CompletedRequest>) {
        while self.exchanges.front().is_some_and(Exchange::is_complete) {
            self.emit_front(done);
        }
    }

    /// Emits, in order, the leading exchanges that have any response.
    fn finish_answered(&mut self, done: &mut Vec<CompletedRequest>) {
        while self.exchanges.front().is_some_and(|e| e.response.is_some()) {
            self.emit_front(done);
        }
    }

    fn emit_front(&mut self, done: &mut Vec<CompletedRequest>) {
        let Some(exchange) = self.exchanges.pop_front() else {
            return;
        };
        let Some(response) = exchange.response else {
            return;
        };
        done.push(CompletedRequest {
            tgid: self.tgid,
            side: self.side.unwrap_or(Side::Server),
            ids: exchange.context.ids(),
            request: exchange.request,
            status: response.status,
            start_ns: exchange.start_ns,
            first_read_ns: exchange.first_read_ns,
            end_ns: exchange.last_write_ns,
            meta: self.meta,
            tls: self.tls,
            response_bytes: exchange.response_bytes,
            response_body_bytes: response.body_len(exchange.response_bytes),
            response_cut_short: response
                .total_len()
                .is_some_and(|total| exchange.response_bytes < total),
            captured_headers: exchange.captured_headers,
        });
    }
}

/// The trace context a request's head came with: one valid `traceparent`
/// (and its `tracestate`, if whole), or nothing, counted when it was there
/// but unusable.
fn incoming_context(
    values: &[CapturedValue],
    shared: &mut Shared<'_>,
) -> Option<(TraceParent, Option<Arc<str>>)> {
    let named = |index: Option<usize>| {
        values
            .iter()
            .filter(move |value| index.is_some_and(|index| value.name == index))
    };
    let mut parents = named(shared.names.traceparent);
    let first = parents.next()?;
    let parent = match (TraceParent::parse(&first.value), parents.next()) {
        (Some(parent), None) if !first.truncated => parent,
        _ => {
            shared.counters.traceparent_invalid += 1;
            return None;
        }
    };
    // A cut or repeated list could lose or reorder its vendors' entries.
    let mut states = named(shared.names.tracestate);
    let state = match (states.next(), states.next()) {
        (Some(state), None) if !state.truncated && !state.value.is_empty() => {
            Some(Arc::from(state.value.as_str()))
        }
        _ => None,
    };
    Some((parent, state))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SOCK: u64 = 0xffff_8880_0000_1000;

    /// An assembler fed one connection's records, numbered as the kernel does.
    struct Feed {
        assembler: Assembler,
        seq: u32,
    }

    impl Feed {
        fn new(keep_query: bool) -> Self {
            Self {
                assembler: Assembler::new(keep_query),
                seq: 0,
            }
        }

        /// A record the kernel numbered but could not deliver.
        fn lose_record(&mut self) {
            self.seq += 1;
        }
    }

    impl std::ops::Deref for Feed {
        type Target = Assembler;
        fn deref(&self) -> &Assembler {
            &self.assembler
        }
    }

    impl std::ops::DerefMut for Feed {
        fn deref_mut(&mut self) -> &mut Assembler {
            &mut self.assembler
        }
    }

    fn open(assembler: &mut Feed, established_ns: Option<u64>) {
        open_as(assembler, established_ns, false);
    }

    /// A server connection opening, over TLS when `tls`.
    fn open_as(assembler: &mut Feed, established_ns: Option<u64>, tls: bool) {
        let meta = ConnMeta {
            family: tracer_common::AF_INET,
            local_port: 8000,
            peer_port: 50000,
            _pad: 0,
            peer_addr: [0; 16],
        };
        let event = Event::ConnOpen {
            tgid: 9,
            sock: SOCK,
            timestamp_ns: established_ns.unwrap_or(0),
            established_ns,
            meta,
            side: Some(Side::Server),
            tls,
        };
        assembler.seq = 0;
        assembler.handle(&event, &mut Vec::new());
    }

    /// Feeds one read or write; `captured` bytes of `bytes` reach the tracer.
    fn io(
        assembler: &mut Feed,
        direction: Direction,
        at: u64,
        bytes: &[u8],
        captured: usize,
    ) -> Vec<CompletedRequest> {
        let mut done = Vec::new();
        let data = Data {
            tgid: 9,
            tid: 9,
            timestamp_ns: at,
            sock: SOCK,
            direction,
            bytes: bytes.len() as u32,
            payload: &bytes[..captured.min(bytes.len())],
            seq: assembler.seq,
        };
        assembler.seq += 1;
        assembler.handle(&Event::Data(data), &mut done);
        done
    }

    fn request(assembler: &mut Feed, at: u64, bytes: &[u8]) -> Vec<CompletedRequest> {
        io(assembler, Direction::Recv, at, bytes, bytes.len())
    }

    fn response_head(assembler: &mut Feed, at: u64, head: &[u8]) -> Vec<CompletedRequest> {
        io(assembler, Direction::Send, at, head, head.len())
    }

    fn body(assembler: &mut Feed, at: u64, len: usize) -> Vec<CompletedRequest> {
        io(assembler, Direction::Send, at, &vec![b'x'; len], 0)
    }

    /// A `--capture-header` value found in the read that comes next.
    fn header(assembler: &mut Feed, name: usize, value: &str, truncated: bool) {
        let header = Header {
            tgid: 9,
            timestamp_ns: 0,
            sock: SOCK,
            seq: assembler.seq,
            name,
            value: value.as_bytes(),
            truncated,
        };
        assembler.handle(&Event::Header(header), &mut Vec::new());
    }

    /// A feed capturing `x-tenant` (index 0) and `user-agent` (1).
    fn capturing() -> Feed {
        let mut feed = Feed::new(false);
        feed.assembler =
            Assembler::new(false).capturing(vec!["x-tenant".into(), "user-agent".into()], 2);
        feed
    }

    fn captured(done: &[CompletedRequest]) -> Vec<Vec<(&str, &str)>> {
        done.iter()
            .map(|d| {
                d.captured_headers
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.as_str()))
                    .collect()
            })
            .collect()
    }

    fn close(assembler: &mut Feed) -> Vec<CompletedRequest> {
        let mut done = Vec::new();
        assembler.handle(
            &Event::ConnClose {
                sock: SOCK,
                timestamp_ns: 0,
            },
            &mut done,
        );
        done
    }

    #[test]
    fn one_request_from_handshake_to_last_byte() {
        let mut assembler = Feed::new(false);
        open(&mut assembler, Some(100));
        assert!(
            request(
                &mut assembler,
                200,
                b"GET /work?token=1 HTTP/1.1\r\nHost: a\r\n\r\n"
            )
            .is_empty()
        );
        assert!(
            response_head(
                &mut assembler,
                300,
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
            )
            .is_empty()
        );
        let done = body(&mut assembler, 400, 10);
        assert_eq!(done.len(), 1);
        let span = &done[0];
        assert_eq!(
            (span.request.method.as_str(), span.request.path.as_str()),
            ("GET", "/work")
        );
        assert_eq!(
            (span.start_ns, span.first_read_ns, span.end_ns),
            (100, 200, 400)
        );
        assert_eq!(span.status, 200);
        assert!(close(&mut assembler).is_empty());
        assert_eq!(assembler.counters, AssemblyCounters::default());
    }

    #[test]
    fn requests_of_a_tls_connection_say_so() {
        let mut assembler = Feed::new(false);
        open_as(&mut assembler, Some(5), true);
        request(
            &mut assembler,
            10,
            b"GET /secure HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        let done = response_head(
            &mut assembler,
            20,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(done.len(), 1);
        assert!(done[0].tls);
        open(&mut assembler, Some(30));
        request(
            &mut assembler,
            40,
            b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        let done = response_head(
            &mut assembler,
            50,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(!done[0].tls, "a new connection on the same socket is plain");
    }

    #[test]
    fn request_line_split_across_reads() {
        let mut assembler = Feed::new(false);
        open(&mut assembler, None);
        request(&mut assembler, 10, b"GE");
        request(&mut assembler, 20, b"T /split HT");
        request(&mut assembler, 30, b"TP/1.0\r\n\r\n");
        let done = response_head(&mut assembler, 40, b"HTTP/1.0 204 No Content\r\n\r\n");
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].request.path, "/split");
        assert_eq!(done[0].request.minor_version, 0);
        assert_eq!((done[0].start_ns, done[0].end_ns), (10, 40));
    }

    #[test]
    fn pipelined_requests_each_get_a_span() {
        let mut assembler = Feed::new(false);
        open(&mut assembler, Some(5));
        // Two whole heads and the start of a third in one read, the rest later.
        request(
            &mut assembler,
            10,
            b"GET /a HTTP/1.1\r\n\r\nHEAD /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HT",
        );
        request(&mut assembler, 20, b"TP/1.1\r\n\r\n");
        let mut done = Vec::new();
        for at in [30, 40, 50] {
            done.extend(response_head(
                &mut assembler,
                at,
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            ));
        }
        let spans: Vec<(&str, &str, u64, u64)> = done
            .iter()
            .map(|d| {
                let r = &d.request;
                (
                    r.method.as_str(),
                    r.path.as_str(),
                    d.first_read_ns,
                    d.end_ns,
                )
            })
            .collect();
        assert_eq!(
            spans,
            [
                ("GET", "/a", 10, 30),
                ("HEAD", "/b", 10, 40),
                ("GET", "/c", 10, 50)
            ]
        );
        assert_eq!(assembler.counters, AssemblyCounters::default());
    }

    #[test]
    fn pipelined_head_after_a_cut_body_is_not_invented() {
        let mut assembler = Feed::new(false);
        open(&mut assembler, None);
        // The kernel keeps the head and drops the body behind it.
        let read = b"POST /p HTTP/1.1\r\nContent-Length: 4\r\n\r\nbodyGET /q HTTP/1.1\r\n\r\n";
        let head_len = read.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        io(&mut assembler, Direction::Recv, 10, read, head_len);
        let done = response_head(
            &mut assembler,
            20,
            b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].request.path, "/p");
        assert_eq!(assembler.counters, AssemblyCounters::default());
    }

    #[test]
    fn a_lost_record_drops_what_it_touched_and_pairs_nothing_wrongly() {
        let mut assembler = Feed::new(false);
        open(&mut assembler, None);
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        request(&mut assembler, 10, b"GET /a HTTP/1.1\r\n\r\n");
        assembler.lose_record(); // the response to /a
        request(&mut assembler, 30, b"GET /b HTTP/1.1\r\n\r\n");
        let done = response_head(&mut assembler, 40, ok);
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].request.path.as_str(), done[0].end_ns), ("/b", 40));
        assert_eq!(assembler.counters.requests_lost_to_gaps, 1);
        assert!(close(&mut assembler).is_empty());
    }

    #[test]
    fn keep_alive_requests_start_at_their_first_read() {
        let mut assembler = Feed::new(false);
        open(&mut assembler, Some(5));
        let mut done = Vec::new();
        for (i, path) in ["/a", "/b", "/c"].iter().enumerate() {
            let t = 100 * (i as u64 + 1);
            request(
                &mut assembler,
                t,
                format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes(),
            );
            done.extend(response_head(
                &mut assembler,
                t + 50,
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            ));
        }
        let paths: Vec<&str> = done.iter().map(|d| d.request.path.as_str()).collect();
        assert_eq!(paths, ["/a", "/b", "/c"]);
        assert_eq!(
            done[0].start_ns, 5,
            "the first request waited from the handshake"
        );
        assert_eq!(done[1].start_ns, 200);
    }

    #[test]
    fn response_of_unknown_length_ends_with_the_connection() {
        let mut assembler = Feed::new(false);
        open(&mut assembler, None);
        request(&mut assembler, 1, b"GET /stream HTTP/1.1\r\n\r\n");
        response_head(
            &mut assembler,
            2,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        body(&mut assembler, 3, 100);
        body(&mut assembler, 7, 5);
        let done = close(&mut assembler);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].end_ns, 7);
    }

    #[test]
    fn idle_unknown_length_response_is_finished_by_sweep() {
        let mut assembler = Feed::new(false);
        open(&mut assembler, None);
        request(&mut assembler, 1, b"GET / HTTP/1.0\r\n\r\n");
        response_head(&mut assembler, 2, b"HTTP/1.0 200 OK\r\n\r\n");
        let mut done = Vec::new();
        assembler.sweep(1, 0, &mut done);
        assert!(done.is_empty(), "not idle yet");
        assembler.sweep(10, 0, &mut done);
        assert_eq!(done.len(), 1);
        assert_eq!(assembler.open_connections(), 1);
        assembler.sweep(10, 10, &mut done);
        assert_eq!(assembler.open_connections(), 0);
    }

    /// A connection accepted but not yet read (a slow client) is as fresh
    /// as its open: a sweep in between keeps it, with its addresses and
    /// handshake time.
    #[test]
    fn a_sweep_between_open_and_first_read_keeps_the_connection() {
        let mut assembler = Feed::new(false);
        open(&mut assembler, Some(1_000));
        let mut done = Vec::new();
        assembler.sweep(1_000, 500, &mut done);
        assert_eq!(assembler.open_connections(), 1);
        request(&mut assembler, 2_000, b"GET / HTTP/1.1\r\n\r\n");
        let done = response_head(&mut assembler, 3_000, b"HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(done.len(), 1, "a 204 is complete at its head");
        assert!(done[0].meta.is_some(), "the addresses survived the sweep");
        assert_eq!(done[0].start_ns, 1_000, "the span starts at the handshake");
    }

    #[test]
    fn no_span_without_a_response() {
        let mut assembler = Feed::new(false);
        open(&mut assembler, None);
        request(
            &mut assembler,
            1,
            b"POST /upload HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
        );
        assert!(close(&mut assembler).is_empty());
        assert_eq!(assembler.counters.requests_without_response, 1);
    }

    #[test]
    fn garbage_is_counted_not_traced() {
        let mut assembler = Feed::new(false);
        open(&mut assembler, None);
        request(&mut assembler, 1, b"GET /\x00\x01 HTTP/9\r\n\r\n");
        assert_eq!(assembler.counters.unparseable_requests, 1);
        response_head(&mut assembler, 2, b"HTTP/1.1 400 Bad Request\r\n\r\n");
        assert_eq!(assembler.counters.responses_without_request, 1);
        assert!(close(&mut assembler).is_empty());
    }

    #[test]
    fn a_head_cut_by_the_capture_still_gives_its_request_line() {
        let mut assembler = Feed::new(false);
        open(&mut assembler, None);
        let mut head = b"GET /big HTTP/1.1\r\nX-Pad: ".to_vec();
        head.extend(vec![b'a'; 9000]);
        head.extend(b"\r\n\r\n");
        io(
            &mut assembler,
            Direction::Recv,
            1,
            &head,
            tracer_common::CAPTURE_LEN,
        );
        let done = response_head(
            &mut assembler,
            2,
            b"HTTP/1.1 431 Too Large\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].request.path, "/big");
        assert_eq!(done[0].status, 431);
    }

    #[test]
    fn a_response_head_cut_by_the_capture_gives_its_status() {
        let mut assembler = Feed::new(false);
        open(&mut assembler, None);
        request(&mut assembler, 1, b"GET /cookies HTTP/1.1\r\n\r\n");
        let mut head = b"HTTP/1.1 302 Found\r\nSet-Cookie: ".to_vec();
        head.extend(vec![b'c'; 9000]);
        head.extend(b"\r\nContent-Length: 0\r\n\r\n");
        let cut = tracer_common::CAPTURE_LEN;
        io(&mut assembler, Direction::Send, 2, &head, cut);
        body(&mut assembler, 5, 100);
        let done = close(&mut assembler);
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].status, done[0].end_ns), (302, 5));
        assert_eq!(assembler.counters.unparseable_responses, 0);

        // A cut head whose status line is not even whole is counted.
        open(&mut assembler, None);
        request(&mut assembler, 6, b"GET / HTTP/1.1\r\n\r\n");
        io(&mut assembler, Direction::Send, 7, &head, 10);
        assert!(close(&mut assembler).is_empty());
        assert_eq!(assembler.counters.unparseable_responses, 1);
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn captured_headers_go_to_the_request_of_their_read() {
        let mut assembler = capturing();
        open(&mut assembler, None);
        // A head longer than the capture: only its request line reaches
        // the daemon, the values come apart.
        let mut head = b"GET /a HTTP/1.1\r\nX-Pad: ".to_vec();
        head.extend(vec![b'p'; 6000]);
        head.extend(b"\r\nX-Tenant: acme\r\nUser-Agent: curl/8\r\nX-Tenant: again\r\n\r\n");
        header(&mut assembler, 0, "acme", false);
        header(&mut assembler, 1, "curl/8", false);
        header(&mut assembler, 0, "again", false);
        io(
            &mut assembler,
            Direction::Recv,
            1,
            &head,
            tracer_common::CAPTURE_LEN,
        );
        let mut done = response_head(&mut assembler, 2, OK);
        // The next request on the connection has none.
        request(&mut assembler, 3, b"GET /b HTTP/1.1\r\n\r\n");
        done.extend(response_head(&mut assembler, 4, OK));
        assert_eq!(
            captured(&done),
            [
                vec![
                    ("x-tenant", "acme"),
                    ("user-agent", "curl/8"),
                    ("x-tenant", "again")
                ],
                vec![]
            ]
        );
        assert_eq!(assembler.counters, AssemblyCounters::default());
    }

    #[test]
    fn a_head_in_several_reads_keeps_the_values_of_each() {
        let mut assembler = capturing();
        open(&mut assembler, None);
        header(&mut assembler, 0, "acme", false);
        request(&mut assembler, 1, b"GET /a HTTP/1.1\r\nX-Tenant: acme\r\n");
        header(&mut assembler, 1, "curl", true);
        request(&mut assembler, 2, b"User-Agent: curl\r\n\r\n");
        let done = response_head(&mut assembler, 3, OK);
        assert_eq!(
            captured(&done),
            [vec![("x-tenant", "acme"), ("user-agent", "curl")]]
        );
        assert_eq!(assembler.counters.header_values_truncated, 1);
    }

    #[test]
    fn pipelined_heads_in_one_read_give_the_values_to_the_first() {
        let mut assembler = capturing();
        open(&mut assembler, None);
        header(&mut assembler, 0, "first", false);
        request(
            &mut assembler,
            1,
            b"GET /a HTTP/1.1\r\nX-Tenant: first\r\n\r\nGET /b HTTP/1.1\r\nX-Tenant: second\r\n\r\n",
        );
        let mut done = response_head(&mut assembler, 2, OK);
        done.extend(response_head(&mut assembler, 3, OK));
        assert_eq!(captured(&done), [vec![("x-tenant", "first")], vec![]]);
    }

    #[test]
    fn values_whose_read_was_lost_go_to_no_request() {
        let mut assembler = capturing();
        open(&mut assembler, None);
        request(&mut assembler, 1, b"GET /a HTTP/1.1\r\n\r\n");
        response_head(&mut assembler, 2, OK);
        header(&mut assembler, 0, "lost", false);
        assembler.lose_record();
        request(&mut assembler, 3, b"GET /b HTTP/1.1\r\n\r\n");
        // A name the daemon never gave.
        header(&mut assembler, 5, "unknown", false);
        let done = response_head(&mut assembler, 4, OK);
        assert_eq!(captured(&done), [vec![]]);
        assert_eq!(assembler.counters.header_values_lost, 2);
    }

    /// Connections of several sides and threads, fed by hand.
    struct Host {
        assembler: Assembler,
        seqs: HashMap<u64, u32>,
        done: Vec<CompletedRequest>,
    }

    impl Host {
        fn new() -> Self {
            let names = vec!["traceparent".into(), "tracestate".into()];
            Self {
                assembler: Assembler::new(false).capturing(names, 0),
                seqs: HashMap::default(),
                done: Vec::new(),
            }
        }

        /// A connection of `side` between local and peer ports.
        fn open(&mut self, sock: u64, side: Side, (local_port, peer_port): (u16, u16)) {
            let meta = ConnMeta {
                family: tracer_common::AF_INET,
                local_port,
                peer_port,
                _pad: 0,
                peer_addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            };
            let event = Event::ConnOpen {
                tgid: 9,
                sock,
                timestamp_ns: 0,
                established_ns: None,
                meta,
                side: Some(side),
                tls: false,
            };
            self.assembler.handle(&event, &mut self.done);
        }

        fn io(&mut self, sock: u64, tid: u32, direction: Direction, at: u64, bytes: &[u8]) {
            let seq = self.seqs.entry(sock).or_default();
            // The kernel copies message starts; other bytes are body.
            let head = tracer_common::may_start_http_message(bytes);
            let data = Data {
                tgid: 9,
                tid,
                timestamp_ns: at,
                sock,
                direction,
                bytes: bytes.len() as u32,
                payload: if head { bytes } else { &[] },
                seq: *seq,
            };
            *seq += 1;
            self.assembler.handle(&Event::Data(data), &mut self.done);
        }

        fn header(&mut self, sock: u64, name: usize, value: &str) {
            let header = Header {
                tgid: 9,
                timestamp_ns: 0,
                sock,
                seq: self.seqs.get(&sock).copied().unwrap_or(0),
                name,
                value: value.as_bytes(),
                truncated: false,
            };
            self.assembler
                .handle(&Event::Header(header), &mut self.done);
        }

        fn close(&mut self, sock: u64) {
            let event = Event::ConnClose {
                sock,
                timestamp_ns: 0,
            };
            self.assembler.handle(&event, &mut self.done);
        }
    }

    const SERVED: u64 = 1;
    const CALL: u64 = 2;
    const CALLEE: u64 = 3;

    #[test]
    fn a_call_runs_from_its_first_byte_written_to_its_last_read() {
        let mut host = Host::new();
        host.open(CALL, Side::Client, (40000, 8001));
        host.io(
            CALL,
            5,
            Direction::Send,
            10,
            b"GET /x?q=1 HTTP/1.1\r\nHost: b:8001\r\n\r\n",
        );
        host.io(
            CALL,
            5,
            Direction::Recv,
            20,
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        );
        assert!(host.done.is_empty());
        host.io(CALL, 5, Direction::Recv, 30, b"hello");
        let [call] = &host.done[..] else {
            panic!("one call: {:?}", host.done);
        };
        assert_eq!(call.side, Side::Client);
        assert_eq!((call.start_ns, call.end_ns), (10, 30));
        assert_eq!(call.request.path, "/x");
        assert_eq!(call.request.host.as_deref(), Some("b:8001"));
        assert!(!call.response_cut_short);
        assert_eq!(call.ids.parent_span_id, None, "made outside any request");
        let in_flight = host.assembler.in_flight_since(&mut 0).unwrap_or_default();
        assert!(
            in_flight.iter().all(|(_, count)| *count == 0),
            "calls are not served requests"
        );
    }

    #[test]
    fn calls_with_bodies_on_a_keep_alive_connection_each_get_a_span() {
        let mut host = Host::new();
        host.open(CALL, Side::Client, (40000, 8001));
        // Head and body in one write (the kernel copies the head alone),
        // then head and body in two (the body write is no record).
        host.io(
            CALL,
            5,
            Direction::Send,
            10,
            b"POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
        );
        host.io(
            CALL,
            5,
            Direction::Recv,
            20,
            b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        );
        host.io(
            CALL,
            5,
            Direction::Send,
            30,
            b"POST /b HTTP/1.1\r\nContent-Length: 4\r\n\r\n",
        );
        host.io(
            CALL,
            5,
            Direction::Recv,
            40,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
        );
        host.io(CALL, 5, Direction::Recv, 50, b"ok");
        let calls: Vec<(&str, u16, u64, u64)> = host
            .done
            .iter()
            .map(|call| {
                (
                    call.request.path.as_str(),
                    call.status,
                    call.start_ns,
                    call.end_ns,
                )
            })
            .collect();
        assert_eq!(calls, [("/a", 201, 10, 20), ("/b", 200, 30, 50)]);
        assert_eq!(host.assembler.counters, AssemblyCounters::default());
    }

    #[test]
    fn a_call_cut_short_by_its_connection_says_so() {
        let mut host = Host::new();
        host.open(CALL, Side::Client, (40000, 8001));
        host.io(CALL, 5, Direction::Send, 10, b"GET /x HTTP/1.1\r\n\r\n");
        host.io(
            CALL,
            5,
            Direction::Recv,
            20,
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        );
        host.io(CALL, 5, Direction::Recv, 30, b"0123456789");
        host.close(CALL);
        let [call] = &host.done[..] else {
            panic!("one call: {:?}", host.done);
        };
        assert!(call.response_cut_short);
        assert_eq!(call.end_ns, 30);
    }

    #[test]
    fn calls_hang_under_the_request_their_thread_serves_and_their_callee_under_them() {
        let mut host = Host::new();
        host.open(SERVED, Side::Server, (8000, 50000));
        host.io(
            SERVED,
            7,
            Direction::Recv,
            1,
            b"GET /chain HTTP/1.1\r\n\r\n",
        );
        host.open(CALL, Side::Client, (40000, 8001));
        host.io(CALL, 7, Direction::Send, 2, b"GET /light HTTP/1.1\r\n\r\n");
        // The callee, traced too, on the same connection's other end.
        host.open(CALLEE, Side::Server, (8001, 40000));
        host.io(
            CALLEE,
            8,
            Direction::Recv,
            3,
            b"GET /light HTTP/1.1\r\n\r\n",
        );
        host.io(
            CALLEE,
            8,
            Direction::Send,
            4,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        );
        host.io(
            CALL,
            7,
            Direction::Recv,
            5,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        );
        host.io(
            SERVED,
            7,
            Direction::Send,
            6,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        );
        let [callee, call, served] = &host.done[..] else {
            panic!("three spans: {:?}", host.done);
        };
        assert_eq!(call.ids.parent_span_id, Some(served.ids.span_id));
        assert_eq!(callee.ids.parent_span_id, Some(call.ids.span_id));
        assert_eq!(served.ids.parent_span_id, None);
        for span in [call, callee] {
            assert_eq!(span.ids.trace_id, served.ids.trace_id);
        }
        // The response started: a later call of that thread is no child.
        host.open(CALL + 10, Side::Client, (40001, 9000));
        host.io(
            CALL + 10,
            7,
            Direction::Send,
            7,
            b"GET /late HTTP/1.1\r\n\r\n",
        );
        host.io(
            CALL + 10,
            7,
            Direction::Recv,
            8,
            b"HTTP/1.1 204 No Content\r\n\r\n",
        );
        assert_eq!(host.done[3].ids.parent_span_id, None);
    }

    #[test]
    fn an_incoming_traceparent_is_the_parent_and_a_bad_one_is_counted() {
        let mut host = Host::new();
        host.open(SERVED, Side::Server, (8000, 50000));
        let trace = "0af7651916cd43dd8448eb211c80319c";
        host.header(SERVED, 0, &format!("00-{trace}-b7ad6b7169203331-01"));
        host.header(SERVED, 1, "k=v");
        host.io(SERVED, 7, Direction::Recv, 1, b"GET /a HTTP/1.1\r\n\r\n");
        host.io(
            SERVED,
            7,
            Direction::Send,
            2,
            b"HTTP/1.1 204 No Content\r\n\r\n",
        );
        host.header(SERVED, 0, "00-xyz");
        host.io(SERVED, 7, Direction::Recv, 3, b"GET /b HTTP/1.1\r\n\r\n");
        host.io(
            SERVED,
            7,
            Direction::Send,
            4,
            b"HTTP/1.1 204 No Content\r\n\r\n",
        );
        let [joined, fresh] = &host.done[..] else {
            panic!("two spans: {:?}", host.done);
        };
        let hex: String = joined
            .ids
            .trace_id
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, trace);
        assert_eq!(
            joined.ids.parent_span_id,
            Some([0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31])
        );
        assert_eq!(joined.ids.trace_state.as_deref(), Some("k=v"));
        assert!(
            joined.captured_headers.is_empty(),
            "not asked for: no attribute"
        );
        assert_eq!(fresh.ids.parent_span_id, None);
        assert_eq!(host.assembler.counters.traceparent_invalid, 1);
    }

    fn exchange_bytes(path: &str) -> (Vec<u8>, Vec<u8>) {
        (
            format!("GET {path}?q=1 HTTP/1.1\r\nHost: x\r\nUser-Agent: t\r\n\r\n").into_bytes(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
        )
    }

    /// Splits `bytes` at the given cut points (taken modulo its length).
    fn chunks(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut points: Vec<usize> = cuts
            .iter()
            .map(|c| c % bytes.len())
            .filter(|&c| c > 0)
            .collect();
        points.sort_unstable();
        points.dedup();
        let mut out = Vec::new();
        let mut start = 0;
        for point in points.into_iter().chain([bytes.len()]) {
            out.push(bytes[start..point].to_vec());
            start = point;
        }
        out
    }

    proptest! {
        #[test]
        fn any_split_of_valid_traffic_gives_exactly_one_span(
            request_cuts in proptest::collection::vec(0usize..200, 0..6),
            response_cuts in proptest::collection::vec(0usize..200, 0..6),
            requests in 1usize..4,
        ) {
            let mut assembler = Feed::new(false);
            open(&mut assembler, Some(1));
            let mut done = Vec::new();
            let mut t = 10;
            for i in 0..requests {
                let (req, resp) = exchange_bytes(&format!("/p{i}"));
                for chunk in chunks(&req, &request_cuts) {
                    t += 1;
                    done.extend(request(&mut assembler, t, &chunk));
                }
                let head_len = resp.len() - 3;
                let mut offset = 0;
                for chunk in chunks(&resp, &response_cuts) {
                    t += 1;
                    // The kernel copies header bytes only, never the body.
                    let captured = head_len.saturating_sub(offset).min(chunk.len());
                    offset += chunk.len();
                    done.extend(io(&mut assembler, Direction::Send, t, &chunk, captured));
                }
            }
            done.extend(close(&mut assembler));
            prop_assert_eq!(done.len(), requests);
            for (i, span) in done.iter().enumerate() {
                prop_assert_eq!(&span.request.path, &format!("/p{i}"));
                prop_assert_eq!(span.status, 200);
                prop_assert!(span.start_ns <= span.first_read_ns && span.first_read_ns <= span.end_ns);
            }
            prop_assert_eq!(assembler.counters, AssemblyCounters::default());
        }

        #[test]
        fn pipelined_requests_in_any_split_each_get_a_span(
            cuts in proptest::collection::vec(0usize..400, 0..8),
            requests in 1usize..6,
        ) {
            let mut assembler = Feed::new(false);
            open(&mut assembler, Some(1));
            let (mut pipelined, mut responses) = (Vec::new(), Vec::new());
            for i in 0..requests {
                let (req, resp) = exchange_bytes(&format!("/p{i}"));
                pipelined.extend(req);
                responses.push(resp);
            }
            let mut done = Vec::new();
            let mut t = 10;
            for chunk in chunks(&pipelined, &cuts) {
                t += 1;
                done.extend(request(&mut assembler, t, &chunk));
            }
            for resp in responses {
                t += 1;
                done.extend(response_head(&mut assembler, t, &resp));
            }
            done.extend(close(&mut assembler));
            let paths: Vec<String> = done.iter().map(|d| d.request.path.clone()).collect();
            let expected: Vec<String> = (0..requests).map(|i| format!("/p{i}")).collect();
            prop_assert_eq!(paths, expected);
            prop_assert_eq!(assembler.counters, AssemblyCounters::default());
        }

        #[test]
        fn arbitrary_bytes_never_panic_nor_invent_spans(
            reads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 0..8),
        ) {
            let mut assembler = Feed::new(false);
            open(&mut assembler, None);
            let mut done = Vec::new();
            for (i, bytes) in reads.iter().enumerate() {
                let direction = if i % 2 == 0 { Direction::Recv } else { Direction::Send };
                done.extend(io(&mut assembler, direction, i as u64, bytes, bytes.len().min(tracer_common::CAPTURE_LEN)));
            }
            done.extend(close(&mut assembler));
            prop_assert!(done.is_empty());
        }
    }
}
