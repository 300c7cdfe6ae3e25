//! Accounting: what happens once governance has admitted a proxied request, until its spend is stored.
//!
//! One record and one fan-out. The proxy holds an [`InFlight`] from admission on; it ends in exactly one of
//! two ways: [`InFlight::release`] (every attempt failed before the first byte: nothing is charged) or
//! [`InFlight::finish`] (an answer was relayed: its usage is charged). A dropped `InFlight` releases. A
//! finished request becomes one [`Finished`] record, pushed onto the one settlement queue; the settler task
//! takes a batch every [`LINGER`] (batches start at least that far apart, under load too) and, for each
//! record in order:
//!
//! 1. governance settles it (budgets and allotments, tokens per minute) → cost and a store write;
//! 2. metrics (tokens, cost, latency, how it ended);
//! 3. the audit record;
//! 4. the trace span and the one log line;
//!
//! then group-commits the batch's store writes in one transaction, retried until they land. Nothing of this
//! runs on the request path: the request only pushes (measured in docs/benchmarks.md). The queue is bounded
//! by back-pressure at admission ([`Accounting::check_capacity`]): while it is full — the store has been
//! failing for a while — new requests are refused with 503 rather than served on credit; what was served is
//! never dropped.

use crate::audit::{AuditEvent, AuditLog, EventKind};
use crate::clock::SharedClock;
use crate::governance::{Finished as Settle, Governance, Reservation};
use crate::metrics::{Metrics, Settled};
use crate::session::CodexSession;
use crate::usage::{StreamEnd, Usage};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, oneshot};
use tollgate::Claims;

/// How long finished requests gather before the settler takes them (group commit with a linger, as Kafka's
/// `linger.ms`): one transaction — and one wake-up of the store's thread — per batch instead of per request.
pub const LINGER: Duration = Duration::from_millis(5);
/// Finished requests settled (and written) per batch, at most.
const BATCH: usize = 512;
/// Finished requests that may wait in the queue before admission refuses new requests.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// Why admission must wait: the settlement queue is full.
#[derive(Debug, thiserror::Error)]
#[error("{depth} finished requests are waiting to be settled (capacity {capacity})")]
pub struct Backlog {
    pub depth: usize,
    pub capacity: usize,
}

/// What a client refused for a full queue is told to wait: the settlement writer's longest back-off between
/// two attempts to store a batch, so a retry comes after the store has had another try.
pub const BACKLOG_RETRY_AFTER_SECS: u64 = 5;

impl From<Backlog> for crate::error::ApiError {
    fn from(e: Backlog) -> Self {
        tracing::error!(error = %e, "refusing: settlements are not being stored");
        crate::error::ApiError::SettlementBacklog {
            retry_after_secs: BACKLOG_RETRY_AFTER_SECS,
        }
    }
}

/// The one record of a finished proxied request.
#[derive(Debug)]
pub struct Finished {
    pub request_id: String,
    pub claims: Arc<Claims>,
    /// The model the client asked for (priced and labelled by this name).
    pub model: String,
    /// The provider that answered, and its kind's name (`openai`, `anthropic`, …).
    pub provider: String,
    pub provider_kind: &'static str,
    /// Upstream HTTP status of the relayed answer.
    pub status: u16,
    pub started: Instant,
    pub dispatched: Instant,
    pub first_byte: Option<Instant>,
    pub ended: Instant,
    /// As the upstream reported it; `None` when the answer ended without usage.
    pub usage: Option<Usage>,
    pub end: StreamEnd,
    /// Output text relayed, for the charge when no usage was reported.
    pub streamed_text_bytes: u64,
    /// The Codex session it belongs to (validated headers): spend row, audit detail and log line only.
    pub session: Option<Box<CodexSession>>,
    reservation: Reservation,
    span: tracing::Span,
}

/// Who answered a request (known once a target produced a response).
#[derive(Clone, Debug)]
pub struct Served {
    pub provider: String,
    pub provider_kind: &'static str,
    pub status: u16,
}

enum Job {
    Finished(Box<Finished>),
    Flush(oneshot::Sender<()>),
}

/// The settlement queue and its fan-out targets (its own sinks: no application state).
pub struct Accounting {
    governance: Arc<Governance>,
    metrics: Arc<Metrics>,
    audit: Option<Arc<AuditLog>>,
    clock: SharedClock,
    queue: Queue,
    wake: Notify,
    started: AtomicBool,
}

impl Accounting {
    pub fn new(
        governance: Arc<Governance>,
        metrics: Arc<Metrics>,
        audit: Option<Arc<AuditLog>>,
        clock: SharedClock,
    ) -> Arc<Self> {
        Self::with_capacity(governance, metrics, audit, clock, DEFAULT_CAPACITY)
    }

    pub fn with_capacity(
        governance: Arc<Governance>,
        metrics: Arc<Metrics>,
        audit: Option<Arc<AuditLog>>,
        clock: SharedClock,
        capacity: usize,
    ) -> Arc<Self> {
        Arc::new(Accounting {
            governance,
            metrics,
            audit,
            clock,
            queue: Queue::new(capacity),
            wake: Notify::new(),
            started: AtomicBool::new(false),
        })
    }

    /// Refuse admission while the settlement queue is full (checked before a request is admitted).
    pub fn check_capacity(&self) -> Result<(), Backlog> {
        self.queue.check()
    }

    /// Start accounting for an admitted request that is about to go upstream; records Tollgate's own
    /// added time (arrival → dispatch).
    pub fn start(
        self: &Arc<Self>,
        claims: Arc<Claims>,
        model: String,
        route: &str,
        started: Instant,
        reservation: Reservation,
    ) -> InFlight {
        let now = Instant::now();
        self.metrics
            .added_latency(route, now.duration_since(started).as_secs_f64());
        InFlight {
            accounting: self.clone(),
            span: crate::telemetry::request_span(route, &model),
            claims,
            model,
            reservation: Some(reservation),
            request_id: crate::request_id::request_id(),
            started,
            dispatched: now,
            first_byte: None,
            session: None,
        }
    }

    fn push(self: &Arc<Self>, job: Job) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // No runtime (a drop at process exit): nothing can write to the store any more.
            if let Job::Finished(f) = job {
                tracing::error!(request_id = %f.request_id, "a request finished after the runtime stopped; its reservation expires with its lease");
            }
            return;
        };
        if !self.started.swap(true, Ordering::AcqRel) {
            rt.spawn(self.clone().run());
        }
        let (first, depth) = self.queue.push(job);
        self.metrics.settlement_queue(depth);
        if first {
            self.wake.notify_one();
        }
    }

    /// Wait until every request finished so far is settled and its spend is in the store (or `timeout`
    /// passes: false). Graceful shutdown and tests.
    pub async fn flush(self: &Arc<Self>, timeout: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        self.push(Job::Flush(tx));
        matches!(tokio::time::timeout(timeout, rx).await, Ok(Ok(())))
    }

    async fn run(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            // Batches start at least LINGER apart, also while the queue never empties (under load): taking
            // whatever arrived while the last batch was being settled made the batches small, and each
            // costs the same few store statements — round trips to the SQLite thread or to PostgreSQL —
            // whatever its size (issue #19, docs/benchmarks.md). A full batch means settlement is behind:
            // the next one goes at once.
            let mut due = tokio::time::Instant::now() + LINGER;
            loop {
                tokio::time::sleep_until(due).await;
                due = tokio::time::Instant::now() + LINGER;
                let batch = self.queue.take(BATCH);
                if batch.is_empty() {
                    break;
                }
                let full = batch.len() == BATCH;
                self.settle_batch(batch).await;
                self.metrics.settlement_queue(self.queue.depth());
                if full {
                    due = tokio::time::Instant::now();
                }
            }
        }
    }

    /// Settle a batch: each record through the fan-out, then one store write for all of them.
    async fn settle_batch(&self, batch: Vec<Job>) {
        let mut writes = Vec::with_capacity(batch.len());
        // The session of each write, by index (the spend row's session columns).
        let mut sessions = Vec::with_capacity(batch.len());
        let mut flushes = Vec::new();
        // Tokens to charge the shared (Redis) rate limits, after the batch's records.
        let shared = self.governance.shares_rate_limits();
        let mut charges = Vec::new();
        {
            // The batch's log lines reach stderr in one write (no `.await` in here).
            let _lines = crate::telemetry::LogBatch::begin();
            for job in batch {
                match job {
                    Job::Finished(f) => {
                        let claims = shared.then(|| f.claims.clone());
                        let session = f.session.clone();
                        // One record that panics must not take the rest of its batch (or this task) with it.
                        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            self.fan_out(*f)
                        })) {
                            Ok((apply, tokens)) => {
                                writes.push(apply);
                                sessions.push(session);
                                if let Some(claims) = claims {
                                    charges.push((claims, tokens));
                                }
                            }
                            Err(_) => {
                                tracing::error!("a settlement panicked; its spend is not recorded")
                            }
                        }
                    }
                    Job::Flush(done) => flushes.push(done),
                }
            }
        }
        for (claims, tokens) in charges {
            self.governance.charge_shared_tokens(&claims, tokens).await;
        }
        if !writes.is_empty() {
            let mut delay = Duration::from_millis(50);
            let moved = loop {
                match self
                    .governance
                    .store
                    .apply_with_sessions(&writes, &sessions)
                    .await
                {
                    Ok(moved) => break moved,
                    Err(e) => {
                        self.governance.note_store_write(false);
                        tracing::error!(error = %e, settlements = writes.len(), "could not store settlements; will retry");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(BACKLOG_RETRY_AFTER_SECS));
                    }
                }
            };
            self.governance.note_store_write(true);
            // Stored: these requests are no longer in flight (a dead broker's are charged their estimate).
            self.governance
                .note_settled(writes.iter().filter_map(|w| match w {
                    crate::governance::store::Apply::Spend { record, .. } => {
                        Some(record.id.as_str())
                    }
                    crate::governance::store::Apply::Return { .. } => None,
                }));
            self.governance.note_spent(&moved);
            self.alerts(&moved).await;
        }
        for done in flushes {
            let _ = done.send(());
        }
    }

    /// Requests a dead broker had in flight, charged their reserved estimate by this replica
    /// ([`Governance::tick`]): each to the audit trail (`detail.end = "estimated"`) and the log, then the
    /// budget alerts the charges reached.
    pub async fn record_estimated(&self, charged: crate::governance::Charged) {
        for r in &charged.records {
            tracing::warn!(
                spend_id = %r.id,
                principal = %r.principal,
                model = %r.model,
                cost_nanos = r.cost,
                end = r.end_reason.as_str(),
                "request charged its reserved estimate: its broker died before settling it"
            );
            if let Some(audit) = &self.audit {
                audit.record(AuditEvent {
                    ts: r.settled_at,
                    kind: Some(EventKind::Request),
                    actor: r.principal.clone(),
                    principal: Some(r.principal.clone()),
                    team: r.team.clone(),
                    model: Some(r.model.clone()),
                    provider: None,
                    status: None,
                    input_tokens: Some(r.input_tokens),
                    output_tokens: Some(r.output_tokens),
                    cost_nanos: Some(r.cost),
                    request_id: None,
                    jti: Some(r.jti.clone()),
                    expires_at: None,
                    detail: serde_json::json!({
                        "org": r.org,
                        "end": r.end_reason,
                        "estimated": true,
                        "spend_id": r.id,
                        "reserved_nanos": r.reserved,
                        "price_version": r.price_version,
                        "price_tier": r.price_tier,
                    }),
                });
            }
        }
        self.alerts(&charged.moved).await;
    }

    /// Budget alerts for the counters a stored batch moved: claimed in the store (once across replicas),
    /// then to the log, the audit trail and the sinks (delivered on their own tasks).
    async fn alerts(&self, moved: &[(crate::governance::store::CounterKey, i64)]) {
        for ev in self.governance.check_thresholds(moved).await {
            self.metrics.alert(&ev.threshold);
            tracing::warn!(
                alert = %ev.id,
                budget = %ev.budget_id,
                scope = ev.scope.as_str(),
                subject = %ev.subject,
                threshold = %ev.threshold,
                spent_nanos = ev.spent_nanos,
                amount_nanos = ev.amount_nanos,
                "{}",
                ev.text()
            );
            if let Some(audit) = &self.audit {
                let mut detail = serde_json::to_value(&ev).unwrap_or_default();
                if let Some(o) = detail.as_object_mut() {
                    o.insert("action".into(), "budget_alert".into());
                }
                audit.record(AuditEvent {
                    ts: i64::try_from(self.clock.now_secs()).unwrap_or(i64::MAX),
                    kind: Some(EventKind::Admin),
                    actor: "system".into(),
                    principal: (ev.scope == crate::config::Scope::Principal)
                        .then(|| ev.subject.clone()),
                    team: (ev.scope == crate::config::Scope::Team).then(|| ev.subject.clone()),
                    cost_nanos: Some(ev.spent_nanos),
                    detail,
                    ..Default::default()
                });
            }
            self.governance.alerter().deliver(&ev);
        }
    }

    /// Governance → metrics → audit → span and log line, for one record. Returns its store write and the
    /// tokens it used.
    fn fan_out(&self, f: Finished) -> (crate::governance::store::Apply, u64) {
        let end = end_label(f.end);
        let settlement = self.governance.settle(
            &f.claims,
            f.reservation,
            Settle {
                model: &f.model,
                provider: &f.provider,
                usage: f.usage,
                end,
                streamed_text_bytes: f.streamed_text_bytes,
            },
        );
        let cost = settlement.cost;
        let (price_version, price_tier) = match &settlement.apply {
            crate::governance::store::Apply::Spend { record, .. } => {
                (record.price_version.as_str(), record.price_tier.as_str())
            }
            crate::governance::store::Apply::Return { .. } => ("", ""),
        };
        let u = f.usage.unwrap_or_default();
        let s = f.session.as_deref();
        let upstream_secs = f.ended.duration_since(f.dispatched).as_secs_f64();
        let ttfb = f.first_byte.map(|t| t.duration_since(f.started));
        let latency_ms =
            u64::try_from(f.ended.duration_since(f.started).as_millis()).unwrap_or(u64::MAX);
        let g = &f.claims.grant;
        self.metrics.settled(&Settled {
            model: &f.model,
            provider: &f.provider,
            principal: &g.principal,
            input_tokens: u.input_tokens,
            cached_input_tokens: u.cached_input_tokens,
            output_tokens: u.output_tokens,
            cost_nanos: u64::try_from(cost.0).unwrap_or(0),
            end,
            upstream_secs,
            ttfb_secs: ttfb.map(|d| d.as_secs_f64()),
        });
        if !f.span.is_disabled() {
            crate::telemetry::settle_span(&f.span, f.provider_kind, &f.provider, f.status, &u, end);
        }
        tracing::info!(
            request_id = %f.request_id,
            principal = %g.principal,
            model = %f.model,
            provider = %f.provider,
            input_tokens = u.input_tokens,
            cached_input_tokens = u.cached_input_tokens,
            output_tokens = u.output_tokens,
            usage_reported = f.usage.is_some(),
            end,
            streamed_text_bytes = f.streamed_text_bytes,
            cost_nanos = cost.0,
            price_version = %price_version,
            price_tier = %price_tier,
            latency_ms,
            session_id = s.and_then(|s| s.session_id.as_deref()),
            thread_id = s.and_then(|s| s.thread_id.as_deref()),
            turn_id = s.and_then(|s| s.turn_id.as_deref()),
            window_id = s.and_then(|s| s.window_id.as_deref()),
            request_kind = s.and_then(CodexSession::request_kind_str),
            originator = s.and_then(|s| s.originator.as_deref()),
            subagent = s.and_then(|s| s.subagent.as_deref()),
            "request finished"
        );
        // Last: the audit event takes the request's strings.
        if let Some(audit) = &self.audit {
            let mut detail = serde_json::json!({
                "identity": g.identity,
                "org": g.org,
                "cached_input_tokens": u.cached_input_tokens,
                "reasoning_tokens": u.reasoning_tokens,
                "end": end,
                "price_version": price_version,
                "price_tier": price_tier,
                "latency_ms": latency_ms,
                "ttfb_ms": ttfb.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            });
            // The Codex session fields (`session_id`, `request_kind`, …), only those that were sent.
            if let (Some(o), Some(serde_json::Value::Object(sess))) = (
                detail.as_object_mut(),
                s.and_then(|s| serde_json::to_value(s).ok()),
            ) {
                o.extend(sess);
            }
            audit.record(AuditEvent {
                ts: i64::try_from(self.clock.now_secs()).unwrap_or(i64::MAX),
                kind: Some(EventKind::Request),
                actor: g.principal.clone(),
                principal: Some(g.principal.clone()),
                team: g.team.clone(),
                model: Some(f.model),
                provider: Some(f.provider),
                status: Some(i64::from(f.status)),
                input_tokens: Some(i64::try_from(u.input_tokens).unwrap_or(i64::MAX)),
                output_tokens: Some(i64::try_from(u.output_tokens).unwrap_or(i64::MAX)),
                cost_nanos: Some(cost.0),
                request_id: Some(f.request_id),
                jti: Some(f.claims.jti.clone()),
                expires_at: None,
                detail,
            });
        }
        // The same tokens the local limiter was charged (an estimate when no usage was reported).
        (settlement.apply, settlement.tokens)
    }
}

fn end_label(end: StreamEnd) -> &'static str {
    match end {
        StreamEnd::Completed => "completed",
        StreamEnd::Incomplete => "incomplete",
        StreamEnd::Failed => "failed",
        StreamEnd::Truncated => "truncated",
        StreamEnd::Cut => "cut",
    }
}

/// An admitted request on its way through the proxy. Ends exactly once: released, finished, or dropped
/// (released).
pub struct InFlight {
    accounting: Arc<Accounting>,
    claims: Arc<Claims>,
    model: String,
    /// `None` once it has ended.
    reservation: Option<Reservation>,
    request_id: String,
    started: Instant,
    dispatched: Instant,
    first_byte: Option<Instant>,
    /// The `gen_ai` trace span of this request; closed when it settles.
    span: tracing::Span,
    session: Option<Box<CodexSession>>,
}

impl InFlight {
    /// The Codex session this request belongs to ([`CodexSession::from_headers`]), recorded with its spend.
    pub fn set_session(&mut self, session: Option<CodexSession>) {
        self.session = session.map(Box::new);
    }

    pub fn mark_first_byte(&mut self) {
        if self.first_byte.is_none() {
            self.first_byte = Some(Instant::now());
        }
    }

    /// The answer reports the service tier it was served at (OpenAI's `service_tier` in the response
    /// object or chunk): it is charged at that tier's price where the table has one, not the tier asked for.
    pub fn served_tier(&mut self, tier: crate::governance::pricing::ServiceTier) {
        if let Some(r) = &mut self.reservation {
            r.served_at(tier);
        }
    }

    /// Every attempt failed before the first byte: give the reservation back, charge nothing.
    pub fn release(mut self) {
        if let Some(r) = self.reservation.take() {
            tracing::debug!(reservation = %r.id, "released");
            self.accounting.governance.release(r);
        }
    }

    /// An answer was relayed: settle `usage` (or, without it, the input estimate plus the streamed output).
    pub fn finish(
        mut self,
        served: Served,
        usage: Option<Usage>,
        end: StreamEnd,
        streamed_text_bytes: u64,
    ) {
        let Some(reservation) = self.reservation.take() else {
            return;
        };
        let f = Finished {
            request_id: std::mem::take(&mut self.request_id),
            claims: self.claims.clone(),
            model: std::mem::take(&mut self.model),
            provider: served.provider,
            provider_kind: served.provider_kind,
            status: served.status,
            started: self.started,
            dispatched: self.dispatched,
            first_byte: self.first_byte,
            ended: Instant::now(),
            usage,
            end,
            streamed_text_bytes,
            session: self.session.take(),
            reservation,
            span: std::mem::replace(&mut self.span, tracing::Span::none()),
        };
        self.accounting.push(Job::Finished(Box::new(f)));
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // The handler was dropped before an answer (the client went away while we waited upstream).
        if let Some(r) = self.reservation.take() {
            self.accounting.governance.release(r);
        }
    }
}

/// The queue itself: jobs in order, and how many finished requests are waiting.
struct Queue {
    jobs: Mutex<VecDeque<Job>>,
    capacity: usize,
}

impl Queue {
    fn new(capacity: usize) -> Self {
        Queue {
            jobs: Mutex::new(VecDeque::new()),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Job>> {
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn depth(&self) -> usize {
        self.lock().len()
    }

    fn check(&self) -> Result<(), Backlog> {
        let depth = self.depth();
        if depth >= self.capacity {
            return Err(Backlog {
                depth,
                capacity: self.capacity,
            });
        }
        Ok(())
    }

    /// Push (never refused: what was served is always recorded); whether the queue was empty, and the depth.
    fn push(&self, job: Job) -> (bool, usize) {
        let mut q = self.lock();
        q.push_back(job);
        (q.len() == 1, q.len())
    }

    fn take(&self, n: usize) -> Vec<Job> {
        let mut q = self.lock();
        let n = n.min(q.len());
        q.drain(..n).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flush_job() -> (Job, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (Job::Flush(tx), rx)
    }

    #[test]
    fn a_full_queue_refuses_admission_but_never_a_push() {
        let q = Queue::new(2);
        assert!(q.check().is_ok());
        let (j, _r1) = flush_job();
        assert_eq!(q.push(j), (true, 1));
        assert!(q.check().is_ok());
        let (j, _r2) = flush_job();
        assert_eq!(q.push(j), (false, 2));
        let e = q.check().expect_err("full");
        assert_eq!((e.depth, e.capacity), (2, 2));
        // A request that was already served is still queued past the capacity.
        let (j, _r3) = flush_job();
        assert_eq!(q.push(j), (false, 3));
        assert_eq!(q.take(2).len(), 2);
        assert!(q.check().is_ok(), "back under capacity after a batch");
        assert_eq!(q.take(10).len(), 1);
        assert!(q.take(10).is_empty());
    }
}
