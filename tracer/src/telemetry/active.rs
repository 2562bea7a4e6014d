//! `http.server.active_requests`: assembly's in-flight counts
//! ([`crate::inflight`]) by instance, published by the daemon whenever they
//! change and read at collection by the OTLP meters and at each scrape by
//! the Prometheus endpoint. A series that was seen stays, at 0 when idle,
//! while its instance lives: a gauge that vanished would hold its last
//! value in most backends.
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
};

use opentelemetry::KeyValue;

use super::instance::Instance;
use crate::{discovery::registry::Registry, inflight::InFlightKey};

/// One series: its attributes' values and the requests in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActiveSeries {
    pub method: &'static str,
    /// 0 when the connection's addresses were not seen.
    pub server_port: u16,
    pub count: u32,
}

impl ActiveSeries {
    /// The semantic conventions' attributes of the metric.
    pub fn attributes(&self) -> Vec<KeyValue> {
        let mut attributes = vec![
            KeyValue::new("http.request.method", self.method),
            KeyValue::new("url.scheme", "http"),
        ];
        if self.server_port != 0 {
            attributes.push(KeyValue::new("server.port", i64::from(self.server_port)));
        }
        attributes
    }
}

/// An instance's counts by method and server port.
type Counts = HashMap<(&'static str, u16), u32>;

/// The counts by [`Instance::key`], shared with the readers.
#[derive(Clone, Default)]
pub struct ActiveRequests(Arc<Mutex<HashMap<usize, Counts>>>);

impl ActiveRequests {
    fn lock(&self) -> MutexGuard<'_, HashMap<usize, Counts>> {
        // Plain data: a panic while holding the lock leaves it usable.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces the counts with `in_flight`, each process's requests under
    /// its instance; instances gone from the registry go from here too.
    pub fn publish(&self, in_flight: &[(InFlightKey, u32)], registry: &Registry) {
        let live: HashSet<usize> = registry.instance_keys().collect();
        let mut published = self.lock();
        published.retain(|key, _| live.contains(key));
        for counts in published.values_mut() {
            counts.values_mut().for_each(|count| *count = 0);
        }
        for (key, count) in in_flight {
            if let Some(instance) = registry.instance_of(key.tgid) {
                *published
                    .entry(Instance::key(instance))
                    .or_default()
                    .entry((key.method, key.server_port))
                    .or_default() += count;
            }
        }
    }

    /// The series of the instance keyed `key`, now.
    pub fn of(&self, key: usize) -> Vec<ActiveSeries> {
        let published = self.lock();
        let counts = published.get(&key).into_iter().flatten();
        counts
            .map(|(&(method, server_port), &count)| ActiveSeries {
                method,
                server_port,
                count,
            })
            .collect()
    }
}
