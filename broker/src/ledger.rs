//! Accounting hooks on the request path: admit (before forwarding), release (failed before the first byte),
//! finish (settle real usage, exactly once), and the revocation check. The work is done by
//! [`crate::governance::Governance`]. A finished request (also from `Drop`, on client disconnect) is queued
//! for the settler task, which settles a batch every few milliseconds off the request path (settlement
//! never awaits the store: its write goes on to the group-committing writer); only with Redis rate limits,
//! whose token charge is a network call, does each settlement run on a spawned task.

use crate::error::ApiError;
use crate::governance::{Finished, Governance, Reservation};
use crate::proxy::upstream::Endpoint;
use crate::usage::{StreamEnd, Usage};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tollgate::Claims;

/// A request admitted by governance: its budget reservation.
#[derive(Debug)]
pub struct Admission {
    pub id: String,
    reservation: Reservation,
}

/// Why an admitted request ended without a settled response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    UpstreamError,
}

/// Everything accounting needs about one proxied request.
pub struct RequestRecord {
    pub claims: Arc<Claims>,
    pub model: String,
    pub provider: String,
    pub endpoint: Endpoint,
    pub stream: bool,
    pub started: Instant,
    pub admission: Admission,
    /// Upstream HTTP status of the relayed response.
    pub status: u16,
    /// Request id, timings and trace span (see `crate::observe`).
    pub obs: crate::observe::RequestObs,
}

/// Called with the settled cost once governance has recorded it (metrics, audit).
pub type AfterSettle = Box<dyn FnOnce(tollgate::Nanos) + Send + 'static>;

/// In-memory totals for one principal since this process started (logs, tests); the store is the record.
#[derive(Clone, Debug, Default, serde::Serialize, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    pub incomplete_streams: u64,
}

pub struct Ledger {
    pub governance: Arc<Governance>,
    totals: Mutex<HashMap<String, Totals>>,
    settlements: Arc<Settlements>,
}

/// How long finished requests gather before the settler takes them (see [`Settlements`]).
pub const SETTLE_LINGER: std::time::Duration = std::time::Duration::from_millis(5);

type Job = Box<dyn FnOnce() + Send>;

/// Finished requests waiting to be settled. The request path only pushes here — settlement, its log line,
/// metrics and audit record run on the settler task, a batch every [`SETTLE_LINGER`] — so none of that
/// work delays the response, and no task is spawned (on this runtime a spawn wakes another worker
/// thread; measured in docs/benchmarks.md). Only the first push into an empty queue wakes the settler.
struct Settlements {
    jobs: Mutex<Vec<Job>>,
    wake: tokio::sync::Notify,
    started: std::sync::atomic::AtomicBool,
}

impl Settlements {
    fn push(self: &Arc<Self>, job: Job) {
        use std::sync::atomic::Ordering;
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // No runtime (a drop at process exit): settle here.
            job();
            return;
        };
        if !self.started.swap(true, Ordering::AcqRel) {
            rt.spawn(self.clone().run());
        }
        let first = {
            let mut jobs = self
                .jobs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            jobs.push(job);
            jobs.len() == 1
        };
        if first {
            self.wake.notify_one();
        }
    }

    /// Run everything queued so far, here (each job isolated: a panic is logged, the rest still run).
    fn drain(&self) -> usize {
        let jobs = std::mem::take(
            &mut *self
                .jobs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let n = jobs.len();
        for job in jobs {
            // One settlement that panics must not take the others (or the settler task) with it.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                tracing::error!("a settlement panicked; its spend is not recorded");
            }
        }
        n
    }

    async fn run(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            tokio::time::sleep(SETTLE_LINGER).await;
            self.drain();
        }
    }
}

fn spawn(f: impl std::future::Future<Output = ()> + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            h.spawn(f);
        }
        Err(_) => {
            tracing::error!("no runtime to settle on; the reservation will expire with its lease")
        }
    }
}

impl Ledger {
    pub fn new(governance: Arc<Governance>) -> Self {
        Ledger {
            governance,
            totals: Mutex::new(HashMap::new()),
            settlements: Arc::new(Settlements {
                jobs: Mutex::new(Vec::new()),
                wake: tokio::sync::Notify::new(),
                started: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Settle every finished request still queued (graceful shutdown, tests); how many there were.
    pub fn drain_settlements(&self) -> usize {
        self.settlements.drain()
    }

    /// This process's totals for `principal` (updated synchronously at finish).
    pub fn totals(&self, principal: &str) -> Totals {
        self.totals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(principal)
            .cloned()
            .unwrap_or_default()
    }

    pub fn check_revoked(&self, claims: &Claims) -> Result<(), ApiError> {
        self.governance.check_revoked(claims)
    }

    /// Admit a request of `body_len` bytes asking for at most `max_out` output tokens.
    pub async fn admit(
        &self,
        claims: &Claims,
        model: &str,
        body_len: usize,
        max_out: Option<u64>,
    ) -> Result<Admission, ApiError> {
        let reservation = self
            .governance
            .admit_sized(claims, model, body_len as u64, max_out)
            .await?;
        Ok(Admission {
            id: reservation.id.clone(),
            reservation,
        })
    }

    pub fn release(&self, admission: Admission, outcome: Outcome) {
        let g = self.governance.clone();
        tracing::debug!(reservation = %admission.id, ?outcome, "released");
        spawn(async move { g.release(admission.reservation).await });
    }

    pub fn finish(
        &self,
        record: RequestRecord,
        usage: Option<Usage>,
        end: StreamEnd,
        streamed_text_bytes: u64,
        after: AfterSettle,
    ) {
        {
            let u = usage.unwrap_or_default();
            let mut totals = self
                .totals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let t = totals
                .entry(record.claims.grant.principal.clone())
                .or_default();
            t.requests += 1;
            t.input_tokens += u.input_tokens;
            t.cached_input_tokens += u.cached_input_tokens;
            t.output_tokens += u.output_tokens;
            t.reasoning_tokens += u.reasoning_tokens;
            if end != StreamEnd::Completed {
                t.incomplete_streams += 1;
            }
        }
        let RequestRecord {
            claims,
            model,
            provider,
            started,
            admission,
            ..
        } = record;
        let end_s = match end {
            StreamEnd::Completed => "completed",
            StreamEnd::Incomplete => "incomplete",
            StreamEnd::Failed => "failed",
            StreamEnd::Truncated => "truncated",
        };
        let settled = Settled {
            claims,
            model,
            provider,
            started,
            finished: Instant::now(),
            usage,
            end: end_s,
            streamed_text_bytes,
        };
        let g = self.governance.clone();
        if g.settles_locally() {
            // Nothing to await: the settler runs it with the rest of its batch.
            self.settlements.push(Box::new(move || {
                let cost = g.settle_now(&settled.claims, admission.reservation, settled.finished());
                settled.log(cost);
                after(cost);
            }));
            return;
        }
        spawn(async move {
            let cost = g
                .settle(&settled.claims, admission.reservation, settled.finished())
                .await;
            settled.log(cost);
            after(cost);
        });
    }
}

/// A finished request on its way to settlement.
struct Settled {
    claims: Arc<Claims>,
    model: String,
    provider: String,
    started: Instant,
    /// When the response ended (settlement may run a little later).
    finished: Instant,
    usage: Option<Usage>,
    end: &'static str,
    streamed_text_bytes: u64,
}

impl Settled {
    fn finished(&self) -> Finished<'_> {
        Finished {
            model: &self.model,
            provider: &self.provider,
            usage: self.usage,
            end: self.end,
            streamed_text_bytes: self.streamed_text_bytes,
        }
    }

    /// The one log line per request.
    fn log(&self, cost: tollgate::Nanos) {
        let u = self.usage.unwrap_or_default();
        tracing::info!(
            principal = %self.claims.grant.principal,
            model = %self.model,
            provider = %self.provider,
            input_tokens = u.input_tokens,
            cached_input_tokens = u.cached_input_tokens,
            output_tokens = u.output_tokens,
            usage_reported = self.usage.is_some(),
            end = self.end,
            streamed_text_bytes = self.streamed_text_bytes,
            cost_nanos = cost.0,
            latency_ms = self.finished.duration_since(self.started).as_millis() as u64,
            "request finished"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_panicking_settlement_does_not_take_the_rest_of_its_batch() {
        // `started` set: no settler task, so the drain below is the only consumer (no clock involved).
        let s = Arc::new(Settlements {
            jobs: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
            started: std::sync::atomic::AtomicBool::new(true),
        });
        let done = Arc::new(AtomicUsize::new(0));
        for i in 0..10 {
            let done = done.clone();
            s.push(Box::new(move || {
                assert_ne!(i, 3, "job 3 panics");
                done.fetch_add(1, Ordering::SeqCst);
            }));
        }
        assert_eq!(s.drain(), 10);
        assert_eq!(done.load(Ordering::SeqCst), 9, "every other job ran");
        assert_eq!(s.drain(), 0, "each job runs once");
    }
}
