//! Soft limits and budget alerts.
//!
//! A budget may carry `thresholds = [50, 80, 100]` (percent of its amount) and `soft_usd` (an amount that
//! warns without refusing). After each settlement batch is stored, [`crate::accounting`] gives governance
//! the counters it moved, with their new `spent`; every mark a counter has reached and this replica has not
//! seen yet is **claimed** in the store (`budget_alerts`, one row per budget × subject × window × mark,
//! `INSERT … ON CONFLICT DO NOTHING`), and only the replica whose insert won emits the [`AlertEvent`]: once
//! across all replicas. The event goes to the audit trail, the log, and every configured sink.
//!
//! Sinks (`[[alerts.sinks]]`): a generic webhook (the event as JSON, signed — see [`sign`]) and a
//! Slack-compatible incoming webhook (`{"text": …}`). Each delivery runs on its own task, retried with
//! exponential back-off, with a timeout per attempt; outcomes are counted in
//! `tollgate_alert_deliveries_total{sink, outcome}`. Nothing here is on a request's path, and a sink that is
//! down delays nothing but its own retries.

use crate::clock::SharedClock;
use crate::config::budgets::{BudgetConfig, Scope};
use crate::metrics::Metrics;
use secrecy::ExposeSecret;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub use crate::config::alerts::{AlertsConfig, RawAlerts, RawSink, SinkConfig, SinkKind};

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------- marks and events

/// A point of a budget that emits one alert per window: a percentage of its amount, or its soft limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mark {
    Percent(u32),
    Soft,
}

impl Mark {
    /// `80%` or `soft`: the `threshold` of the event and of the store row.
    pub fn label(self) -> String {
        match self {
            Mark::Percent(p) => format!("{p}%"),
            Mark::Soft => "soft".into(),
        }
    }

    /// The spend at which the mark is reached, in nano-USD (a percentage rounds up).
    pub fn at(self, b: &BudgetConfig) -> i64 {
        match self {
            Mark::Percent(p) => {
                let v = (i128::from(b.amount.0) * i128::from(p)).div_euclid(100)
                    + i128::from((i128::from(b.amount.0) * i128::from(p)).rem_euclid(100) != 0);
                i64::try_from(v).unwrap_or(i64::MAX)
            }
            Mark::Soft => b.soft.map_or(i64::MAX, |s| s.0),
        }
    }
}

/// The marks a budget alerts at, in ascending order of spend.
pub fn marks(b: &BudgetConfig) -> Vec<Mark> {
    let mut m: Vec<Mark> = b.thresholds.iter().map(|p| Mark::Percent(*p)).collect();
    if b.soft.is_some() {
        m.push(Mark::Soft);
    }
    m.sort_by_key(|k| (k.at(b), *k));
    m
}

/// The marks `spent` has reached.
pub fn reached(b: &BudgetConfig, spent: i64) -> Vec<Mark> {
    marks(b).into_iter().filter(|m| spent >= m.at(b)).collect()
}

/// One alert: a budget counter reached a mark. Serialised as the generic webhook's JSON body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AlertEvent {
    /// `budget.threshold` (a percentage) or `budget.soft_limit`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Stable across replicas and retries: the receiver can de-duplicate on it.
    pub id: String,
    pub budget_id: String,
    pub scope: Scope,
    /// The principal, team or org (a token id for token budgets).
    pub subject: String,
    pub window: String,
    pub period_start: String,
    /// `None` for a lifetime budget.
    pub resets_at: Option<String>,
    /// `80%` or `soft`.
    pub threshold: String,
    pub threshold_nanos: i64,
    pub threshold_usd: String,
    pub amount_nanos: i64,
    pub amount_usd: String,
    /// Settled spend of the window when the mark was reached (this replica's view right after its write).
    pub spent_nanos: i64,
    pub spent_usd: String,
    /// When the mark was claimed (RFC 3339).
    pub at: String,
}

impl AlertEvent {
    pub fn new(
        b: &BudgetConfig,
        subject: &str,
        period_start: i64,
        mark: Mark,
        spent: i64,
        now: i64,
    ) -> Self {
        use sha2::Digest;
        let label = mark.label();
        let id = hex::encode(sha2::Sha256::digest(
            format!("{}\0{subject}\0{period_start}\0{label}", b.id).as_bytes(),
        ))[..32]
            .to_string();
        let (_, end) = b.window.period(u64::try_from(period_start).unwrap_or(0));
        let usd = |n: i64| tollgate::Nanos(n).to_string();
        AlertEvent {
            kind: match mark {
                Mark::Percent(_) => "budget.threshold".into(),
                Mark::Soft => "budget.soft_limit".into(),
            },
            id,
            budget_id: b.id.clone(),
            scope: b.scope,
            subject: subject.to_string(),
            window: b.window.as_str().to_string(),
            period_start: super::window::rfc3339(period_start),
            resets_at: end.map(super::window::rfc3339),
            threshold: label,
            threshold_nanos: mark.at(b),
            threshold_usd: usd(mark.at(b)),
            amount_nanos: b.amount.0,
            amount_usd: usd(b.amount.0),
            spent_nanos: spent,
            spent_usd: usd(spent),
            at: super::window::rfc3339(now),
        }
    }

    /// One line for people (the Slack payload and the log).
    pub fn text(&self) -> String {
        let what = if self.kind == "budget.soft_limit" {
            format!("passed its soft limit of {}", self.threshold_usd)
        } else {
            format!("reached {} ({})", self.threshold, self.threshold_usd)
        };
        let resets = self
            .resets_at
            .as_deref()
            .map_or(String::new(), |r| format!(" It resets at {r}."));
        format!(
            "Tollgate: {} budget '{}' for {} {} {what}: {} spent of {}.{resets}",
            self.window,
            self.budget_id,
            self.scope.as_str(),
            self.subject,
            self.spent_usd,
            self.amount_usd
        )
    }
}

/// The Slack summary of a weekly report: the total, then the ten largest rows.
pub fn report_text(r: &super::report::Report) -> String {
    let usd = |n: i64| tollgate::Nanos(n).to_string();
    let mut rows: Vec<&super::report::Line> = r.rows.iter().collect();
    rows.sort_by_key(|l| std::cmp::Reverse(l.sums.cost_nanos));
    let by =
        r.by.iter()
            .find(|c| *c != "day")
            .map_or("group", String::as_str);
    let mut t = format!(
        "Tollgate weekly spend {} to {}: {} in {} requests.",
        r.from,
        r.to,
        usd(r.totals.cost_nanos),
        r.totals.requests
    );
    if !rows.is_empty() {
        t.push_str(&format!(" By {by}:"));
        for l in rows.iter().take(10) {
            let name = l.group.clone().flatten().unwrap_or_else(|| "(none)".into());
            t.push_str(&format!(
                " {name} {} ({}),",
                usd(l.sums.cost_nanos),
                l.sums.requests
            ));
        }
        t.pop();
        if rows.len() > 10 {
            t.push_str(&format!(" and {} more", rows.len() - 10));
        }
        t.push('.');
    }
    t
}

// ---------------------------------------------------------------- signing

/// The generic webhook's signature header: `v1=` and the hex HMAC-SHA256, keyed with the sink's secret,
/// of `"{timestamp}.{body}"` (`timestamp` = the `x-tollgate-timestamp` header, Unix seconds). A receiver
/// recomputes it over the raw body, compares in constant time, and rejects timestamps more than a few
/// minutes old (each attempt is signed afresh).
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    use aws_lc_rs::hmac;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("v1={}", hex::encode(ctx.sign().as_ref()))
}

/// Check a signature as a receiver would (constant time).
pub fn verify(secret: &[u8], timestamp: &str, signature: &str, body: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    let Ok(ts) = timestamp.parse::<u64>() else {
        return false;
    };
    bool::from(
        sign(secret, ts, body)
            .as_bytes()
            .ct_eq(signature.as_bytes()),
    )
}

pub const HEADER_TIMESTAMP: &str = "x-tollgate-timestamp";
pub const HEADER_SIGNATURE: &str = "x-tollgate-signature";
pub const HEADER_EVENT: &str = "x-tollgate-event";
pub const HEADER_DELIVERY: &str = "x-tollgate-delivery";

// ---------------------------------------------------------------- delivery

/// Deliveries waiting or retrying at once, at most; beyond, new ones are dropped (and counted).
const MAX_PENDING: usize = 1024;

/// Delivers alert events to the configured sinks, each delivery on its own task.
pub struct Alerter {
    sinks: Vec<SinkConfig>,
    http: reqwest::Client,
    retry_initial: Duration,
    max_attempts: u32,
    timeout: Duration,
    metrics: Arc<Metrics>,
    clock: SharedClock,
    pending: Arc<AtomicUsize>,
}

impl Alerter {
    pub fn new(cfg: &AlertsConfig, metrics: Arc<Metrics>, clock: SharedClock) -> Self {
        for name in &cfg.disabled {
            tracing::warn!(sink = %name, "alert sink disabled: its url_env or secret_env is not set");
        }
        Alerter {
            sinks: cfg.sinks.clone(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            retry_initial: cfg.retry_initial,
            max_attempts: cfg.max_attempts,
            timeout: cfg.timeout,
            metrics,
            clock,
            pending: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn has_sinks(&self) -> bool {
        !self.sinks.is_empty()
    }

    /// Deliveries not finished yet (waiting, in flight or between retries).
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Send `ev` to every sink, each on its own task. Never waits.
    pub fn deliver(&self, ev: &AlertEvent) {
        let json = serde_json::to_value(ev).unwrap_or_default();
        self.send(&ev.kind, &ev.id, &json, &ev.text());
    }

    /// Send a weekly spend report (`name` and `period_start` make its id) to every sink: the generic webhook
    /// gets `{"type": "report.weekly", "id", "from", "to", "by", "rows", "totals"}` (the report API's JSON),
    /// Slack a summary of the top ten rows.
    pub fn deliver_report(&self, r: &super::report::Report, name: &str, period_start: i64) {
        use sha2::Digest;
        let id = hex::encode(sha2::Sha256::digest(
            format!("{name}\0{period_start}").as_bytes(),
        ))[..32]
            .to_string();
        let mut json = r.to_json();
        if let Some(o) = json.as_object_mut() {
            o.insert("type".into(), "report.weekly".into());
            o.insert("id".into(), id.clone().into());
        }
        self.send("report.weekly", &id, &json, &report_text(r));
    }

    fn send(&self, kind: &str, id: &str, json: &serde_json::Value, text: &str) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for sink in &self.sinks {
            if self.pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING {
                self.pending.fetch_sub(1, Ordering::AcqRel);
                self.metrics.alert_delivery(&sink.name, "dropped");
                tracing::error!(sink = %sink.name, alert = %id, "alert dropped: too many deliveries pending");
                continue;
            }
            let body = match sink.kind {
                SinkKind::Webhook => serde_json::to_vec(json),
                SinkKind::Slack => serde_json::to_vec(&serde_json::json!({"text": text})),
            }
            .unwrap_or_default();
            let job = Delivery {
                sink: sink.clone(),
                body,
                event: kind.to_string(),
                id: id.to_string(),
                http: self.http.clone(),
                retry_initial: self.retry_initial,
                max_attempts: self.max_attempts,
                timeout: self.timeout,
                metrics: self.metrics.clone(),
                clock: self.clock.clone(),
                pending: self.pending.clone(),
            };
            rt.spawn(job.run());
        }
    }
}

struct Delivery {
    sink: SinkConfig,
    body: Vec<u8>,
    event: String,
    id: String,
    http: reqwest::Client,
    retry_initial: Duration,
    max_attempts: u32,
    timeout: Duration,
    metrics: Arc<Metrics>,
    clock: SharedClock,
    pending: Arc<AtomicUsize>,
}

impl Delivery {
    async fn attempt(&self) -> Result<(), String> {
        let mut req = self
            .http
            .post(self.sink.url.expose_secret())
            .timeout(self.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(HEADER_EVENT, &self.event)
            .header(HEADER_DELIVERY, &self.id);
        if let Some(secret) = &self.sink.secret {
            let ts = self.clock.now_secs();
            req = req.header(HEADER_TIMESTAMP, ts.to_string()).header(
                HEADER_SIGNATURE,
                sign(secret.expose_secret().as_bytes(), ts, &self.body),
            );
        }
        match req.body(self.body.clone()).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("status {}", r.status().as_u16())),
            // Without the URL (it may carry a token).
            Err(e) if e.is_timeout() => Err("timed out".into()),
            Err(e) if e.is_connect() => Err("could not connect".into()),
            Err(_) => Err("request failed".into()),
        }
    }

    async fn run(self) {
        let mut wait = self.retry_initial;
        for attempt in 1..=self.max_attempts {
            match self.attempt().await {
                Ok(()) => {
                    self.metrics.alert_delivery(&self.sink.name, "delivered");
                    tracing::debug!(sink = %self.sink.name, alert = %self.id, attempt, "alert delivered");
                    self.pending.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
                Err(e) if attempt < self.max_attempts => {
                    self.metrics.alert_delivery(&self.sink.name, "retried");
                    tracing::warn!(sink = %self.sink.name, alert = %self.id, attempt, error = %e, "alert delivery failed; will retry");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_BACKOFF);
                }
                Err(e) => {
                    self.metrics.alert_delivery(&self.sink.name, "failed");
                    tracing::error!(sink = %self.sink.name, alert = %self.id, attempts = attempt, error = %e, "alert not delivered");
                }
            }
        }
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::budgets::validate_marks;
    use crate::governance::window::Window;
    use tollgate::Nanos;

    fn budget(thresholds: &[u32], soft: Option<i64>) -> BudgetConfig {
        BudgetConfig {
            id: "alice-daily".into(),
            scope: Scope::Principal,
            matches: None,
            amount: Nanos(1_000_000_000),
            window: Window::Daily,
            thresholds: thresholds.to_vec(),
            soft: soft.map(Nanos),
        }
    }

    #[test]
    fn marks_in_order_and_reached_exactly_at_the_line() {
        let b = budget(&[100, 50, 80], Some(300_000_000));
        assert_eq!(
            marks(&b),
            vec![
                Mark::Soft,
                Mark::Percent(50),
                Mark::Percent(80),
                Mark::Percent(100)
            ]
        );
        assert!(reached(&b, 299_999_999).is_empty());
        assert_eq!(reached(&b, 300_000_000), vec![Mark::Soft]);
        assert_eq!(
            reached(&b, 799_999_999),
            vec![Mark::Soft, Mark::Percent(50)]
        );
        assert_eq!(reached(&b, 2_000_000_000).len(), 4);
        // A percentage of an amount that does not divide evenly rounds up.
        let mut odd = budget(&[33], None);
        odd.amount = Nanos(10);
        assert_eq!(Mark::Percent(33).at(&odd), 4);
        assert!(validate_marks(&[0], None, Nanos(1)).is_err());
        assert!(validate_marks(&[50, 50], None, Nanos(1)).is_err());
        assert!(validate_marks(&[101], None, Nanos(1)).is_err());
        assert!(validate_marks(&[], Some(Nanos(2)), Nanos(1)).is_err());
        assert!(validate_marks(&[50, 80, 100], Some(Nanos(1)), Nanos(1)).is_ok());
    }

    #[test]
    fn events_are_stable_and_readable() {
        let b = budget(&[80], None);
        let day = 1_795_564_800; // 2026-11-25
        let e = AlertEvent::new(&b, "alice", day, Mark::Percent(80), 812_000_000, day + 60);
        let later = AlertEvent::new(&b, "alice", day, Mark::Percent(80), 900_000_000, day + 99);
        assert_eq!(e.id, later.id, "the id names the mark, not the moment");
        assert_ne!(
            e.id,
            AlertEvent::new(&b, "bob", day, Mark::Percent(80), 1, day).id
        );
        assert_eq!(e.kind, "budget.threshold");
        assert_eq!(e.resets_at.as_deref(), Some("2026-11-26T00:00:00Z"));
        assert_eq!(
            e.text(),
            "Tollgate: daily budget 'alice-daily' for principal alice reached 80% ($0.80): $0.812 spent of $1.00. It resets at 2026-11-26T00:00:00Z."
        );
        let v = serde_json::to_value(&e).expect("json");
        assert_eq!(v["type"], "budget.threshold");
        assert_eq!(v["threshold"], "80%");
        assert_eq!(v["spent_nanos"], 812_000_000);
    }

    #[test]
    fn signatures_verify_and_bind_time_and_body() {
        let s = sign(b"0123456789abcdef", 1_700_000_000, b"{\"a\":1}");
        assert!(s.starts_with("v1=") && s.len() == 3 + 64);
        assert!(verify(b"0123456789abcdef", "1700000000", &s, b"{\"a\":1}"));
        assert!(!verify(b"0123456789abcdeF", "1700000000", &s, b"{\"a\":1}"));
        assert!(!verify(b"0123456789abcdef", "1700000001", &s, b"{\"a\":1}"));
        assert!(!verify(b"0123456789abcdef", "1700000000", &s, b"{\"a\":2}"));
        // RFC 4231 test case 2 (HMAC-SHA256, key "Jefe"), as a check of the primitive.
        use aws_lc_rs::hmac;
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, b"Jefe"),
            b"what do ya want for nothing?",
        );
        assert_eq!(
            hex::encode(tag.as_ref()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
