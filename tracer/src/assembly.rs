//! Turns the event stream into completed requests, one connection at a time.
//!
//! A request starts at the kernel's handshake for the first request of a
//! connection (so accept-queue time counts, as the client saw it) and at its
//! first byte read for later ones; it ends at the last response byte written.
//! A response is complete when its declared length has been written, or, for
//! chunked and close-delimited bodies, when the next request arrives, the
//! connection ends, or it has been idle for a while. Requests that never got
//! a response, and bytes that are not HTTP, give no span: they are counted.
use std::collections::{HashMap, VecDeque};

use tracer_common::ConnMeta;

use crate::{
    events::{Data, Direction, Event},
    http::{self, Parsed, RequestHead, ResponseHead},
};

/// A request head that grows past this without ending is not HTTP we follow.
const MAX_HEAD_BYTES: usize = 16 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompletedRequest {
    pub tgid: u32,
    pub request: RequestHead,
    pub status: u16,
    /// Monotonic nanoseconds, as the kernel stamps them.
    pub start_ns: u64,
    pub first_read_ns: u64,
    pub end_ns: u64,
    /// Addresses, when the tracer saw the connection being established.
    pub meta: Option<ConnMeta>,
    pub response_bytes: u64,
}

/// What assembly could not turn into spans, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AssemblyCounters {
    pub unparseable_requests: u64,
    pub unparseable_responses: u64,
    pub responses_without_request: u64,
    pub requests_without_response: u64,
}

#[derive(Default)]
pub struct Assembler {
    connections: HashMap<u64, Connection>,
    keep_query: bool,
    pub counters: AssemblyCounters,
}

struct Connection {
    tgid: u32,
    established_ns: Option<u64>,
    meta: Option<ConnMeta>,
    /// Request bytes that do not yet form a complete head.
    inbound: Vec<u8>,
    inbound_first_ns: u64,
    exchanges: VecDeque<Exchange>,
    requests_seen: u64,
    last_activity_ns: u64,
}

struct Exchange {
    request: RequestHead,
    start_ns: u64,
    first_read_ns: u64,
    outbound: Vec<u8>,
    response: Option<ResponseHead>,
    response_bytes: u64,
    last_write_ns: u64,
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

    pub fn open_connections(&self) -> usize {
        self.connections.len()
    }

    /// Feeds one event; completed requests are pushed to `done`.
    pub fn handle(&mut self, event: &Event<'_>, done: &mut Vec<CompletedRequest>) {
        match event {
            Event::ConnOpen {
                tgid,
                sock,
                established_ns,
                meta,
            } => {
                if let Some(old) = self.connections.remove(sock) {
                    self.finish_connection(old, done);
                }
                let connection = Connection::new(
                    *tgid,
                    *established_ns,
                    Some(*meta).filter(|m| m.family != 0),
                    0,
                );
                self.connections.insert(*sock, connection);
            }
            Event::ConnClose { sock, .. } => {
                if let Some(connection) = self.connections.remove(sock) {
                    self.finish_connection(connection, done);
                }
            }
            Event::Data(data) => self.handle_data(data, done),
            Event::TaskFork { .. } | Event::TaskExit { .. } => {}
        }
    }

    fn handle_data(&mut self, data: &Data<'_>, done: &mut Vec<CompletedRequest>) {
        let keep_query = self.keep_query;
        let connection = self
            .connections
            .entry(data.sock)
            .or_insert_with(|| Connection::new(data.tgid, None, None, data.timestamp_ns));
        connection.last_activity_ns = data.timestamp_ns;
        match data.direction {
            Direction::Recv => {
                connection.on_request_bytes(data, keep_query, &mut self.counters, done)
            }
            Direction::Send => connection.on_response_bytes(data, &mut self.counters, done),
        }
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
        self.counters.requests_without_response += connection.exchanges.len() as u64;
    }
}

impl Connection {
    fn new(tgid: u32, established_ns: Option<u64>, meta: Option<ConnMeta>, now_ns: u64) -> Self {
        Self {
            tgid,
            established_ns,
            meta,
            inbound: Vec::new(),
            inbound_first_ns: 0,
            exchanges: VecDeque::new(),
            requests_seen: 0,
            last_activity_ns: now_ns,
        }
    }

    fn on_request_bytes(
        &mut self,
        data: &Data<'_>,
        keep_query: bool,
        counters: &mut AssemblyCounters,
        done: &mut Vec<CompletedRequest>,
    ) {
        if data.payload.is_empty() {
            return;
        }
        // A new request ends a response of unknown length still being written.
        self.finish_answered(done);
        if self.inbound.is_empty() {
            self.inbound_first_ns = data.timestamp_ns;
        }
        self.inbound.extend_from_slice(data.payload);
        let cut_short = (data.bytes as usize) > data.payload.len();
        let head = match http::parse_request(&self.inbound, keep_query) {
            Parsed::Complete(head) => Some(head),
            Parsed::Partial if cut_short => http::parse_request_line(&self.inbound, keep_query),
            Parsed::Partial if self.inbound.len() <= MAX_HEAD_BYTES => return,
            Parsed::Partial | Parsed::Invalid => None,
        };
        self.inbound.clear();
        let Some(request) = head else {
            counters.unparseable_requests += 1;
            return;
        };
        let first_read_ns = self.inbound_first_ns;
        let start_ns = match self.established_ns {
            Some(established) if self.requests_seen == 0 && established <= first_read_ns => {
                established
            }
            _ => first_read_ns,
        };
        self.requests_seen += 1;
        self.exchanges.push_back(Exchange {
            request,
            start_ns,
            first_read_ns,
            outbound: Vec::new(),
            response: None,
            response_bytes: 0,
            last_write_ns: first_read_ns,
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
            exchange.outbound.extend_from_slice(data.payload);
            match http::parse_response(&exchange.outbound, &exchange.request.method) {
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
            request: exchange.request,
            status: response.status,
            start_ns: exchange.start_ns,
            first_read_ns: exchange.first_read_ns,
            end_ns: exchange.last_write_ns,
            meta: self.meta,
            response_bytes: exchange.response_bytes,
        });
    }
}
