//! `--print json`: one JSON object per finished request on stdout.
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
}

pub fn line(request: &CompletedRequest, service: &str, clock: &Clock) -> String {
    let peer = peer(request);
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
    };
    serde_json::to_string(&line).unwrap_or_default()
}
