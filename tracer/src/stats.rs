//! Everything the tracer could not turn into telemetry, counted. Shared by
//! the reader, the exporter and the periodic report; also exported as the
//! metric `tracer.dropped` (by `reason`) so losses are visible upstream.
//! Requests exported past a cardinality limit are counted too, apart: they
//! are no loss (`tracer.cardinality_overflow`, by `limit`).
use std::{
    fmt,
    str::FromStr,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use tracer_common::{KERNEL_COUNTERS, KernelCounter};

use crate::assembly::AssemblyCounters;

/// Why something did not become telemetry: the `reason` attribute of the
/// exported `tracer.dropped` counter.
///
/// [`DropReason::counts_requests`] holds for the reasons where each count is
/// one request the tracer saw and could not trace, and that request is
/// counted under no other reason: spans + the sum of these = requests
/// served. The other reasons count records, buffers, map inserts or
/// responses; the requests those cost either show up again under a request
/// reason (a lost record that started a request is `request_start_lost`;
/// any other breaks the connection's record numbering, and what was pending
/// on it is `request_record_lost`) or cannot be counted at all (a fork or
/// connection the tables refused, a request start whose bytes could not be
/// copied).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// A record the ring buffer had no room for (any kind of record).
    RingBufferFull,
    /// A buffer whose bytes could not be copied; its record goes without
    /// them. Buffers of either direction, not requests.
    CaptureFailed,
    /// A connection-map insert refused, counted at each attempt: one
    /// connection can count many times.
    ConnectionTableFull,
    /// A fork that went untraced: a whole process, its requests unknown.
    TaskTableFull,
    /// A request whose first read's record was lost (ring buffer full).
    RequestStartLost,
    /// A request pending when a later record of its connection was lost.
    RequestRecordLost,
    /// A ring-buffer record the daemon could not decode.
    BadRecord,
    /// A request head that is not HTTP (or never ends).
    UnparseableRequest,
    /// A response head that is not HTTP, counted at each write: its request
    /// stays unanswered and counts as `request_without_response`.
    UnparseableResponse,
    /// A response with no request waiting: its request was already counted
    /// (lost record, unparseable head) or came before tracing started.
    ResponseWithoutRequest,
    /// A request whose connection ended before it was answered.
    RequestWithoutResponse,
    /// A completed request the export queue had no room for.
    ExportQueueFull,
    /// A request dropped by the exporter: the oldest beyond `--queue-size`
    /// while the collector is away, or still held at shutdown.
    ExportDropped,
    /// A request of a process the daemon could not place in a service (its
    /// selection was lost with a full ring buffer, or it exited long ago).
    Unattributed,
    /// A span the collector refused in a partial success: spans, not
    /// requests (one request's three spans need not share a fate).
    SpansRejected,
    /// A read where a `--capture-header` header may have been missed: it
    /// ended inside a line that begins like one, its head went on past the
    /// 8 KiB scanned, or it held more values than one read may send.
    HeaderMissed,
    /// A captured header value given to no request (its read's record was
    /// lost); the values of a request dropped for another reason go with it.
    HeaderValueLost,
    /// A captured header value cut at 128 bytes or by the end of the bytes
    /// scanned: sent, but not whole.
    HeaderValueTruncated,
    /// An incoming `traceparent` was malformed, all-zero, cut or repeated:
    /// its request started a trace of its own.
    TraceparentInvalid,
    /// HTTPS bytes OpenSSL handed over before any call of their connection
    /// touched its socket (they came buffered with the handshake): no
    /// record, so the request they belong to is unseen. Buffers, not
    /// requests.
    TlsSocketUnknown,
}

impl DropReason {
    /// Every reason, in the order they are exported and logged.
    pub const ALL: [DropReason; 20] = [
        Self::RingBufferFull,
        Self::CaptureFailed,
        Self::ConnectionTableFull,
        Self::TaskTableFull,
        Self::RequestStartLost,
        Self::RequestRecordLost,
        Self::BadRecord,
        Self::UnparseableRequest,
        Self::UnparseableResponse,
        Self::ResponseWithoutRequest,
        Self::RequestWithoutResponse,
        Self::ExportQueueFull,
        Self::ExportDropped,
        Self::Unattributed,
        Self::SpansRejected,
        Self::HeaderMissed,
        Self::HeaderValueLost,
        Self::HeaderValueTruncated,
        Self::TraceparentInvalid,
        Self::TlsSocketUnknown,
    ];

    /// The exported `reason` attribute value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RingBufferFull => "ring_buffer_full",
            Self::CaptureFailed => "capture_failed",
            Self::ConnectionTableFull => "connection_table_full",
            Self::TaskTableFull => "task_table_full",
            Self::RequestStartLost => "request_start_lost",
            Self::RequestRecordLost => "request_record_lost",
            Self::BadRecord => "bad_record",
            Self::UnparseableRequest => "unparseable_request",
            Self::UnparseableResponse => "unparseable_response",
            Self::ResponseWithoutRequest => "response_without_request",
            Self::RequestWithoutResponse => "request_without_response",
            Self::ExportQueueFull => "export_queue_full",
            Self::ExportDropped => "export_dropped",
            Self::Unattributed => "unattributed_request",
            Self::SpansRejected => "spans_rejected",
            Self::HeaderMissed => "header_missed",
            Self::HeaderValueLost => "header_value_lost",
            Self::HeaderValueTruncated => "header_value_truncated",
            Self::TraceparentInvalid => "traceparent_invalid",
            Self::TlsSocketUnknown => "tls_socket_unknown",
        }
    }

    /// Whether each count is one lost request, counted nowhere else (see
    /// the type's documentation).
    pub const fn counts_requests(self) -> bool {
        match self {
            Self::RequestStartLost
            | Self::RequestRecordLost
            | Self::UnparseableRequest
            | Self::RequestWithoutResponse
            | Self::ExportQueueFull
            | Self::ExportDropped
            | Self::Unattributed => true,
            Self::RingBufferFull
            | Self::CaptureFailed
            | Self::ConnectionTableFull
            | Self::TaskTableFull
            | Self::BadRecord
            | Self::UnparseableResponse
            | Self::ResponseWithoutRequest
            | Self::SpansRejected
            | Self::TlsSocketUnknown => false,
            Self::HeaderMissed
            | Self::HeaderValueLost
            | Self::HeaderValueTruncated
            | Self::TraceparentInvalid => false,
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown drop reason {0:?}")]
pub struct UnknownDropReason(pub String);

impl FromStr for DropReason {
    type Err = UnknownDropReason;

    fn from_str(reason: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|known| known.as_str() == reason)
            .ok_or_else(|| UnknownDropReason(reason.to_owned()))
    }
}

/// A cardinality limit a request went past (docs/routes.md): the `limit`
/// attribute of the exported `tracer.cardinality_overflow` counter. The
/// request is still exported, under the limit's overflow value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// `--route-limit`: the duration metric recorded `http.route=""` with
    /// `otel.metric.overflow=true`.
    Route,
    /// `--span-name-limit`: the server span was named `{method}`.
    SpanName,
}

impl Overflow {
    /// Every limit, in the order they are exported and logged.
    pub const ALL: [Overflow; 2] = [Self::Route, Self::SpanName];

    /// The exported `limit` attribute value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Route => "route",
            Self::SpanName => "span_name",
        }
    }
}

#[derive(Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub spans_exported: AtomicU64,
    /// Requests dropped from a full export queue or unsent at shutdown.
    pub export_dropped: AtomicU64,
    pub queue_full: AtomicU64,
    pub bad_records: AtomicU64,
    pub unattributed: AtomicU64,
    /// Spans the collector refused (OTLP partial success).
    pub spans_rejected: AtomicU64,
    kernel: [AtomicU64; KERNEL_COUNTERS as usize],
    unparseable_requests: AtomicU64,
    unparseable_responses: AtomicU64,
    responses_without_request: AtomicU64,
    requests_without_response: AtomicU64,
    requests_lost_to_gaps: AtomicU64,
    header_values_lost: AtomicU64,
    header_values_truncated: AtomicU64,
    traceparent_invalid: AtomicU64,
    overflows: [AtomicU64; Overflow::ALL.len()],
}

impl Stats {
    pub fn set_kernel(&self, counters: [u64; KERNEL_COUNTERS as usize]) {
        for (slot, value) in self.kernel.iter().zip(counters) {
            slot.store(value, Relaxed);
        }
    }

    pub fn set_assembly(&self, counters: AssemblyCounters) {
        self.unparseable_requests
            .store(counters.unparseable_requests, Relaxed);
        self.unparseable_responses
            .store(counters.unparseable_responses, Relaxed);
        self.responses_without_request
            .store(counters.responses_without_request, Relaxed);
        self.requests_without_response
            .store(counters.requests_without_response, Relaxed);
        self.requests_lost_to_gaps
            .store(counters.requests_lost_to_gaps, Relaxed);
        self.header_values_lost
            .store(counters.header_values_lost, Relaxed);
        self.header_values_truncated
            .store(counters.header_values_truncated, Relaxed);
        self.traceparent_invalid
            .store(counters.traceparent_invalid, Relaxed);
    }

    /// Every loss counter with its reason, as exported and logged.
    pub fn dropped(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .map(|reason| (reason, self.count(reason)))
            .into_iter()
    }

    fn count(&self, reason: DropReason) -> u64 {
        let kernel = |counter: KernelCounter| self.kernel[counter as usize].load(Relaxed);
        match reason {
            DropReason::RingBufferFull => kernel(KernelCounter::RingBufferFull),
            DropReason::CaptureFailed => kernel(KernelCounter::CaptureFailed),
            DropReason::ConnectionTableFull => kernel(KernelCounter::ConnTableFull),
            DropReason::TaskTableFull => kernel(KernelCounter::TaskTableFull),
            DropReason::RequestStartLost => kernel(KernelCounter::RequestStartLost),
            DropReason::RequestRecordLost => self.requests_lost_to_gaps.load(Relaxed),
            DropReason::BadRecord => self.bad_records.load(Relaxed),
            DropReason::UnparseableRequest => self.unparseable_requests.load(Relaxed),
            DropReason::UnparseableResponse => self.unparseable_responses.load(Relaxed),
            DropReason::ResponseWithoutRequest => self.responses_without_request.load(Relaxed),
            DropReason::RequestWithoutResponse => self.requests_without_response.load(Relaxed),
            DropReason::ExportQueueFull => self.queue_full.load(Relaxed),
            DropReason::ExportDropped => self.export_dropped.load(Relaxed),
            DropReason::Unattributed => self.unattributed.load(Relaxed),
            DropReason::SpansRejected => self.spans_rejected.load(Relaxed),
            DropReason::HeaderMissed => kernel(KernelCounter::HeaderMissed),
            DropReason::HeaderValueLost => self.header_values_lost.load(Relaxed),
            DropReason::HeaderValueTruncated => self.header_values_truncated.load(Relaxed),
            DropReason::TraceparentInvalid => self.traceparent_invalid.load(Relaxed),
            DropReason::TlsSocketUnknown => kernel(KernelCounter::TlsSocketUnknown),
        }
    }

    pub fn count_overflow(&self, limit: Overflow) {
        self.overflows[limit as usize].fetch_add(1, Relaxed);
    }

    /// Every overflow counter with its limit, as exported and logged.
    pub fn overflows(&self) -> impl Iterator<Item = (Overflow, u64)> + '_ {
        Overflow::ALL
            .into_iter()
            .map(|limit| (limit, self.overflows[limit as usize].load(Relaxed)))
    }

    /// One line for the log: requests, exported spans, and non-zero losses
    /// and overflows.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "requests={} spans_exported={}",
            self.requests.load(Relaxed),
            self.spans_exported.load(Relaxed)
        );
        for (reason, count) in self.dropped() {
            if count > 0 {
                line.push_str(&format!(" {reason}={count}"));
            }
        }
        for (limit, count) in self.overflows() {
            if count > 0 {
                line.push_str(&format!(" {}_overflow={count}", limit.as_str()));
            }
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_back_from_their_names() {
        for reason in DropReason::ALL {
            assert_eq!(reason.as_str().parse::<DropReason>().ok(), Some(reason));
        }
        assert!("ring buffer full".parse::<DropReason>().is_err());
    }

    #[test]
    fn dropped_reports_every_reason_once_in_order() {
        let stats = Stats::default();
        stats.queue_full.store(3, Relaxed);
        let dropped: Vec<_> = stats.dropped().collect();
        let reasons: Vec<_> = dropped.iter().map(|(reason, _)| *reason).collect();
        assert_eq!(reasons, DropReason::ALL);
        assert!(dropped.contains(&(DropReason::ExportQueueFull, 3)));
    }

    #[test]
    fn overflows_are_logged_apart_from_losses() {
        let stats = Stats::default();
        assert!(!stats.summary().contains("overflow"));
        stats.count_overflow(Overflow::SpanName);
        stats.count_overflow(Overflow::SpanName);
        assert!(stats.summary().ends_with(" span_name_overflow=2"));
        assert_eq!(
            stats.overflows().collect::<Vec<_>>(),
            [(Overflow::Route, 0), (Overflow::SpanName, 2)]
        );
        assert!(stats.dropped().all(|(_, count)| count == 0));
    }
}
