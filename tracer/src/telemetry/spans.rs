//! A completed request as OpenTelemetry spans, following the HTTP semantic
//! conventions: a SERVER span `"{method} {http.route}"` (`"{method}"` without
//! a route, never the raw path: [`super::routes`]) and two INTERNAL children
//! that say where the time went, "in queue" (handshake to first byte read:
//! the accept queue, invisible to an in-process SDK) and "processing".
use std::{borrow::Cow, net::IpAddr};

use opentelemetry::{
    Array, InstrumentationScope, KeyValue, StringValue, Value,
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SpanData, SpanEvents, SpanLinks};
use tracer_common::{AF_INET, AF_INET6};

use super::{clock::Clock, routes::Resolved};
use crate::assembly::CompletedRequest;

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

/// Attributes shared by the span and the duration metric.
pub fn metric_attributes(request: &CompletedRequest) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("http.request.method", request.request.method.clone()),
        KeyValue::new("http.response.status_code", i64::from(request.status)),
        KeyValue::new("url.scheme", "http"),
        KeyValue::new("network.protocol.name", "http"),
        KeyValue::new(
            "network.protocol.version",
            if request.request.minor_version == 0 {
                "1.0"
            } else {
                "1.1"
            },
        ),
    ];
    if let Some(meta) = request.meta {
        attributes.push(KeyValue::new("server.port", i64::from(meta.local_port)));
    }
    if request.status >= 500 {
        attributes.push(KeyValue::new("error.type", request.status.to_string()));
    }
    attributes
}

/// `--capture-header` values as the semantic conventions give them:
/// `http.request.header.<name>`, a string array holding every value of the
/// header in order, and `user_agent.original` for User-Agent.
fn push_captured_headers(attributes: &mut Vec<KeyValue>, headers: &[(String, String)]) {
    let mut names: Vec<&str> = Vec::new();
    for (name, value) in headers {
        if name == "user-agent" && !names.contains(&"user-agent") {
            attributes.push(KeyValue::new("user_agent.original", value.clone()));
        }
        if !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    for name in names {
        let values: Vec<StringValue> = headers
            .iter()
            .filter(|(other, _)| other == name)
            .map(|(_, value)| value.clone().into())
            .collect();
        attributes.push(KeyValue::new(
            format!("http.request.header.{name}"),
            Value::Array(Array::String(values)),
        ));
    }
}

pub struct SpanBuilder {
    ids: RandomIdGenerator,
    scope: InstrumentationScope,
    clock: Clock,
}

impl SpanBuilder {
    pub fn new(clock: Clock) -> Self {
        Self {
            ids: RandomIdGenerator::default(),
            scope: InstrumentationScope::builder("tracer")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            clock,
        }
    }

    /// The server span, then its "in queue" and "processing" children.
    /// `attributes` are the request's [`metric_attributes`], already built
    /// for the duration histogram; the span-only ones are added to them.
    /// `resolved` names the span and gives its `http.route`.
    pub fn spans(
        &self,
        request: &CompletedRequest,
        mut attributes: Vec<KeyValue>,
        resolved: &Resolved,
    ) -> [SpanData; 3] {
        let trace_id = self.ids.new_trace_id();
        let server_id = self.ids.new_span_id();
        if let Some(route) = &resolved.route {
            attributes.push(KeyValue::new("http.route", route.clone()));
        }
        attributes.push(KeyValue::new("url.path", request.request.path.clone()));
        attributes.push(KeyValue::new("process.pid", i64::from(request.tgid)));
        if let Some((address, port)) = peer(request) {
            attributes.push(KeyValue::new("client.address", address.to_string()));
            attributes.push(KeyValue::new("client.port", i64::from(port)));
        }
        push_captured_headers(&mut attributes, &request.captured_headers);
        let status = if request.status >= 500 {
            Status::error(format!("HTTP {}", request.status))
        } else {
            Status::Unset
        };
        let server = self.span(
            trace_id,
            server_id,
            SpanId::INVALID,
            SpanKind::Server,
            resolved.span_name.clone().into(),
            (request.start_ns, request.end_ns),
            attributes,
            status,
        );
        let queue = self.span(
            trace_id,
            self.ids.new_span_id(),
            server_id,
            SpanKind::Internal,
            "in queue".into(),
            (request.start_ns, request.first_read_ns),
            Vec::new(),
            Status::Unset,
        );
        let processing = self.span(
            trace_id,
            self.ids.new_span_id(),
            server_id,
            SpanKind::Internal,
            "processing".into(),
            (request.first_read_ns, request.end_ns),
            Vec::new(),
            Status::Unset,
        );
        [server, queue, processing]
    }

    #[expect(clippy::too_many_arguments, reason = "one call per field of SpanData")]
    fn span(
        &self,
        trace_id: TraceId,
        span_id: SpanId,
        parent_span_id: SpanId,
        span_kind: SpanKind,
        name: Cow<'static, str>,
        (start_ns, end_ns): (u64, u64),
        attributes: Vec<KeyValue>,
        status: Status,
    ) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                trace_id,
                span_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id,
            parent_span_is_remote: false,
            span_kind,
            name,
            start_time: self.clock.system_time(start_ns),
            end_time: self.clock.system_time(end_ns.max(start_ns)),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use tracer_common::ConnMeta;

    use std::sync::Arc;

    use super::*;
    use crate::{
        http::RequestHead,
        stats::Stats,
        telemetry::routes::{RouteConfig, Routes},
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
            request: RequestHead {
                method: "GET".into(),
                path: path.into(),
                minor_version: 1,
                head_len: 40,
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

    fn spans_of(request: &CompletedRequest) -> [SpanData; 3] {
        let mut routes = Routes::new(RouteConfig::default(), Arc::new(Stats::default()));
        let resolved = routes.resolve(request);
        SpanBuilder::new(Clock::new()).spans(request, metric_attributes(request), &resolved)
    }

    fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a opentelemetry::Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    #[test]
    fn server_span_follows_semantic_conventions() {
        let [server, queue, processing] = spans_of(&request(200));
        assert_eq!(server.name, "GET /work");
        assert_eq!(attribute(&server, "http.route").unwrap().as_str(), "/work");
        assert_eq!(server.span_kind, SpanKind::Server);
        assert_eq!(
            attribute(&server, "http.request.method").unwrap().as_str(),
            "GET"
        );
        assert_eq!(attribute(&server, "url.path").unwrap().as_str(), "/work");
        assert_eq!(
            attribute(&server, "client.address").unwrap().as_str(),
            "127.0.0.1"
        );
        assert_eq!(
            attribute(&server, "server.port"),
            Some(&opentelemetry::Value::I64(8000))
        );
        assert_eq!(server.status, Status::Unset);
        assert_eq!(queue.parent_span_id, server.span_context.span_id());
        assert_eq!(
            processing.span_context.trace_id(),
            server.span_context.trace_id()
        );
        let queued = queue.end_time.duration_since(queue.start_time).unwrap();
        assert_eq!(queued.as_nanos(), 500);
        assert_eq!(
            server
                .end_time
                .duration_since(server.start_time)
                .unwrap()
                .as_nanos(),
            8_000
        );
    }

    #[test]
    fn the_span_is_named_after_the_route_and_keeps_the_path() {
        let [server, ..] = spans_of(&request_to("/users/42/orders/7", 200));
        assert_eq!(server.name, "GET /users/{id}/orders/{id}");
        assert_eq!(
            attribute(&server, "http.route").unwrap().as_str(),
            "/users/{id}/orders/{id}"
        );
        assert_eq!(
            attribute(&server, "url.path").unwrap().as_str(),
            "/users/42/orders/7"
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
            opentelemetry::Value::Array(opentelemetry::Array::String(
                values.iter().map(|v| v.to_string().into()).collect(),
            ))
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
            attribute(&server, "user_agent.original").unwrap().as_str(),
            "curl/8"
        );
        assert!(queue.attributes.is_empty(), "on the server span only");
    }

    #[test]
    fn server_errors_are_errors() {
        let [server, ..] = spans_of(&request(503));
        assert!(matches!(server.status, Status::Error { .. }));
        assert_eq!(attribute(&server, "error.type").unwrap().as_str(), "503");
        let [client_error, ..] = spans_of(&request(404));
        assert_eq!(client_error.status, Status::Unset);
    }
}
