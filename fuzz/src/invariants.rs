//! The invariants the `records` and `assembly` targets check on the spans
//! the assembler emits (`Witness`), and feeding records through them.
use std::collections::HashMap;

use tracer::{
    assembly::{Assembler, CompletedRequest},
    events::{self, Event},
};

use crate::decode_checked;

/// Remembers the bytes fed to the assembler, per socket and direction, and
/// checks the spans it emits against them: every span's method and path,
/// and its status, were in those bytes (no invented span); no more spans
/// than request lines with a version (`HTTP/1.`) fed.
#[derive(Default)]
pub struct Witness {
    recv: HashMap<u64, Vec<u8>>,
    send: HashMap<u64, Vec<u8>>,
    pub(crate) spans: Vec<CompletedRequest>,
}

impl Witness {
    pub fn observe(&mut self, event: &Event<'_>) {
        if let Event::Data(data) = event {
            let streams = match data.direction {
                events::Direction::Recv => &mut self.recv,
                events::Direction::Send => &mut self.send,
            };
            streams
                .entry(data.sock)
                .or_default()
                .extend_from_slice(data.payload);
        }
    }

    /// Takes the spans emitted so far; `monotonic` when the input's clock
    /// never went back, so that each span's times are in order.
    pub fn spans(&mut self, done: &mut Vec<CompletedRequest>, monotonic: bool) {
        for span in done.iter() {
            let line = format!("{} {}", span.request.method, span.request.path);
            assert!(
                self.recv
                    .values()
                    .any(|bytes| contains(bytes, line.as_bytes())),
                "invented span: {line:?} was never read"
            );
            let status = format!(" {:03}", span.status);
            assert!(
                self.send
                    .values()
                    .any(|bytes| contains(bytes, status.as_bytes())),
                "invented span: status {} was never written",
                span.status
            );
            assert!(span.request.minor_version <= 1);
            if monotonic {
                assert!(
                    span.start_ns <= span.first_read_ns && span.first_read_ns <= span.end_ns,
                    "times out of order: {span:?}"
                );
            }
        }
        self.spans.append(done);
    }

    /// At the end of an input: no more spans than request lines fed.
    pub fn finish(&self) {
        let request_lines: usize = self
            .recv
            .values()
            .map(|bytes| count(bytes, b"HTTP/1."))
            .sum();
        assert!(
            self.spans.len() <= request_lines,
            "{} spans from {request_lines} request lines",
            self.spans.len()
        );
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// Feeds records to an assembler, checking every invariant; returns the spans.
pub fn feed_records<'a>(records: impl IntoIterator<Item = &'a [u8]>) -> usize {
    let mut assembler = Assembler::new(false);
    let mut witness = Witness::default();
    let mut done = Vec::new();
    for record in records {
        if let Some(event) = decode_checked(record) {
            witness.observe(&event);
            assembler.handle(&event, &mut done);
            witness.spans(&mut done, false);
        }
    }
    assembler.drain(&mut done);
    witness.spans(&mut done, false);
    assert_eq!(assembler.open_connections(), 0);
    witness.finish();
    witness.spans.len()
}
