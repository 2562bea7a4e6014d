//! Requests in flight, for `http.server.active_requests`. A request is in
//! flight from the read that completed its head to the write that ended its
//! response, or until assembly gives it up (lost records, a connection that
//! ended first). Each pending exchange holds an [`InFlight`] token that
//! counts it while it lives: however an exchange goes, dropping it uncounts
//! it, so the count cannot drift from what assembly holds.
use std::{cell::RefCell, rc::Rc};

use foldhash::HashMap;

/// What the in-flight count is broken down by: the process (the daemon
/// maps it to its instance), the local port and the method as the
/// semantic conventions name it ([`crate::http::method_attribute`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InFlightKey {
    pub tgid: u32,
    /// 0 when the connection's addresses were not seen.
    pub server_port: u16,
    pub method: &'static str,
}

#[derive(Default)]
struct Counts {
    by_key: HashMap<InFlightKey, u32>,
    /// Bumped on every change, so readers skip unchanged counts.
    generation: u64,
}

/// The counts, shared by the assembler and the tokens it hands out.
#[derive(Clone, Default)]
pub struct InFlightLedger(Rc<RefCell<Counts>>);

impl InFlightLedger {
    /// Counts one request until the token is dropped.
    pub fn enter(&self, key: InFlightKey) -> InFlight {
        let mut counts = self.0.borrow_mut();
        *counts.by_key.entry(key).or_default() += 1;
        counts.generation += 1;
        InFlight {
            ledger: self.clone(),
            key,
        }
    }

    /// The counts now, if they changed since `seen` (which is updated).
    pub fn changed_since(&self, seen: &mut u64) -> Option<Vec<(InFlightKey, u32)>> {
        let counts = self.0.borrow();
        if counts.generation == *seen {
            return None;
        }
        *seen = counts.generation;
        Some(counts.by_key.iter().map(|(key, &n)| (*key, n)).collect())
    }
}

/// One request counted in flight.
pub struct InFlight {
    ledger: InFlightLedger,
    key: InFlightKey,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut counts = self.ledger.0.borrow_mut();
        counts.generation += 1;
        if let Some(n) = counts.by_key.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.by_key.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_counts_while_it_lives() {
        let ledger = InFlightLedger::default();
        let key = InFlightKey {
            tgid: 1,
            server_port: 80,
            method: "GET",
        };
        let mut seen = 0;
        assert_eq!(ledger.changed_since(&mut seen), None);
        let one = ledger.enter(key);
        let two = ledger.enter(key);
        assert_eq!(ledger.changed_since(&mut seen), Some(vec![(key, 2)]));
        assert_eq!(ledger.changed_since(&mut seen), None, "unchanged");
        drop(one);
        assert_eq!(ledger.changed_since(&mut seen), Some(vec![(key, 1)]));
        drop(two);
        assert_eq!(ledger.changed_since(&mut seen), Some(vec![]));
    }
}
