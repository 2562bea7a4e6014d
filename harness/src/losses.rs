//! The tracer's loss counters as the sink received them: the latest value of
//! each `tracer.dropped` reason, and the requests they add up to. What each
//! reason means, and which count requests, is the tracer's
//! [`DropReason`], not spelled again here.
use std::{collections::BTreeMap, fmt};

use tracer::stats::{DropReason, UnknownDropReason};

use crate::sink::{AttrValue, ReceivedMetric};

/// The counter the tracer exports its losses as, by `reason`.
const METRIC: &str = "tracer.dropped";

/// The latest exported value of each loss reason; a reason never exported
/// counts 0.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Losses(BTreeMap<DropReason, f64>);

impl Losses {
    /// Reads `tracer.dropped` from received metrics (`Sink::metrics`). A
    /// reason the harness does not know means a tracer built from other
    /// sources: its losses could not be classified, so that is an error.
    pub fn from_metrics(metrics: &[ReceivedMetric]) -> Result<Self, UnknownDropReason> {
        let mut latest: BTreeMap<DropReason, (u64, f64)> = BTreeMap::new();
        let points = metrics
            .iter()
            .filter(|metric| metric.name == METRIC)
            .flat_map(|metric| &metric.points);
        for point in points {
            let (Some(reason), Some(value)) = (
                point.attributes.get("reason").and_then(AttrValue::as_str),
                point.value,
            ) else {
                continue;
            };
            let slot = latest.entry(reason.parse()?).or_default();
            if point.time_unix_ns >= slot.0 {
                *slot = (point.time_unix_ns, value);
            }
        }
        Ok(Self(
            latest
                .into_iter()
                .map(|(reason, (_, value))| (reason, value))
                .collect(),
        ))
    }

    pub fn get(&self, reason: DropReason) -> f64 {
        self.0.get(&reason).copied().unwrap_or(0.0)
    }

    /// Requests lost: the sum of the reasons that count requests.
    pub fn requests(&self) -> f64 {
        self.only_requests().0.values().fold(0.0, |sum, n| sum + n)
    }

    /// The reasons that count requests, without the others.
    pub fn only_requests(&self) -> Losses {
        Self(
            self.0
                .iter()
                .filter(|(reason, _)| reason.counts_requests())
                .map(|(reason, value)| (*reason, *value))
                .collect(),
        )
    }
}

/// The non-zero reasons as `reason=count`, or `none`.
impl fmt::Display for Losses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut nonzero = self.0.iter().filter(|(_, value)| **value > 0.0).peekable();
        if nonzero.peek().is_none() {
            return f.write_str("none");
        }
        for (i, (reason, value)) in nonzero.enumerate() {
            write!(f, "{}{reason}={value}", if i == 0 { "" } else { " " })?;
        }
        Ok(())
    }
}

/// Requests the tracer reported lost, from the sink's metrics
/// (`Sink::metrics`): spans + this = requests served.
pub fn requests_lost(metrics: &[ReceivedMetric]) -> Result<f64, UnknownDropReason> {
    Ok(Losses::from_metrics(metrics)?.requests())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::MetricPoint;

    fn dropped(points: &[(&str, f64, u64)]) -> Vec<ReceivedMetric> {
        let points = points
            .iter()
            .map(|&(reason, value, time_unix_ns)| MetricPoint {
                attributes: [("reason".to_owned(), AttrValue::Str(reason.to_owned()))].into(),
                count: None,
                sum: None,
                value: Some(value),
                time_unix_ns,
            })
            .collect();
        vec![ReceivedMetric {
            service: "test".into(),
            name: METRIC.into(),
            unit: String::new(),
            points,
        }]
    }

    #[test]
    fn sums_the_latest_request_losses_only() {
        let metrics = dropped(&[
            ("export_dropped", 5.0, 2),
            ("export_dropped", 2.0, 1),
            ("request_start_lost", 1.0, 1),
            ("ring_buffer_full", 40.0, 2),
            ("response_without_request", 3.0, 2),
        ]);
        let losses = Losses::from_metrics(&metrics).expect("known reasons");
        assert_eq!(losses.get(DropReason::ExportDropped), 5.0);
        assert_eq!(losses.get(DropReason::TaskTableFull), 0.0);
        assert_eq!(losses.requests(), 6.0);
        assert_eq!(requests_lost(&metrics).ok(), Some(6.0));
        assert_eq!(
            losses.only_requests().to_string(),
            "request_start_lost=1 export_dropped=5"
        );
        assert_eq!(Losses::default().to_string(), "none");
    }

    #[test]
    fn an_unknown_reason_is_an_error() {
        assert!(Losses::from_metrics(&dropped(&[("gremlins", 1.0, 1)])).is_err());
    }
}
