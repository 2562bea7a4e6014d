//! Which requests become spans: the SDK's sampler that `OTEL_TRACES_SAMPLER`
//! names, asked once per request. It thins spans only; the duration
//! histograms count every request whatever it decides.
//!
//! It decides on the request's trace id and on the sampled flag of the
//! `traceparent` its trace came with, the same for every span of that
//! trace on this host: a ratio sampler keeps or drops a whole trace, and a
//! parent-based one follows the caller's flag.
use opentelemetry::{
    Context,
    trace::{
        SamplingDecision, SpanContext, SpanId, SpanKind, TraceContextExt as _, TraceFlags, TraceId,
        TraceState,
    },
};
use opentelemetry_sdk::trace::{Sampler, ShouldSample as _};

use crate::trace_context::SpanIds;

pub struct SpanSampler {
    sampler: Sampler,
}

impl SpanSampler {
    pub fn new(sampler: Sampler) -> Self {
        Self { sampler }
    }

    /// Whether the request of `ids` becomes spans.
    pub fn keeps(&self, ids: &SpanIds) -> bool {
        let trace_id = TraceId::from_bytes(ids.trace_id);
        let remote_parent = ids.remote_sampled.map(|sampled| {
            let flags = if sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            };
            let parent = ids.parent_span_id.unwrap_or(ids.span_id);
            let parent = SpanContext::new(
                trace_id,
                SpanId::from_bytes(parent),
                flags,
                true,
                TraceState::default(),
            );
            Context::new().with_remote_span_context(parent)
        });
        let result = self.sampler.should_sample(
            remote_parent.as_ref(),
            trace_id,
            "",
            &SpanKind::Server,
            &[],
            &[],
        );
        result.decision == SamplingDecision::RecordAndSample
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(sampler: Sampler, draws: u32) -> u32 {
        let sampler = SpanSampler::new(sampler);
        (0..draws)
            .map(|_| u32::from(sampler.keeps(&SpanIds::root())))
            .sum()
    }

    #[test]
    fn a_trace_is_kept_or_dropped_whole_and_the_callers_flag_is_followed() {
        let sampler = SpanSampler::new(Sampler::TraceIdRatioBased(0.5));
        for _ in 0..100 {
            let root = SpanIds::root();
            let child = SpanIds {
                span_id: [9; 8],
                parent_span_id: Some(root.span_id),
                ..root.clone()
            };
            assert_eq!(sampler.keeps(&root), sampler.keeps(&child));
        }
        let parent_based = SpanSampler::new(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
        let caller_said = |sampled| SpanIds {
            parent_span_id: Some([1; 8]),
            remote_parent: true,
            remote_sampled: Some(sampled),
            ..SpanIds::root()
        };
        assert!(parent_based.keeps(&caller_said(true)));
        assert!(!parent_based.keeps(&caller_said(false)));
        assert!(parent_based.keeps(&SpanIds::root()));
    }

    #[test]
    fn ratio_samplers_keep_their_share_and_the_others_all_or_nothing() {
        const DRAWS: u32 = 100_000;
        // Binomial(100,000, 0.25): 25,000 ± 137 (one sigma); 6 sigma bounds.
        for sampler in [
            Sampler::TraceIdRatioBased(0.25),
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.25))),
        ] {
            let kept = kept(sampler, DRAWS);
            assert!((24_178..=25_822).contains(&kept), "kept {kept}");
        }
        assert_eq!(kept(Sampler::AlwaysOn, 1_000), 1_000);
        assert_eq!(
            kept(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)), 1_000),
            1_000
        );
        assert_eq!(kept(Sampler::AlwaysOff, 1_000), 0);
        assert_eq!(kept(Sampler::TraceIdRatioBased(0.0), 1_000), 0);
    }
}
