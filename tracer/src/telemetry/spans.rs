//! A completed request as OpenTelemetry spans, following the HTTP semantic
//! conventions: a SERVER span `"{method} {http.route}"` (`"{method}"` without
//! a route, never the raw path: [`super::routes`]) and two INTERNAL children
//! that say where the time went, "in queue" (handshake to first byte read:
//! the accept queue, invisible to an in-process SDK) and "processing"; a
//! call the process made is one CLIENT span `"{method}"`. Ids and parents
//! come with the request ([`crate::trace_context`]).
//!
//! The spans are encoded as they are built ([`super::encode`]), from
//! strings borrowed from the request: a request costs no allocation here.
use std::{
    fmt::{self, Write as _},
    net::IpAddr,
};

use opentelemetry::{KeyValue, Value, trace::TraceFlags};
use opentelemetry_proto::tonic::{
    common::v1::InstrumentationScope,
    trace::v1::{SpanFlags, span::SpanKind},
};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use tracer_common::{AF_INET, AF_INET6};

use super::{
    clock::Clock,
    encode::{Attributes, EncodedSpans, Span},
    routes::Resolved,
};
use crate::{assembly::CompletedRequest, events::Side, trace_context::SpanIds};

/// A span's flags: sampled, and whether its parent is another process's.
fn flags(remote_parent: bool) -> u32 {
    let remote = if remote_parent {
        SpanFlags::ContextIsRemoteMask as u32
    } else {
        0
    };
    u32::from(TraceFlags::SAMPLED.to_u8()) | SpanFlags::ContextHasIsRemoteMask as u32 | remote
}

/// The server a call went to, as its `Host` header names it: the name
/// and the port (80 when the header gives none), else the peer's address.
pub fn called_server(request: &CompletedRequest) -> Option<(String, u16)> {
    if let Some(host) = request
        .request
        .host
        .as_deref()
        .filter(|host| !host.is_empty())
    {
        let default_port = if request.tls { 443 } else { 80 };
        let (name, port) = match host.rsplit_once(':') {
            Some((name, port)) if !name.ends_with(':') => match port.parse() {
                Ok(port) => (name, port),
                Err(_) => (host, default_port),
            },
            _ => (host, default_port),
        };
        let name = name.trim_start_matches('[').trim_end_matches(']');
        return Some((name.to_owned(), port));
    }
    peer(request).map(|(address, port)| (address.to_string(), port))
}

/// The peer's address and port, when the connection's handshake was seen.
pub fn peer(request: &CompletedRequest) -> Option<(IpAddr, u16)> {
    let meta = request.meta?;
    let address = match meta.family {
        AF_INET => IpAddr::from(<[u8; 4]>::try_from(&meta.peer_addr[..4]).ok()?),
        AF_INET6 => IpAddr::from(meta.peer_addr).to_canonical(),
        _ => return None,
    };
    Some((address, meta.peer_port))
}

/// Text formatted on the stack: an address or a status code, no `String`.
struct StackText<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> StackText<N> {
    /// What fits of `args` in `N` bytes.
    fn format(args: fmt::Arguments<'_>) -> Self {
        let mut text = Self {
            bytes: [0; N],
            len: 0,
        };
        let _ = text.write_fmt(args);
        text
    }

    /// An address as `Display` writes it; IPv4 without `core::fmt`, which
    /// costs a tenth of a span's encoding.
    fn address(address: IpAddr) -> Self {
        let IpAddr::V4(v4) = address else {
            return Self::format(format_args!("{address}"));
        };
        let mut text = Self::format(format_args!(""));
        for (index, octet) in v4.octets().into_iter().enumerate() {
            if index > 0 {
                text.push(b'.');
            }
            if octet >= 100 {
                text.push(b'0' + octet / 100);
            }
            if octet >= 10 {
                text.push(b'0' + octet / 10 % 10);
            }
            text.push(b'0' + octet % 10);
        }
        text
    }

    fn push(&mut self, byte: u8) {
        if let Some(slot) = self.bytes.get_mut(self.len) {
            *slot = byte;
            self.len += 1;
        }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

impl<const N: usize> fmt::Write for StackText<N> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let end = self.len + text.len();
        let slot = self.bytes.get_mut(self.len..end).ok_or(fmt::Error)?;
        slot.copy_from_slice(text.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// A shared attribute's value, borrowed for the span or copied for the metric.
enum Shared<'a> {
    Static(&'static str),
    Str(&'a str),
    Int(i64),
}

/// Attributes shared by the span and the duration metric, in their order.
fn shared_attributes(request: &CompletedRequest, mut each: impl FnMut(&'static str, Shared<'_>)) {
    // A made-up method is `_OTHER`: it cannot grow a metric's series.
    let method = crate::http::method_attribute(&request.request.method);
    each("http.request.method", Shared::Static(method));
    if request.side == Side::Client {
        return call_attributes(request, each);
    }
    each(
        "http.response.status_code",
        Shared::Int(i64::from(request.status)),
    );
    each("url.scheme", Shared::Static(scheme(request)));
    each("network.protocol.name", Shared::Static("http"));
    each(
        "network.protocol.version",
        Shared::Static(protocol_version(request)),
    );
    if let Some(meta) = request.meta {
        each("server.port", Shared::Int(i64::from(meta.local_port)));
    }
    if request.status >= 500 {
        let status = StackText::<5>::format(format_args!("{}", request.status));
        each("error.type", Shared::Str(status.as_str()));
    }
}

/// `network.protocol.version`.
fn protocol_version(request: &CompletedRequest) -> &'static str {
    if request.request.minor_version == 0 {
        "1.0"
    } else {
        "1.1"
    }
}

/// A call's attributes after its method, shared by the span and
/// `http.client.request.duration`: 4xx and 5xx are errors for a client, and
/// so is a response the connection cut short.
fn call_attributes(request: &CompletedRequest, mut each: impl FnMut(&'static str, Shared<'_>)) {
    each(
        "http.response.status_code",
        Shared::Int(i64::from(request.status)),
    );
    if let Some((address, port)) = called_server(request) {
        each("server.address", Shared::Str(&address));
        each("server.port", Shared::Int(i64::from(port)));
    }
    each("url.scheme", Shared::Static(scheme(request)));
    each(
        "network.protocol.version",
        Shared::Static(protocol_version(request)),
    );
    if let Some(error) = call_error(request) {
        each("error.type", Shared::Str(error.as_str()));
    }
}

/// `url.scheme`: `https` when the kernel saw the plaintext in OpenSSL.
fn scheme(request: &CompletedRequest) -> &'static str {
    if request.tls { "https" } else { "http" }
}

/// Why a call failed, as `error.type` gives it.
fn call_error(request: &CompletedRequest) -> Option<StackText<20>> {
    if request.response_cut_short {
        Some(StackText::format(format_args!("response_incomplete")))
    } else {
        (request.status >= 400).then(|| StackText::format(format_args!("{}", request.status)))
    }
}

/// The shared attributes at most, and the two a route adds to them
/// ([`Resolved::push_metric_attributes`]).
const MAX_METRIC_ATTRIBUTES: usize = 9;

/// Attributes shared by the span and the duration metric.
pub fn metric_attributes(request: &CompletedRequest) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(MAX_METRIC_ATTRIBUTES);
    shared_attributes(request, |key, value| {
        let value = match value {
            Shared::Static(text) => Value::from(text),
            Shared::Str(text) => Value::from(text.to_owned()),
            Shared::Int(number) => Value::from(number),
        };
        attributes.push(KeyValue::new(key, value));
    });
    attributes
}

/// `--capture-header` values as the semantic conventions give them:
/// `http.request.header.<name>`, a string array holding every value of the
/// header in order, and `user_agent.original` for User-Agent.
fn push_captured_headers(attributes: &mut Attributes, headers: &[(String, String)]) {
    if let Some((_, agent)) = headers.iter().find(|(name, _)| name == "user-agent") {
        attributes.str("user_agent.original", agent);
    }
    for (index, (name, _)) in headers.iter().enumerate() {
        if headers[..index].iter().any(|(earlier, _)| earlier == name) {
            continue;
        }
        let values = headers[index..]
            .iter()
            .filter(|(other, _)| other == name)
            .map(|(_, value)| value.as_str());
        attributes.strings(&["http.request.header.", name], values);
    }
}

/// The instrumentation scope of every span.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "tracer".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

/// Turns requests into encoded spans, with random ids unless told otherwise.
pub struct SpanEncoder<I = RandomIdGenerator> {
    ids: I,
    clock: Clock,
    /// The server span's, reused from request to request.
    attributes: Attributes,
}

impl SpanEncoder {
    pub fn new(clock: Clock) -> Self {
        Self::with_ids(clock, RandomIdGenerator::default())
    }
}

impl<I: IdGenerator> SpanEncoder<I> {
    pub fn with_ids(clock: Clock, ids: I) -> Self {
        Self {
            ids,
            clock,
            attributes: Attributes::default(),
        }
    }

    /// Appends a call's CLIENT span as one request of `out`.
    pub fn push_call(&mut self, request: &CompletedRequest, out: &mut EncodedSpans) {
        let attributes = &mut self.attributes;
        attributes.clear();
        shared_attributes(request, |key, value| match value {
            Shared::Static(text) | Shared::Str(text) => attributes.str(key, text),
            Shared::Int(number) => attributes.int(key, number),
        });
        let method = crate::http::method_attribute(&request.request.method);
        if method == "_OTHER" {
            attributes.str("http.request.method_original", &request.request.method);
        }
        if let Some((server, _)) = called_server(request) {
            // Host as the request gave it (with its port), and the path.
            let host = request.request.host.as_deref().unwrap_or(&server);
            let full = [scheme(request), "://", host, &request.request.path].concat();
            attributes.str("url.full", &full);
        }
        if let Some((address, port)) = peer(request) {
            let address = StackText::<46>::address(address);
            attributes.str("network.peer.address", address.as_str());
            attributes.int("network.peer.port", i64::from(port));
        }
        attributes.int("process.pid", i64::from(request.tgid));
        let error = call_error(request);
        let ids = &request.ids;
        let name = if method == "_OTHER" { "HTTP" } else { method };
        out.push_span(&Span {
            kind: SpanKind::Client,
            error: error.as_ref().map(StackText::as_str),
            ..self.span(ids, name, (request.start_ns, request.end_ns))
        });
        out.end_request();
    }

    /// The span of `ids`, named `name`, from `start_ns` to `end_ns`, with
    /// the attributes gathered; its kind and status for the caller to set.
    fn span<'a>(
        &'a self,
        ids: &'a SpanIds,
        name: &'a str,
        (start_ns, end_ns): (u64, u64),
    ) -> Span<'a> {
        Span {
            trace_id: ids.trace_id,
            span_id: ids.span_id,
            trace_state: ids.trace_state.as_deref().unwrap_or_default(),
            parent_span_id: ids.parent_span_id,
            name,
            kind: SpanKind::Internal,
            start_unix_ns: self.clock.unix_ns(start_ns),
            end_unix_ns: self.clock.unix_ns(end_ns.max(start_ns)),
            attributes: &self.attributes,
            error: None,
            flags: flags(ids.remote_parent),
        }
    }

    /// Appends the server span, then its "in queue" and "processing"
    /// children, as one request of `out`. `resolved` names the server span
    /// and gives its `http.route`.
    pub fn push(
        &mut self,
        request: &CompletedRequest,
        resolved: &Resolved,
        out: &mut EncodedSpans,
    ) {
        let server_id = request.ids.span_id;
        let attributes = &mut self.attributes;
        attributes.clear();
        shared_attributes(request, |key, value| match value {
            Shared::Static(text) | Shared::Str(text) => attributes.str(key, text),
            Shared::Int(number) => attributes.int(key, number),
        });
        if let Some(route) = &resolved.route {
            attributes.str("http.route", route);
        }
        if crate::http::method_attribute(&request.request.method) == "_OTHER" {
            attributes.str("http.request.method_original", &request.request.method);
        }
        attributes.str("url.path", &request.request.path);
        attributes.int("process.pid", i64::from(request.tgid));
        if let Some((address, port)) = peer(request) {
            // The longest IPv6 text is 45 bytes.
            let address = StackText::<46>::address(address);
            attributes.str("client.address", address.as_str());
            attributes.int("client.port", i64::from(port));
        }
        push_captured_headers(attributes, &request.captured_headers);
        let error = (request.status >= 500)
            .then(|| StackText::<10>::format(format_args!("HTTP {}", request.status)));
        let time = |monotonic_ns| self.clock.unix_ns(monotonic_ns);
        let (start_ns, first_read_ns, end_ns) =
            (request.start_ns, request.first_read_ns, request.end_ns);
        let server = Span {
            kind: SpanKind::Server,
            error: error.as_ref().map(StackText::as_str),
            ..self.span(&request.ids, &resolved.span_name, (start_ns, end_ns))
        };
        out.push_span(&server);
        let none = Attributes::default();
        let child = |span_id, name, (start_ns, end_ns): (u64, u64)| Span {
            span_id,
            parent_span_id: Some(server_id),
            flags: flags(false),
            name,
            kind: SpanKind::Internal,
            start_unix_ns: time(start_ns),
            end_unix_ns: time(end_ns.max(start_ns)),
            attributes: &none,
            error: None,
            ..server
        };
        out.push_span(&child(
            self.ids.new_span_id().to_bytes(),
            "in queue",
            (start_ns, first_read_ns),
        ));
        out.push_span(&child(
            self.ids.new_span_id().to_bytes(),
            "processing",
            (first_read_ns, end_ns),
        ));
        out.end_request();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        common::v1::{AnyValue, ArrayValue, any_value::Value as Val},
        trace::v1::{self, status::StatusCode},
    };
    use opentelemetry_sdk::Resource;
    use prost::Message as _;
    use tracer_common::ConnMeta;

    use super::*;
    use crate::{
        http::RequestHead,
        stats::Stats,
        telemetry::{
            encode::Envelope,
            routes::{RouteConfig, Routes},
        },
    };

    fn request(status: u16) -> CompletedRequest {
        request_to("/work", status)
    }

    /// A finished request to `path`, as the exporter's tests use it too.
    pub(crate) fn request_to(path: &str, status: u16) -> CompletedRequest {
        let mut peer_addr = [0; 16];
        peer_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        CompletedRequest {
            tgid: 7,
            side: crate::events::Side::Server,
            ids: crate::trace_context::SpanIds::root(),
            response_cut_short: false,
            tls: false,
            request: RequestHead {
                method: "GET".into(),
                path: path.into(),
                minor_version: 1,
                head_len: 40,
                host: None,
            },
            status,
            start_ns: 1_000,
            first_read_ns: 1_500,
            end_ns: 9_000,
            meta: Some(ConnMeta {
                family: AF_INET,
                local_port: 8000,
                peer_port: 40000,
                _pad: 0,
                peer_addr,
            }),
            response_bytes: 100,
            response_body_bytes: None,
            captured_headers: Vec::new(),
        }
    }

    fn spans_of(request: &CompletedRequest) -> [v1::Span; 3] {
        let mut routes = Routes::new(RouteConfig::default(), Arc::new(Stats::default()));
        let resolved = routes.resolve(request);
        let mut spans = EncodedSpans::default();
        SpanEncoder::new(Clock::new()).push(request, &resolved, &mut spans);
        assert_eq!(spans.len(), 1);
        let envelope = Envelope::new(&Resource::builder_empty().build(), &scope());
        let request = ExportTraceServiceRequest::decode(&envelope.export_request(&spans)[..])
            .expect("a valid message");
        let [resource_spans] = &request.resource_spans[..] else {
            panic!("one ResourceSpans");
        };
        let [scope_spans] = &resource_spans.scope_spans[..] else {
            panic!("one ScopeSpans");
        };
        assert_eq!(scope_spans.scope, Some(scope()));
        scope_spans.spans.clone().try_into().expect("three spans")
    }

    fn attribute<'a>(span: &'a v1::Span, key: &str) -> Option<&'a Val> {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
    }

    fn string(value: &str) -> Val {
        Val::StringValue(value.into())
    }

    #[test]
    fn server_span_follows_semantic_conventions() {
        let [server, queue, processing] = spans_of(&request(200));
        assert_eq!(server.name, "GET /work");
        assert_eq!(attribute(&server, "http.route"), Some(&string("/work")));
        assert_eq!(server.kind, SpanKind::Server as i32);
        assert_eq!(queue.kind, SpanKind::Internal as i32);
        assert_eq!(
            attribute(&server, "http.request.method"),
            Some(&string("GET"))
        );
        assert_eq!(attribute(&server, "url.path"), Some(&string("/work")));
        assert_eq!(
            attribute(&server, "client.address"),
            Some(&string("127.0.0.1"))
        );
        assert_eq!(
            attribute(&server, "server.port"),
            Some(&Val::IntValue(8000))
        );
        assert_eq!(server.status, Some(v1::Status::default()));
        assert!(server.parent_span_id.is_empty());
        assert_eq!(queue.parent_span_id, server.span_id);
        assert_eq!(processing.parent_span_id, server.span_id);
        assert_eq!(processing.trace_id, server.trace_id);
        assert_ne!(queue.span_id, processing.span_id);
        assert_eq!(queue.end_time_unix_nano - queue.start_time_unix_nano, 500);
        assert_eq!(processing.start_time_unix_nano, queue.end_time_unix_nano);
        assert_eq!(
            server.end_time_unix_nano - server.start_time_unix_nano,
            8_000
        );
        assert_eq!(server.flags, 0x101);
    }

    #[test]
    fn the_span_is_named_after_the_route_and_keeps_the_path() {
        let [server, ..] = spans_of(&request_to("/users/42/orders/7", 200));
        assert_eq!(server.name, "GET /users/{id}/orders/{id}");
        assert_eq!(
            attribute(&server, "http.route"),
            Some(&string("/users/{id}/orders/{id}"))
        );
        assert_eq!(
            attribute(&server, "url.path"),
            Some(&string("/users/42/orders/7"))
        );
        let [no_route, ..] = spans_of(&request_to("*", 200));
        assert_eq!(no_route.name, "GET");
        assert_eq!(attribute(&no_route, "http.route"), None);
    }

    #[test]
    fn captured_headers_become_string_arrays() {
        let mut request = request(200);
        request.captured_headers = vec![
            ("x-tenant".into(), "a".into()),
            ("user-agent".into(), "curl/8".into()),
            ("x-tenant".into(), "b".into()),
        ];
        let [server, queue, _] = spans_of(&request);
        let strings = |values: &[&str]| {
            Val::ArrayValue(ArrayValue {
                values: values
                    .iter()
                    .map(|value| AnyValue {
                        value: Some(string(value)),
                    })
                    .collect(),
            })
        };
        assert_eq!(
            attribute(&server, "http.request.header.x-tenant"),
            Some(&strings(&["a", "b"]))
        );
        assert_eq!(
            attribute(&server, "http.request.header.user-agent"),
            Some(&strings(&["curl/8"]))
        );
        assert_eq!(
            attribute(&server, "user_agent.original"),
            Some(&string("curl/8"))
        );
        assert!(queue.attributes.is_empty(), "on the server span only");
    }

    #[test]
    fn server_errors_are_errors() {
        let [server, ..] = spans_of(&request(503));
        let status = server.status.clone().expect("a status");
        assert_eq!(status.code, StatusCode::Error as i32);
        assert_eq!(status.message, "HTTP 503");
        assert_eq!(attribute(&server, "error.type"), Some(&string("503")));
        let [client_error, ..] = spans_of(&request(404));
        assert_eq!(client_error.status, Some(v1::Status::default()));
        assert_eq!(attribute(&client_error, "error.type"), None);
    }

    #[test]
    fn metric_attributes_are_the_span_s_first() {
        let request = request(503);
        let metric = metric_attributes(&request);
        let [server, ..] = spans_of(&request);
        let keys: Vec<&str> = metric.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "http.request.method",
                "http.response.status_code",
                "url.scheme",
                "network.protocol.name",
                "network.protocol.version",
                "server.port",
                "error.type",
            ]
        );
        for (kv, span_kv) in metric.into_iter().zip(&server.attributes) {
            assert_eq!(kv.key.as_str(), span_kv.key);
            let value = span_kv.value.clone().and_then(|value| value.value);
            assert_eq!(Some(AnyValue::from(kv.value).value.unwrap()), value);
        }
    }

    /// One call's CLIENT span, decoded.
    fn call_span(request: &CompletedRequest) -> v1::Span {
        let mut spans = EncodedSpans::default();
        SpanEncoder::new(Clock::new()).push_call(request, &mut spans);
        assert_eq!(spans.spans(), 1);
        let envelope = Envelope::new(&Resource::builder_empty().build(), &scope());
        let request = ExportTraceServiceRequest::decode(&envelope.export_request(&spans)[..])
            .expect("a valid message");
        request.resource_spans[0].scope_spans[0].spans[0].clone()
    }

    fn call_to(host: Option<&str>, status: u16) -> CompletedRequest {
        let mut call = request_to("/api/items", status);
        call.side = Side::Client;
        call.request.host = host.map(str::to_owned);
        call.ids.parent_span_id = Some([3; 8]);
        call
    }

    #[test]
    fn a_call_is_a_client_span_named_after_its_method() {
        let call = call_to(Some("api.test:8080"), 200);
        let span = call_span(&call);
        assert_eq!(span.name, "GET");
        assert_eq!(span.kind, SpanKind::Client as i32);
        assert_eq!(span.parent_span_id, vec![3; 8]);
        assert_eq!(span.trace_id, call.ids.trace_id.to_vec());
        assert_eq!(span.status, Some(v1::Status::default()));
        for (key, value) in [
            ("http.request.method", string("GET")),
            ("server.address", string("api.test")),
            ("server.port", Val::IntValue(8080)),
            ("url.full", string("http://api.test:8080/api/items")),
            ("http.response.status_code", Val::IntValue(200)),
            ("network.peer.address", string("127.0.0.1")),
            ("network.peer.port", Val::IntValue(40000)),
        ] {
            assert_eq!(attribute(&span, key), Some(&value), "{key}");
        }
        assert_eq!(attribute(&span, "http.route"), None);
        let without_host = call_span(&call_to(None, 200));
        assert_eq!(
            attribute(&without_host, "server.address"),
            Some(&string("127.0.0.1"))
        );
        assert_eq!(
            attribute(&without_host, "server.port"),
            Some(&Val::IntValue(40000))
        );
        let default_port = call_span(&call_to(Some("api.test"), 200));
        assert_eq!(
            attribute(&default_port, "server.port"),
            Some(&Val::IntValue(80))
        );
        assert_eq!(
            attribute(&default_port, "url.full"),
            Some(&string("http://api.test/api/items"))
        );
    }

    #[test]
    fn a_call_over_tls_is_https() {
        let call = CompletedRequest {
            tls: true,
            ..call_to(Some("api.test"), 200)
        };
        let span = call_span(&call);
        assert_eq!(
            attribute(&span, "url.full"),
            Some(&string("https://api.test/api/items"))
        );
        assert_eq!(attribute(&span, "url.scheme"), Some(&string("https")));
        assert_eq!(attribute(&span, "server.port"), Some(&Val::IntValue(443)));
        let served = CompletedRequest {
            tls: true,
            ..request(200)
        };
        let [server, ..] = spans_of(&served);
        assert_eq!(attribute(&server, "url.scheme"), Some(&string("https")));
    }

    #[test]
    fn a_call_that_failed_is_an_error_4xx_included() {
        for (call, error) in [
            (call_to(Some("a"), 404), "404"),
            (call_to(Some("a"), 503), "503"),
            (
                CompletedRequest {
                    response_cut_short: true,
                    ..call_to(Some("a"), 200)
                },
                "response_incomplete",
            ),
        ] {
            let span = call_span(&call);
            assert_eq!(
                span.status.as_ref().map(|status| status.code),
                Some(StatusCode::Error as i32)
            );
            assert_eq!(attribute(&span, "error.type"), Some(&string(error)));
        }
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let addresses = [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "192.168.1.20",
            "2001:db8::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ];
        for text in addresses {
            let address: IpAddr = text.parse().unwrap();
            assert_eq!(StackText::<46>::address(address).as_str(), text);
        }
    }
}
