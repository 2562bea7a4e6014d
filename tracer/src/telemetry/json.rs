//! `--print json`: one JSON object per finished request on stdout.
use std::collections::BTreeMap;

use serde::Serialize;

use super::clock::Clock;
use crate::{assembly::CompletedRequest, telemetry::spans::peer};

#[derive(Serialize)]
struct Line<'a> {
    /// The request's service (its instance's `service.name`).
    service: &'a str,
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
    let line = Line {
        service,
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
}
