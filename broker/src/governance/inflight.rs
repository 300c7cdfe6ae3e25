//! This replica's requests in flight, as the store must know them so that a broker that dies does not
//! leave its requests uncharged (the provider bills them).
//!
//! Admission registers a request here (in memory: one map insert, no store round trip); its end removes it
//! — a release at once, a settlement once the settlement is **stored** (so settlements still queued in a
//! killed broker's writer are covered too). The background round ([`super::Governance::tick`], every
//! `[store] poll_interval_ms`) writes the difference to the store in one transaction: rows for requests
//! registered since the last round, deletes for requests that ended after their row was written. A request
//! that starts and ends between two rounds never touches the store. Rows carry this replica's lease, renewed
//! with its reservations; when it runs out, the replica that finds it charges each row its reserved
//! estimate ([`super::store::Store::charge_expired_inflight`]).
//!
//! Why rows per request written in batches rather than per-request writes or a per-pool total: admission
//! stays in memory (the allotment design's point), the store sees one small transaction per round at
//! most, and each charged request gets its own `spend` row — attributable (principal, model, token) and
//! idempotent by its id against its real settlement. What a kill can still miss: requests admitted less
//! than one round before the kill (docs/governance.md, "Known limits").

use super::store::InflightRow;
use std::collections::{HashMap, HashSet};

#[derive(Debug, Default)]
pub struct Registry {
    /// Registered, not yet written. (Both sets: foldhash, seeded per process; every request goes in and
    /// out of them.)
    pending: HashMap<String, InflightRow, foldhash::fast::RandomState>,
    /// Written to the store and not ended.
    written: HashSet<String, foldhash::fast::RandomState>,
    /// Written, then ended: their rows are deleted on the next round.
    ended: Vec<String>,
}

/// What one round writes.
#[derive(Debug, Default)]
pub struct Sync {
    pub add: Vec<InflightRow>,
    pub remove: Vec<String>,
}

impl Sync {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

impl Registry {
    /// An admitted request.
    pub fn register(&mut self, row: InflightRow) {
        self.pending.insert(row.record.id.clone(), row);
    }

    /// A request ended: released, or its settlement stored.
    pub fn end(&mut self, id: &str) {
        if self.pending.remove(id).is_none() && self.written.remove(id) {
            self.ended.push(id.to_string());
        }
    }

    /// The round's writes; the rows added count as written from now on.
    pub fn take(&mut self) -> Sync {
        let add: Vec<InflightRow> = self.pending.drain().map(|(_, r)| r).collect();
        self.written.extend(add.iter().map(|r| r.record.id.clone()));
        Sync {
            add,
            remove: std::mem::take(&mut self.ended),
        }
    }

    /// The round's writes failed: try them again next round (rows of requests that ended meanwhile are
    /// deleted then, which is harmless: they were never written).
    pub fn restore(&mut self, s: Sync) {
        for r in s.add {
            if self.written.remove(&r.record.id) {
                self.pending.insert(r.record.id.clone(), r);
            }
        }
        self.ended.extend(s.remove);
    }

    /// Requests registered and not ended (tests, metrics).
    pub fn len(&self) -> usize {
        self.pending.len() + self.written.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::governance::store::SpendRecord;
    use proptest::prelude::*;

    fn row(id: usize) -> InflightRow {
        InflightRow {
            keys: Vec::new(),
            record: SpendRecord {
                id: format!("r{id}"),
                ..SpendRecord::default()
            },
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Register,
        End(usize),
        Sync { fails: bool },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Register),
            3 => (0usize..32).prop_map(Op::End),
            2 => any::<bool>().prop_map(|fails| Op::Sync { fails }),
        ]
    }

    proptest! {
        /// Whatever the interleaving of admissions, ends and (failing) rounds, once a round succeeds the
        /// store holds exactly the requests registered and not ended.
        #[test]
        fn the_store_converges_to_the_requests_in_flight(ops in proptest::collection::vec(op(), 1..120)) {
            let mut reg = Registry::default();
            let mut store: HashSet<String> = HashSet::new();
            let mut live: HashSet<String> = HashSet::new();
            let mut next = 0;
            for op in ops {
                match op {
                    Op::Register => {
                        reg.register(row(next));
                        live.insert(format!("r{next}"));
                        next += 1;
                    }
                    Op::End(i) if i < next => {
                        let id = format!("r{i}");
                        if live.remove(&id) {
                            reg.end(&id);
                        }
                    }
                    Op::End(_) => {}
                    Op::Sync { fails } => {
                        let s = reg.take();
                        if fails {
                            reg.restore(s);
                        } else {
                            for id in &s.remove {
                                store.remove(id);
                            }
                            for r in &s.add {
                                store.insert(r.record.id.clone());
                            }
                        }
                    }
                }
                prop_assert_eq!(reg.len(), live.len());
                // Never a row in the store for a request that is not registered, once its delete is due.
                prop_assert!(store.iter().all(|id| live.contains(id) || reg.ended.contains(id)));
            }
            let s = reg.take();
            for id in &s.remove {
                store.remove(id);
            }
            for r in &s.add {
                store.insert(r.record.id.clone());
            }
            prop_assert_eq!(store, live);
        }
    }
}
