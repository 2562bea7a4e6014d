//! Who is whose parent: the trace and span ids of every request, decided as
//! it starts, so that the spans of one request hang together across
//! threads, connections and the services of a host.
//!
//! - A server request joins the trace of a valid incoming `traceparent`, as
//!   the child of its span; else, when a traced process of this host made
//!   the call (the connection's client and server ports match a call in
//!   flight), that call's trace, as the call's child; else it starts one.
//! - A client call is the child of the server request its thread is serving
//!   (it has read the request's head and not yet started the response);
//!   outside any request it starts a trace.
//! - The two ends of a call on this host can reach the daemon in either
//!   order (the callee may read before the caller's write is recorded): a
//!   server request that found no call waits for one, and the call that
//!   comes for it links it then. The spans of one process's part of a trace
//!   share its [`TraceRoot`], so a late link moves them all.
//!
//! The two ends are matched by [`CallKey`]: the client's port, the
//! server's port, and the address each end has for its peer. A client on
//! this host that connects to an address of the host is given that same
//! address as its source, so both ends name the same one; while the
//! connection lives no other connection has all three. A call to another
//! host and a request from another host that happen to share the ports
//! have different peers, and stay apart. (A client that connects to one
//! loopback address and is given another as its source is not linked: a
//! root, never a wrong parent.)
use std::{
    cell::{Cell, RefCell},
    rc::{Rc, Weak},
    sync::Arc,
};

use foldhash::HashMap;
use smallvec::SmallVec;
use tracer_common::{AF_INET, AF_INET6, ConnMeta};

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

/// What the spans of one process's part of a trace share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceRoot {
    pub trace_id: TraceId,
    /// The sampled flag of the incoming `traceparent` the trace came with.
    pub remote_sampled: Option<bool>,
    /// Its `tracestate`, passed on unchanged.
    pub trace_state: Option<Arc<str>>,
}

impl TraceRoot {
    fn fresh() -> Rc<RefCell<Self>> {
        Rc::new(RefCell::new(Self {
            trace_id: random_nonzero(|| fastrand::u128(..).to_be_bytes()),
            remote_sampled: None,
            trace_state: None,
        }))
    }
}

/// The ids of a finished span, as it is exported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanIds {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    /// The parent is another process's span (a `traceparent`, or the call
    /// of another traced service).
    pub remote_parent: bool,
    pub remote_sampled: Option<bool>,
    pub trace_state: Option<Arc<str>>,
}

impl SpanIds {
    /// Ids for a span the tracer did not see start (tests, references).
    pub fn root() -> Self {
        SpanContext::new(TraceRoot::fresh(), None, false).ids()
    }
}

/// A request's place in its trace, while it is in flight.
#[derive(Debug)]
pub struct SpanContext {
    trace: Rc<RefCell<TraceRoot>>,
    span_id: SpanId,
    parent: Cell<Option<SpanId>>,
    remote_parent: Cell<bool>,
    /// A server request whose response has not started: calls its thread
    /// makes are its children.
    serving: Cell<bool>,
}

impl SpanContext {
    fn new(trace: Rc<RefCell<TraceRoot>>, parent: Option<SpanId>, remote: bool) -> Self {
        Self {
            trace,
            span_id: random_nonzero(|| fastrand::u64(..).to_be_bytes()),
            parent: Cell::new(parent),
            remote_parent: Cell::new(remote),
            serving: Cell::new(false),
        }
    }

    pub fn ids(&self) -> SpanIds {
        let trace = self.trace.borrow();
        SpanIds {
            trace_id: trace.trace_id,
            span_id: self.span_id,
            parent_span_id: self.parent.get(),
            remote_parent: self.remote_parent.get(),
            remote_sampled: trace.remote_sampled,
            trace_state: trace.trace_state.clone(),
        }
    }

    /// The response started: the handler's calls are over.
    pub fn stop_serving(&self) {
        self.serving.set(false);
    }
}

/// An incoming `traceparent` (W3C Trace Context), parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub sampled: bool,
}

impl TraceParent {
    /// `version-traceid-parentid-flags` in lowercase hex; a version other
    /// than `00` may add fields after a dash, `ff` is invalid, and so are
    /// all-zero ids.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim_matches([' ', '\t']).as_bytes();
        let (head, rest) = value.split_at_checked(55)?;
        let version = hex::<1>(&head[..2])?;
        let well_formed = version[0] != 0xff
            && head[2] == b'-'
            && head[35] == b'-'
            && head[52] == b'-'
            && (rest.is_empty() || (version[0] != 0 && rest[0] == b'-'));
        if !well_formed {
            return None;
        }
        let trace_id = hex::<16>(&head[3..35])?;
        let parent_id = hex::<8>(&head[36..52])?;
        let flags = hex::<1>(&head[53..55])?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            sampled: flags[0] & 1 == 1,
        })
    }
}

/// `2 * N` lowercase hex digits as bytes.
fn hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    if text.len() != 2 * N {
        return None;
    }
    let mut bytes = [0u8; N];
    for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(bytes)
}

/// An id from `draw`, never all zero (an invalid id in W3C and OTLP).
fn random_nonzero<const N: usize>(draw: impl Fn() -> [u8; N]) -> [u8; N] {
    loop {
        let id = draw();
        if id != [0; N] {
            return id;
        }
    }
}

/// A connection as both its ends can name it ([module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CallKey {
    client_port: u16,
    server_port: u16,
    /// IPv6, or IPv4 mapped into it: a dual-stack server sees it so.
    peer: [u8; 16],
}

impl CallKey {
    /// As the client end sees its connection (`None`: addresses unknown).
    pub fn of_call(meta: &ConnMeta) -> Option<Self> {
        Self::new(meta.local_port, meta.peer_port, meta)
    }

    /// As the server end sees its connection.
    pub fn of_served(meta: &ConnMeta) -> Option<Self> {
        Self::new(meta.peer_port, meta.local_port, meta)
    }

    fn new(client_port: u16, server_port: u16, meta: &ConnMeta) -> Option<Self> {
        let peer = match meta.family {
            AF_INET => {
                let mut mapped = [0u8; 16];
                mapped[10..12].copy_from_slice(&[0xff, 0xff]);
                mapped[12..].copy_from_slice(&meta.peer_addr[..4]);
                mapped
            }
            AF_INET6 => meta.peer_addr,
            _ => return None,
        };
        (client_port != 0 && server_port != 0).then_some(Self {
            client_port,
            server_port,
            peer,
        })
    }
}

/// The requests under one [`CallKey`], oldest first: almost always one
/// (a connection has one request in flight), kept inline, not allocated.
type Queue = SmallVec<[Weak<SpanContext>; 1]>;

/// Requests in flight, by what their children and peers look them up by.
/// Entries are weak: a request that ends, however it ends, leaves them.
#[derive(Default)]
pub struct TraceContext {
    /// The server request each thread is serving, by thread id.
    serving: HashMap<u32, Weak<SpanContext>>,
    /// Calls whose server has not been seen to read them, oldest first.
    calls: HashMap<CallKey, Queue>,
    /// Server requests with no parent yet, that a call may still claim.
    waiting: HashMap<CallKey, Queue>,
}

impl TraceContext {
    /// A server request read by thread `tid`, with its incoming
    /// `traceparent` (and `tracestate`), on a connection whose client and
    /// server ports are `key` when known.
    pub fn serve(
        &mut self,
        tid: u32,
        incoming: Option<(TraceParent, Option<Arc<str>>)>,
        key: Option<CallKey>,
    ) -> Rc<SpanContext> {
        // A call in flight for this connection is claimed either way.
        let call = key.and_then(|key| pop_live(&mut self.calls, key));
        let context = match (incoming, call) {
            (Some((parent, trace_state)), _) => {
                let trace = Rc::new(RefCell::new(TraceRoot {
                    trace_id: parent.trace_id,
                    remote_sampled: Some(parent.sampled),
                    trace_state,
                }));
                Rc::new(SpanContext::new(trace, Some(parent.parent_id), true))
            }
            (None, Some(call)) => Rc::new(SpanContext::new(
                call.trace.clone(),
                Some(call.span_id),
                true,
            )),
            (None, None) => {
                let context = Rc::new(SpanContext::new(TraceRoot::fresh(), None, false));
                if let Some(key) = key {
                    push_live(&mut self.waiting, key, &context);
                }
                context
            }
        };
        context.serving.set(true);
        self.serving.insert(tid, Rc::downgrade(&context));
        context
    }

    /// A call written by thread `tid` on a connection whose client and
    /// server ports are `key` when known.
    pub fn call(&mut self, tid: u32, key: Option<CallKey>) -> Rc<SpanContext> {
        let serving = self
            .serving
            .get(&tid)
            .and_then(Weak::upgrade)
            .filter(|server| server.serving.get());
        let context = Rc::new(match serving {
            Some(server) => SpanContext::new(server.trace.clone(), Some(server.span_id), false),
            None => SpanContext::new(TraceRoot::fresh(), None, false),
        });
        let Some(key) = key else {
            return context;
        };
        match pop_live(&mut self.waiting, key) {
            Some(server) => {
                // Its server read it first: it joins this trace now.
                let trace = context.trace.borrow().clone();
                *server.trace.borrow_mut() = trace;
                server.parent.set(Some(context.span_id));
                server.remote_parent.set(true);
            }
            None => push_live(&mut self.calls, key, &context),
        }
        context
    }

    /// Forgets the entries of requests that ended.
    pub fn sweep(&mut self) {
        self.serving.retain(|_, server| server.strong_count() > 0);
        for waiting in [&mut self.calls, &mut self.waiting] {
            waiting.retain(|_, queue| {
                queue.retain(|entry| entry.strong_count() > 0);
                !queue.is_empty()
            });
        }
    }
}

/// The oldest request under `key` still in flight.
fn pop_live(queues: &mut HashMap<CallKey, Queue>, key: CallKey) -> Option<Rc<SpanContext>> {
    let queue = queues.get_mut(&key)?;
    let found = queue
        .iter()
        .enumerate()
        .find_map(|(index, entry)| Some((index, entry.upgrade()?)));
    // The ended requests before it go too.
    let taken = found.as_ref().map_or(queue.len(), |(index, _)| index + 1);
    queue.drain(..taken);
    let live = found.map(|(_, context)| context);
    if queue.is_empty() {
        queues.remove(&key);
    }
    live
}

fn push_live(queues: &mut HashMap<CallKey, Queue>, key: CallKey, context: &Rc<SpanContext>) {
    let queue = queues.entry(key).or_default();
    // Requests that ended before anything claimed them go first.
    let ended = queue
        .iter()
        .take_while(|entry| entry.strong_count() == 0)
        .count();
    queue.drain(..ended);
    queue.push(Rc::downgrade(context));
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

    /// A loopback connection from client port `port` to server port 8001.
    fn key(port: u16) -> CallKey {
        CallKey::of_call(&meta(port, 8001)).expect("known addresses")
    }

    fn meta(local_port: u16, peer_port: u16) -> ConnMeta {
        let mut peer_addr = [0; 16];
        peer_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        ConnMeta {
            family: AF_INET,
            local_port,
            peer_port,
            _pad: 0,
            peer_addr,
        }
    }

    #[test]
    fn both_ends_of_a_connection_name_it_alike_and_other_hosts_differ() {
        assert_eq!(CallKey::of_served(&meta(8001, 40000)), Some(key(40000)));
        let mut dual_stack = meta(8001, 40000);
        dual_stack.family = AF_INET6;
        dual_stack.peer_addr = "::ffff:127.0.0.1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        assert_eq!(CallKey::of_served(&dual_stack), Some(key(40000)));
        let mut from_elsewhere = meta(8001, 40000);
        from_elsewhere.peer_addr[..4].copy_from_slice(&[10, 0, 0, 9]);
        assert_ne!(CallKey::of_served(&from_elsewhere), Some(key(40000)));
        assert_eq!(CallKey::of_call(&ConnMeta::unknown(AF_INET)), None);
    }
    const SPAN: &str = "b7ad6b7169203331";

    #[test]
    fn traceparent_as_w3c_gives_it() {
        let parsed = TraceParent::parse(&format!("00-{TRACE}-{SPAN}-01")).expect("valid");
        assert_eq!(parsed.trace_id, hex::<16>(TRACE.as_bytes()).unwrap());
        assert_eq!(parsed.parent_id, hex::<8>(SPAN.as_bytes()).unwrap());
        assert!(parsed.sampled);
        assert!(
            !TraceParent::parse(&format!("00-{TRACE}-{SPAN}-00"))
                .unwrap()
                .sampled
        );
        assert!(TraceParent::parse(&format!("01-{TRACE}-{SPAN}-01-future")).is_some());
        for bad in [
            format!("00-{TRACE}-{SPAN}-01-extra"),
            format!("ff-{TRACE}-{SPAN}-01"),
            format!("00-{}-{SPAN}-01", "0".repeat(32)),
            format!("00-{TRACE}-{}-01", "0".repeat(16)),
            format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            format!("00-{TRACE}-{SPAN}-1"),
            format!("00_{TRACE}_{SPAN}_01"),
            "00-xyz".into(),
            String::new(),
        ] {
            assert_eq!(TraceParent::parse(&bad), None, "{bad}");
        }
    }

    #[test]
    fn a_call_is_the_child_of_the_request_its_thread_serves() {
        let mut context = TraceContext::default();
        let server = context.serve(10, None, None);
        let call = context.call(10, None);
        let (server, call_ids) = (server.ids(), call.ids());
        assert_eq!(call_ids.trace_id, server.trace_id);
        assert_eq!(call_ids.parent_span_id, Some(server.span_id));
        assert_eq!(
            context.call(11, None).ids().parent_span_id,
            None,
            "another thread"
        );
    }

    #[test]
    fn a_call_after_the_response_started_or_the_request_ended_is_a_root() {
        let mut context = TraceContext::default();
        let server = context.serve(10, None, None);
        server.stop_serving();
        assert_eq!(context.call(10, None).ids().parent_span_id, None);
        let server = context.serve(10, None, None);
        drop(server);
        assert_eq!(context.call(10, None).ids().parent_span_id, None);
        context.sweep();
        assert!(context.serving.is_empty());
    }

    #[test]
    fn the_callee_is_the_child_of_the_call_whichever_end_comes_first() {
        let mut context = TraceContext::default();
        let upstream = context.serve(1, None, None);
        let call = context.call(1, Some(key(40000)));
        let callee = context.serve(2, None, Some(key(40000)));
        assert_eq!(callee.ids().parent_span_id, Some(call.ids().span_id));
        assert_eq!(callee.ids().trace_id, upstream.ids().trace_id);
        assert!(callee.ids().remote_parent);

        // The callee read first: the call links it, and its own call too.
        let callee = context.serve(3, None, Some(key(40001)));
        let callees_call = context.call(3, None);
        let call = context.call(1, Some(key(40001)));
        assert_eq!(callee.ids().parent_span_id, Some(call.ids().span_id));
        assert_eq!(callee.ids().trace_id, upstream.ids().trace_id);
        assert_eq!(callees_call.ids().trace_id, upstream.ids().trace_id);
    }

    #[test]
    fn an_ended_call_is_claimed_by_no_one_and_calls_pair_in_order() {
        let mut context = TraceContext::default();
        drop(context.call(1, Some(key(40000))));
        assert_eq!(
            context
                .serve(2, None, Some(key(40000)))
                .ids()
                .parent_span_id,
            None
        );
        let mut context = TraceContext::default();
        let first = context.call(1, Some(key(40000)));
        let second = context.call(1, Some(key(40000)));
        let key = Some(key(40000));
        assert_eq!(
            context.serve(2, None, key).ids().parent_span_id,
            Some(first.ids().span_id)
        );
        assert_eq!(
            context.serve(2, None, key).ids().parent_span_id,
            Some(second.ids().span_id)
        );
    }

    #[test]
    fn an_incoming_traceparent_wins() {
        let mut context = TraceContext::default();
        let parent = TraceParent::parse(&format!("00-{TRACE}-{SPAN}-00")).unwrap();
        let _call = context.call(1, Some(key(40000)));
        let server = context.serve(2, Some((parent, Some("k=v".into()))), Some(key(40000)));
        let ids = server.ids();
        assert_eq!(ids.trace_id, parent.trace_id);
        assert_eq!(ids.parent_span_id, Some(parent.parent_id));
        assert_eq!(ids.remote_sampled, Some(false));
        assert_eq!(ids.trace_state.as_deref(), Some("k=v"));
        assert_eq!(
            context.call(2, None).ids().trace_state.as_deref(),
            Some("k=v")
        );
    }
}
