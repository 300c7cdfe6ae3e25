//! Quota allotments: the part of each budget counter this process has reserved in the store for itself.
//!
//! Every broker process holds, per budget counter, an allotment reserved **in the store** under one
//! long-lived pool reservation (`pool-<owner>-<epoch>`, same tables and lease as any reservation). A request
//! is admitted in memory when every counter in its scope has at least its estimate free here; only when one
//! has not does admission go to the store to grow the allotment (with the same conditional update as a
//! per-request reservation). So every admitted estimate is backed by reserved store amount, and the
//! overspend bound of docs/governance.md is unchanged.
//!
//! Per counter: `held` is the allotment (what the pool's item holds, as far as this process knows: the store
//! holds at least this much, more while settlements are queued), `used` the estimates of admitted requests
//! not yet settled. Invariants: `0 ≤ used ≤ held`.
//!
//! Settling a request with estimate `e` and cost `c` frees `e` and consumes `m = min(c, free)` of the
//! allotment (`held −= m`; `free ≥ e` once `e` is freed, so `m ≥ min(c, e)`), which the store moves from
//! `reserved` to `spent` (plus `c − m`). An overage (`c > e`) is thus paid from the free allotment while
//! there is any, so later admissions see it exactly as a store check would; only what the allotment cannot
//! cover goes beyond. Releasing (no charge) only frees `e`. Free allotment of idle counters and of past
//! windows goes back to the store.
//!
//! The epoch changes when the pool is lost (another replica expired it, taking its amounts back): all local
//! allotments are void; requests admitted under the old epoch still settle (their spend is charged; their
//! release finds no item and moves nothing).

use super::store::CounterKey;
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    pub held: i64,
    pub used: i64,
    /// Last admission or grow (Unix seconds).
    pub last_used: i64,
}

#[derive(Debug, Default)]
pub struct Allotments {
    /// Bumped when the pool is lost; requests carry the epoch they were admitted under.
    pub epoch: u64,
    /// Whether the pool row of this epoch exists in the store (as far as this process knows).
    pub pool_exists: bool,
    /// foldhash (seeded per process), not SipHash: looked up on every admission and settlement.
    slots: HashMap<CounterKey, Slot, foldhash::fast::RandomState>,
}

/// What admission from memory lacks: `(index of the key, free on it)` for every key below the estimate.
pub type Shortfall = Vec<(usize, i64)>;

impl Allotments {
    pub fn free(&self, key: &CounterKey) -> i64 {
        self.slots.get(key).map_or(0, |s| s.held - s.used)
    }

    pub fn slot(&self, key: &CounterKey) -> Option<Slot> {
        self.slots.get(key).copied()
    }

    /// Admit `estimate` on every key from the free allotment, all or nothing.
    pub fn try_take(
        &mut self,
        keys: &[CounterKey],
        estimate: i64,
        now: i64,
    ) -> Result<u64, Shortfall> {
        let short: Shortfall = keys
            .iter()
            .enumerate()
            .filter_map(|(i, k)| {
                let free = self.free(k);
                (free < estimate).then_some((i, free))
            })
            .collect();
        if !short.is_empty() {
            return Err(short);
        }
        for k in keys {
            if let Some(s) = self.slots.get_mut(k) {
                s.used += estimate;
                s.last_used = now;
            }
        }
        Ok(self.epoch)
    }

    /// A grow of `amount` on `key` committed in the store under `epoch`'s pool.
    pub fn add(&mut self, epoch: u64, key: &CounterKey, amount: i64, now: i64) {
        if epoch != self.epoch {
            return;
        }
        let s = self.slots.entry(key.clone()).or_default();
        s.held += amount;
        s.last_used = now;
    }

    /// A request admitted under `epoch` with `estimate` ended costing `cost` (0 for a release): frees the
    /// estimate and consumes `min(cost, free)` of each key's allotment. Returns what was consumed per key
    /// (what the store must move from `reserved` to `spent`). Requests of an older epoch change nothing
    /// here (their pool is gone): zeros.
    pub fn settle(
        &mut self,
        epoch: u64,
        keys: &[CounterKey],
        estimate: i64,
        cost: i64,
    ) -> Vec<i64> {
        if epoch != self.epoch {
            return vec![0; keys.len()];
        }
        keys.iter()
            .map(|k| match self.slots.get_mut(k) {
                Some(s) => {
                    s.used -= estimate;
                    let m = cost.clamp(0, s.held - s.used);
                    s.held -= m;
                    debug_assert!(0 <= s.used && s.used <= s.held, "{s:?}");
                    m
                }
                None => 0,
            })
            .collect()
    }

    /// Take the free allotment of every key for which `give_back(key, slot)` holds out of the allotments
    /// (it must then be returned to the store). Slots left empty are forgotten.
    pub fn take_free(
        &mut self,
        mut give_back: impl FnMut(&CounterKey, &Slot) -> bool,
    ) -> Vec<(CounterKey, i64)> {
        let mut out = Vec::new();
        self.slots.retain(|k, s| {
            if give_back(k, s) {
                let free = s.held - s.used;
                if free > 0 {
                    out.push((k.clone(), free));
                    s.held -= free;
                }
            }
            !(s.held == 0 && s.used == 0)
        });
        out.sort();
        out
    }

    /// The pool is gone: forget every allotment and start a new epoch.
    pub fn reset(&mut self) {
        self.epoch += 1;
        self.pool_exists = false;
        self.slots.clear();
    }

    /// Σ held and Σ used over all keys (tests, metrics).
    pub fn totals(&self) -> (i64, i64) {
        self.slots
            .values()
            .fold((0, 0), |(h, u), s| (h + s.held, u + s.used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(i: usize) -> CounterKey {
        CounterKey {
            budget_id: format!("b{i}"),
            subject: "s".into(),
            period_start: 0,
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Admit { mask: u8, estimate: i64 },
        Settle { n: usize, cost: i64 },
        Release { n: usize },
        ReturnIdle { mask: u8 },
        Lose,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (1u8..8, 1i64..300).prop_map(|(mask, estimate)| Op::Admit { mask, estimate }),
            3 => (0usize..16, 0i64..500).prop_map(|(n, cost)| Op::Settle { n, cost }),
            1 => (0usize..16).prop_map(|n| Op::Release { n }),
            1 => (0u8..8).prop_map(|mask| Op::ReturnIdle { mask }),
            1 => Just(Op::Lose),
        ]
    }

    const LIMIT: i64 = 2_000;

    /// A model of the store's counters and the pool item, driven like `Governance` drives it: admission in
    /// memory, grow from the "store" when short (chunk then exact need), settlement and returns applied to
    /// the store as the writer would.
    #[derive(Default)]
    struct Model {
        spent: [i64; 3],
        reserved: [i64; 3],
        /// The pool's item per key (in the current epoch's pool; a lost pool's items are given back).
        item: [i64; 3],
        costs: i64,
        /// Σ estimates admitted and not settled, per key (what the bound needs backed).
        in_flight: [i64; 3],
        /// Spend not covered by a reservation: overage (cost − estimate)⁺, and the whole cost of requests
        /// whose pool was lost (expired) while they ran — the documented excess.
        excess: [i64; 3],
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        #[test]
        fn allotment_accounting_matches_the_store(ops in proptest::collection::vec(op(), 1..80)) {
            let mut a = Allotments::default();
            let mut m = Model::default();
            // (keys, estimate, epoch)
            let mut live: Vec<(Vec<usize>, i64, u64)> = Vec::new();
            for op in ops {
                match op {
                    Op::Admit { mask, estimate } => {
                        let idx: Vec<usize> = (0..3).filter(|i| mask & (1 << i) != 0).collect();
                        let keys: Vec<CounterKey> = idx.iter().map(|&i| key(i)).collect();
                        let epoch = match a.try_take(&keys, estimate, 0) {
                            Ok(e) => Some(e),
                            Err(short) => {
                                // Grow: need + min(16e, headroom/8), or exactly the need, all keys or none.
                                let needs: Vec<(usize, i64)> =
                                    short.iter().map(|&(j, free)| (idx[j], estimate - free)).collect();
                                let fits = |extra: bool| needs.iter().all(|&(i, need)| {
                                    let head = LIMIT - m.spent[i] - m.reserved[i] - need;
                                    let g = need + if extra { (16 * estimate).min(head / 8).max(0) } else { 0 };
                                    m.spent[i] + m.reserved[i] + g <= LIMIT
                                });
                                let grant = |extra: bool, m: &Model| -> Vec<(usize, i64)> {
                                    needs.iter().map(|&(i, need)| {
                                        let head = LIMIT - m.spent[i] - m.reserved[i] - need;
                                        (i, need + if extra { (16 * estimate).min(head / 8).max(0) } else { 0 })
                                    }).collect()
                                };
                                let g = if fits(true) { Some(grant(true, &m)) } else if fits(false) { Some(grant(false, &m)) } else { None };
                                match g {
                                    None => None,
                                    Some(g) => {
                                        a.pool_exists = true;
                                        for (i, amt) in g {
                                            m.reserved[i] += amt;
                                            m.item[i] += amt;
                                            a.add(a.epoch, &key(i), amt, 0);
                                        }
                                        Some(a.try_take(&keys, estimate, 0).expect("fits after grow"))
                                    }
                                }
                            }
                        };
                        if let Some(epoch) = epoch {
                            for &i in &idx {
                                m.in_flight[i] += estimate;
                                // Bound: everything admitted is backed by reserved amount within the limit,
                                // apart from the documented excess.
                                prop_assert!(m.spent[i] + m.reserved[i] <= LIMIT + m.excess[i]);
                                prop_assert!(m.in_flight[i] <= m.item[i]);
                            }
                            live.push((idx, estimate, epoch));
                        }
                    }
                    Op::Settle { .. } | Op::Release { .. } if live.is_empty() => {}
                    Op::Settle { n, cost } => {
                        let (idx, e, epoch) = live.remove(n % live.len());
                        let keys: Vec<CounterKey> = idx.iter().map(|&i| key(i)).collect();
                        let current = epoch == a.epoch;
                        let consumed = a.settle(epoch, &keys, e, cost);
                        m.costs += cost;
                        for (j, &i) in idx.iter().enumerate() {
                            prop_assert!(consumed[j] <= cost);
                            m.spent[i] += cost;
                            if current {
                                prop_assert!(consumed[j] >= cost.min(e));
                                m.excess[i] += cost - consumed[j];
                                m.item[i] -= consumed[j];
                                m.reserved[i] -= consumed[j];
                                m.in_flight[i] -= e;
                            } else {
                                prop_assert_eq!(consumed[j], 0);
                                m.excess[i] += cost;
                            }
                        }
                    }
                    Op::Release { n } => {
                        let (idx, e, epoch) = live.remove(n % live.len());
                        let keys: Vec<CounterKey> = idx.iter().map(|&i| key(i)).collect();
                        let current = epoch == a.epoch;
                        let _ = a.settle(epoch, &keys, e, 0);
                        if current {
                            for &i in &idx {
                                m.in_flight[i] -= e;
                            }
                        }
                    }
                    Op::ReturnIdle { mask } => {
                        for (k, amt) in a.take_free(|k, _| {
                            let i: usize = k.budget_id[1..].parse().expect("i");
                            mask & (1 << i) != 0
                        }) {
                            let i: usize = k.budget_id[1..].parse().expect("i");
                            m.item[i] -= amt;
                            m.reserved[i] -= amt;
                        }
                    }
                    Op::Lose => {
                        // Another replica expired the pool: it gave the items back.
                        for i in 0..3 {
                            m.reserved[i] -= m.item[i];
                            m.item[i] = 0;
                            m.in_flight[i] = 0;
                        }
                        a.reset();
                    }
                }
                for i in 0..3 {
                    let s = a.slot(&key(i)).unwrap_or_default();
                    prop_assert!(0 <= s.used && s.used <= s.held, "{:?}", s);
                    prop_assert_eq!(s.held, m.item[i], "local held == the pool's item (writer caught up)");
                    prop_assert_eq!(s.used, m.in_flight[i]);
                    prop_assert_eq!(m.reserved[i], m.item[i], "reserved == Σ held allotments");
                    prop_assert!(m.reserved[i] >= 0);
                }
            }
            // Quiescence: settle everything, return all.
            for (idx, e, epoch) in live.drain(..) {
                let keys: Vec<CounterKey> = idx.iter().map(|&i| key(i)).collect();
                let consumed = a.settle(epoch, &keys, e, e);
                m.costs += e;
                for (j, &i) in idx.iter().enumerate() {
                    m.spent[i] += e;
                    m.item[i] -= consumed[j];
                    m.reserved[i] -= consumed[j];
                }
            }
            for (k, amt) in a.take_free(|_, _| true) {
                let i: usize = k.budget_id[1..].parse().expect("i");
                m.item[i] -= amt;
                m.reserved[i] -= amt;
            }
            prop_assert_eq!(a.totals(), (0, 0));
            prop_assert_eq!(m.reserved, [0, 0, 0]);
        }
    }
}
