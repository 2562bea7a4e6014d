//! `--print json`: one JSON object per finished request on stdout.
use std::collections::BTreeMap;

use serde::Serialize;

use super::clock::Clock;
use crate::{
    assembly::CompletedRequest,
    events::Side,
    telemetry::spans::{called_server, peer},
};

#[derive(Serialize)]
struct Line<'a> {
    /// The request's service (its instance's `service.name`).
    service: &'a str,
    /// `server` (a request the process served) or `client` (a call it made).
    kind: &'static str,
    /// Lowercase hex, as W3C `traceparent` writes them.
    trace_id: String,
    span_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_span_id: Option<String>,
    /// A call's server, as its `Host` header (else its peer) names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    server_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_port: Option<u16>,
    method: &'a str,
    path: &'a str,
    status: u16,
    start_unix_ns: u64,
    end_unix_ns: u64,
    duration_ns: u64,
    queue_ns: u64,
    pid: u32,
    peer_address: Option<String>,
    peer_port: Option<u16>,
    response_bytes: u64,
    /// `--capture-header` values by name, in the order they came.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    request_headers: BTreeMap<&'a str, Vec<&'a str>>,
}

pub fn line(request: &CompletedRequest, service: &str, clock: &Clock) -> String {
    let peer = peer(request);
    let mut request_headers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, value) in &request.captured_headers {
        request_headers.entry(name).or_default().push(value);
    }
    let ids = &request.ids;
    let (kind, server) = match request.side {
        Side::Server => ("server", None),
        Side::Client => ("client", called_server(request)),
    };
    let (server_address, server_port) = server.unzip();
    let line = Line {
        service,
        kind,
        trace_id: hex(&ids.trace_id),
        span_id: hex(&ids.span_id),
        parent_span_id: ids.parent_span_id.as_ref().map(|parent| hex(parent)),
        server_address,
        server_port,
        method: &request.request.method,
        path: &request.request.path,
        status: request.status,
        start_unix_ns: clock.unix_ns(request.start_ns),
        end_unix_ns: clock.unix_ns(request.end_ns),
        duration_ns: request.end_ns.saturating_sub(request.start_ns),
        queue_ns: request.first_read_ns.saturating_sub(request.start_ns),
        pid: request.tgid,
        peer_address: peer.map(|(address, _)| address.to_string()),
        peer_port: peer.map(|(_, port)| port),
        response_bytes: request.response_bytes,
        request_headers,
    };
    serde_json::to_string(&line).unwrap_or_default()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::spans::tests::request_to;

    fn json(request: &CompletedRequest) -> serde_json::Value {
        serde_json::from_str(&line(request, "svc", &Clock::new())).expect("a JSON line")
    }

    #[test]
    fn captured_headers_by_name_in_order_and_only_when_there_are_some() {
        let mut request = request_to("/work", 200);
        assert!(json(&request).get("request_headers").is_none());
        request.captured_headers = vec![
            ("x-tenant".into(), "a".into()),
            ("user-agent".into(), "curl/8".into()),
            ("x-tenant".into(), "b".into()),
        ];
        assert_eq!(
            json(&request)["request_headers"],
            serde_json::json!({"x-tenant": ["a", "b"], "user-agent": ["curl/8"]})
        );
    }

    #[test]
    fn kind_and_ids_and_for_a_call_its_server() {
        let mut request = request_to("/work", 200);
        request.ids.trace_id = [0xab; 16];
        request.ids.span_id = [0x01; 8];
        request.ids.parent_span_id = None;
        let server = json(&request);
        assert_eq!(server["kind"], "server");
        assert_eq!(server["trace_id"], "ab".repeat(16));
        assert_eq!(server["span_id"], "01".repeat(8));
        assert!(server.get("parent_span_id").is_none());
        assert!(server.get("server_address").is_none());
        request.side = Side::Client;
        request.ids.parent_span_id = Some([0xff; 8]);
        request.request.host = Some("api.test:8080".into());
        let call = json(&request);
        assert_eq!(call["kind"], "client");
        assert_eq!(call["parent_span_id"], "ff".repeat(8));
        assert_eq!(call["server_address"], "api.test");
        assert_eq!(call["server_port"], 8080);
    }
}
