//! Which requests become spans: the SDK's sampler that `OTEL_TRACES_SAMPLER`
//! names, asked once per request. It thins spans only; the duration
//! histogram counts every request whatever it decides.
use opentelemetry::trace::{SamplingDecision, SpanKind};
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator, Sampler, ShouldSample as _};

pub struct SpanSampler {
    sampler: Sampler,
    ids: RandomIdGenerator,
}

impl SpanSampler {
    pub fn new(sampler: Sampler) -> Self {
        Self {
            sampler,
            ids: RandomIdGenerator::default(),
        }
    }

    /// Whether the next request becomes spans. Nothing brings a parent
    /// context to the tracer, so a parent-based sampler decides as its root
    /// sampler does, and a ratio sampler decides on a fresh random trace id,
    /// as the SDK does for a root span. Since no one else sees that id, the
    /// span builder drawing its own changes nothing.
    pub fn keeps(&self) -> bool {
        let result = self.sampler.should_sample(
            None,
            self.ids.new_trace_id(),
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
        (0..draws).map(|_| u32::from(sampler.keeps())).sum()
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
