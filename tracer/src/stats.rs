//! Everything the tracer could not turn into telemetry, counted. Shared by
//! the reader, the exporter and the periodic report; also exported as the
//! metric `tracer.dropped` (by `reason`) so losses are visible upstream.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tracer_common::{KERNEL_COUNTERS, KernelCounter};

use crate::assembly::AssemblyCounters;

#[derive(Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub spans_exported: AtomicU64,
    /// Requests dropped from a full export queue or unsent at shutdown.
    pub export_dropped: AtomicU64,
    pub queue_full: AtomicU64,
    pub bad_records: AtomicU64,
    kernel: [AtomicU64; KERNEL_COUNTERS as usize],
    unparseable_requests: AtomicU64,
    unparseable_responses: AtomicU64,
    responses_without_request: AtomicU64,
    requests_without_response: AtomicU64,
    requests_lost_to_gaps: AtomicU64,
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
    }

    /// Every loss counter with its reason, as exported and logged.
    pub fn dropped(&self) -> Vec<(&'static str, u64)> {
        let kernel = |counter: KernelCounter| self.kernel[counter as usize].load(Relaxed);
        vec![
            ("ring_buffer_full", kernel(KernelCounter::RingBufferFull)),
            ("capture_failed", kernel(KernelCounter::CaptureFailed)),
            (
                "connection_table_full",
                kernel(KernelCounter::ConnTableFull),
            ),
            ("task_table_full", kernel(KernelCounter::TaskTableFull)),
            (
                "request_start_lost",
                kernel(KernelCounter::RequestStartLost),
            ),
            (
                "request_record_lost",
                self.requests_lost_to_gaps.load(Relaxed),
            ),
            ("bad_record", self.bad_records.load(Relaxed)),
            (
                "unparseable_request",
                self.unparseable_requests.load(Relaxed),
            ),
            (
                "unparseable_response",
                self.unparseable_responses.load(Relaxed),
            ),
            (
                "response_without_request",
                self.responses_without_request.load(Relaxed),
            ),
            (
                "request_without_response",
                self.requests_without_response.load(Relaxed),
            ),
            ("export_queue_full", self.queue_full.load(Relaxed)),
            ("export_dropped", self.export_dropped.load(Relaxed)),
        ]
    }

    /// One line for the log: requests, exported spans, and non-zero losses.
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
        line
    }
}
