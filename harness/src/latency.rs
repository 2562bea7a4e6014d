//! Latency histograms and the serialisable percentile summary taken from them.
//!
//! Latencies are recorded in nanoseconds into an HdrHistogram with three
//! significant digits (0.1% relative error) from 1 µs to 100 s; values outside
//! are clamped. Summaries are reported in milliseconds.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Lowest and highest trackable latency, ns.
const LOWEST_NS: u64 = 1_000;
const HIGHEST_NS: u64 = 100_000_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

/// Quantiles kept for the full-distribution plot.
pub const DISTRIBUTION_QUANTILES: [f64; 14] = [
    0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999, 1.0,
];

/// A fresh latency histogram (ns).
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy the crate's preconditions
    // (low >= 1, high >= 2 * low, 0 <= digits <= 5), so this cannot fail.
    Histogram::new_with_bounds(LOWEST_NS, HIGHEST_NS, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// Records one latency, clamping it into the trackable range.
pub fn record(histogram: &mut Histogram<u64>, latency_ns: u64) {
    histogram.saturating_record(latency_ns.clamp(LOWEST_NS, HIGHEST_NS));
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p75_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p99_9_ms: f64,
    pub p99_99_ms: f64,
    pub max_ms: f64,
    /// `(quantile, ms)` at [`DISTRIBUTION_QUANTILES`].
    pub distribution: Vec<(f64, f64)>,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl LatencySummary {
    /// Summarises `h`; an empty histogram gives all zeros.
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let at = |q: f64| ms(h.value_at_quantile(q));
        Self {
            count: h.len(),
            mean_ms: h.mean() / 1e6,
            p50_ms: at(0.5),
            p75_ms: at(0.75),
            p90_ms: at(0.9),
            p99_ms: at(0.99),
            p99_9_ms: at(0.999),
            p99_99_ms: at(0.9999),
            max_ms: ms(h.max()),
            distribution: DISTRIBUTION_QUANTILES.iter().map(|&q| (q, at(q))).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_values_give_expected_percentiles() {
        let mut h = new_histogram();
        for ms in 1..=1000u64 {
            record(&mut h, ms * 1_000_000);
        }
        let s = LatencySummary::from_histogram(&h);
        assert_eq!(s.count, 1000);
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.002;
        assert!(close(s.p50_ms, 500.0), "{}", s.p50_ms);
        assert!(close(s.p90_ms, 900.0), "{}", s.p90_ms);
        assert!(close(s.p99_ms, 990.0), "{}", s.p99_ms);
        assert!(close(s.max_ms, 1000.0), "{}", s.max_ms);
        assert!(close(s.mean_ms, 500.5), "{}", s.mean_ms);
        assert_eq!(s.distribution.len(), DISTRIBUTION_QUANTILES.len());
        assert!(s.distribution.windows(2).all(|w| w[0].1 <= w[1].1));
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let mut h = new_histogram();
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
        let s = LatencySummary::from_histogram(&h);
        assert!(s.max_ms >= 99_000.0);
    }

    #[test]
    fn empty_histogram_is_zero() {
        assert_eq!(
            LatencySummary::from_histogram(&new_histogram()),
            LatencySummary::default()
        );
    }
}
