//! Accounting hooks on the request path: admit (before forwarding), release (failed before the first byte),
//! finish (settle real usage, exactly once), and the revocation check. The work is done by
//! [`crate::governance::Governance`]. Settlement never awaits the store (its write is queued for the
//! group-committing writer), so it runs in place — also from `Drop` (client disconnect); only with Redis
//! rate limits, whose token charge is a network call, does it run on a spawned task.

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
        }
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
            usage,
            end: end_s,
            streamed_text_bytes,
        };
        let g = &self.governance;
        if g.settles_locally() {
            // Nothing to await: settle in place (a spawned task would wake another worker thread).
            let cost = g.settle_now(&settled.claims, admission.reservation, settled.finished());
            settled.log(cost);
            after(cost);
            return;
        }
        let g = g.clone();
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
            latency_ms = self.started.elapsed().as_millis() as u64,
            "request finished"
        );
    }
}
