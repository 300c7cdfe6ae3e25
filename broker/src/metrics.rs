//! Prometheus metrics, one recorder per [`crate::app::AppState`] (no process-global recorder, so tests that
//! build several states in one process stay isolated), rendered by our own `/metrics` route.
//!
//! Label cardinality is bounded by construction: `model` is a configured route model (or the route's glob,
//! or `other`), `provider` is a configured provider name, `route` is the matched route template, `status`
//! an HTTP status code, `reason`/`kind` a fixed vocabulary. Principals appear as a label only when
//! `[metrics] per_principal = true`. Secrets never reach a label.

use crate::config::routes::Route;
use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use serde::Deserialize;
use std::collections::BTreeSet;
use tollgate::ModelPattern;

/// `[metrics]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetricsConfig {
    /// Serve `/metrics` at all. Default true.
    pub enabled: Option<bool>,
    /// Serve `/metrics` without credentials. Default false: scrapes need the admin key as a bearer token.
    pub public: Option<bool>,
    /// Add a `principal` label to spend and token counters. Default false (unbounded cardinality).
    pub per_principal: Option<bool>,
}

/// `[metrics]`, validated.
#[derive(Clone, Debug)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub public: bool,
    pub per_principal: bool,
}

impl From<&RawMetricsConfig> for MetricsConfig {
    fn from(r: &RawMetricsConfig) -> Self {
        MetricsConfig {
            enabled: r.enabled.unwrap_or(true),
            public: r.public.unwrap_or(false),
            per_principal: r.per_principal.unwrap_or(false),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        (&RawMetricsConfig::default()).into()
    }
}

/// Latency buckets in seconds: 5 ms … 10 min (LLM streams are long).
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// Tollgate's own added time is small; finer buckets: 0.1 ms … 1 s.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

static META: Metadata<'static> = Metadata::new(
    "tollgate_broker::metrics",
    metrics::Level::INFO,
    Some(module_path!()),
);

/// Why a request was refused, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalReason {
    BadToken,
    Revoked,
    Model,
    Budget,
    Rate,
}

impl RefusalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::BadToken => "bad_token",
            RefusalReason::Revoked => "revoked",
            RefusalReason::Model => "model",
            RefusalReason::Budget => "budget",
            RefusalReason::Rate => "rate",
        }
    }
}

/// Set by the proxy on its response so the HTTP middleware can label the request with what was served.
#[derive(Clone, Debug)]
pub struct ProxyTags {
    pub model: String,
    pub provider: String,
}

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    pub config: MetricsConfig,
    literal_models: BTreeSet<String>,
    route_patterns: Vec<ModelPattern>,
    counters: Handles<Counter>,
    gauges: Handles<Gauge>,
    histograms: Handles<Histogram>,
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect();
    Key::from_parts(name, labels)
}

type Labels = Vec<(&'static str, String)>;
/// A registered series: its name, its labels and its handle.
type Series<H> = (&'static str, Labels, H);

/// Registered handles by name and labels. Registering a series allocates its labels and looks it up in
/// the recorder's registry; the request path asks for the same few series on every request, so the
/// handles are kept here and found by a hash of the borrowed name and labels, without allocating. As
/// bounded as the series themselves (see the module docs).
///
/// Hashed with foldhash (seeded per process) rather than SipHash: the key is hashed once per lookup and
/// the map keyed by that hash hashes it again, ~2 % of a request's CPU with SipHash (issue #19).
struct Handles<H> {
    map: std::sync::RwLock<
        std::collections::HashMap<u64, Vec<Series<H>>, foldhash::fast::RandomState>,
    >,
    seed: foldhash::quality::RandomState,
}

impl<H: Clone> Handles<H> {
    fn new() -> Self {
        Handles {
            map: std::sync::RwLock::new(std::collections::HashMap::default()),
            seed: foldhash::quality::RandomState::default(),
        }
    }

    fn get(
        &self,
        name: &'static str,
        labels: &[(&'static str, &str)],
        register: impl FnOnce() -> H,
    ) -> H {
        use std::hash::BuildHasher;
        let same = |n: &str, l: &Labels| {
            n == name
                && l.len() == labels.len()
                && l.iter()
                    .zip(labels)
                    .all(|((k1, v1), (k2, v2))| k1 == k2 && v1 == v2)
        };
        let h = self.seed.hash_one((name, labels));
        if let Some(found) = self
            .map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&h)
            .and_then(|b| b.iter().find(|(n, l, _)| same(n, l)))
        {
            return found.2.clone();
        }
        let handle = register();
        let mut map = self
            .map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bucket = map.entry(h).or_default();
        if !bucket.iter().any(|(n, l, _)| same(n, l)) {
            let owned = labels.iter().map(|(k, v)| (*k, (*v).to_string())).collect();
            bucket.push((name, owned, handle.clone()));
        }
        handle
    }
}

impl Metrics {
    pub fn new(config: MetricsConfig, routes: &[Route]) -> Self {
        let builder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(
                        "tollgate_added_latency_seconds".into(),
                    ),
                    OVERHEAD_BUCKETS,
                )
            });
        // Both calls only fail on an empty bucket list, which ours are not.
        let recorder = match builder {
            Ok(b) => b.build_recorder(),
            Err(_) => PrometheusBuilder::new().build_recorder(),
        };
        let handle = recorder.handle();
        let literal_models = routes
            .iter()
            .filter(|r| r.pattern.is_literal())
            .map(|r| r.pattern.as_str().to_string())
            .collect();
        let route_patterns = routes
            .iter()
            .filter(|r| !r.pattern.is_literal())
            .map(|r| r.pattern.clone())
            .collect();
        let m = Metrics {
            recorder,
            handle,
            config,
            literal_models,
            route_patterns,
            counters: Handles::new(),
            gauges: Handles::new(),
            histograms: Handles::new(),
        };
        m.describe();
        m
    }

    fn describe(&self) {
        use metrics::Unit;
        let d = |name: &'static str, unit: Option<Unit>, help: &'static str| {
            self.recorder
                .describe_counter(name.into(), unit, help.into());
        };
        d(
            "tollgate_requests_total",
            None,
            "Proxy requests by route, model, provider and HTTP status.",
        );
        d(
            "tollgate_http_requests_total",
            None,
            "All HTTP requests by matched route and status.",
        );
        d(
            "tollgate_input_tokens_total",
            None,
            "Input tokens reported by upstreams (cached included).",
        );
        d(
            "tollgate_affinity_total",
            None,
            "Session-keyed requests by outcome: kept on the session's target, moved, or new.",
        );
        d(
            "tollgate_reasoning_stripped_items_total",
            None,
            "Input items with encrypted content stripped because the session moved to another reasoning domain.",
        );
        d(
            "tollgate_cached_input_tokens_total",
            None,
            "Input tokens served from the provider's prompt cache.",
        );
        d(
            "tollgate_output_tokens_total",
            None,
            "Output tokens reported by upstreams.",
        );
        d(
            "tollgate_cost_nanodollars_total",
            None,
            "Settled cost in nano-USD (1e-9 USD).",
        );
        d(
            "tollgate_failovers_total",
            None,
            "Upstream attempts that failed before the first byte and moved to the next target.",
        );
        d(
            "tollgate_mints_total",
            None,
            "Token-exchange outcomes by identity kind.",
        );
        d(
            "tollgate_refusals_total",
            None,
            "Requests refused by governance, by reason.",
        );
        d(
            "tollgate_stream_ends_total",
            None,
            "How proxied responses ended (completed, truncated, client_gone...).",
        );
        d(
            "tollgate_audit_failures_total",
            None,
            "Audit records lost (store failing for good, or the write queue full).",
        );
        d(
            "tollgate_store_errors_total",
            None,
            "Governance store operations that failed, by operation (reserve, settle).",
        );
        d(
            "tollgate_allotment_grows_total",
            None,
            "Budget allotments grown in the store (one store round trip each).",
        );
        d(
            "tollgate_alerts_total",
            None,
            "Budget alerts emitted (once per budget, subject, window and threshold across replicas), by threshold.",
        );
        d(
            "tollgate_alert_deliveries_total",
            None,
            "Alert deliveries by sink and outcome (delivered, retried, failed, dropped).",
        );
        d(
            "tollgate_redis_errors_total",
            None,
            "Redis rate-limit calls that failed (this process's own limiter answered instead).",
        );
        self.recorder.describe_gauge(
            "tollgate_audit_journal_records".into(),
            None,
            "Audit records waiting in the local outage journal for the store.".into(),
        );
        self.recorder.describe_gauge(
            "tollgate_audit_journal_bytes".into(),
            None,
            "Bytes of the local audit outage journal.".into(),
        );
        self.recorder.describe_gauge(
            "tollgate_settlement_queue".into(),
            None,
            "Finished requests waiting to be settled (bounded; admission refuses while it is full).".into(),
        );
        self.recorder.describe_gauge(
            "tollgate_breaker_open".into(),
            None,
            "1 while a target's circuit breaker is open.".into(),
        );
        for (name, help) in [
            (
                "tollgate_upstream_latency_seconds",
                "Upstream time from dispatch to the end of the response body.",
            ),
            (
                "tollgate_ttfb_seconds",
                "Time from request arrival to the first response byte relayed to the client.",
            ),
            (
                "tollgate_added_latency_seconds",
                "Tollgate's own added time: request arrival to upstream dispatch (auth, policy, budget, routing).",
            ),
            (
                "tollgate_http_request_duration_seconds",
                "Time to response headers, by matched route.",
            ),
        ] {
            self.recorder
                .describe_histogram(name.into(), Some(Unit::Seconds), help.into());
        }
    }

    fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.counters.get(name, labels, || {
            self.recorder.register_counter(&key(name, labels), &META)
        })
    }

    fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.gauges.get(name, labels, || {
            self.recorder.register_gauge(&key(name, labels), &META)
        })
    }

    fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        self.histograms.get(name, labels, || {
            self.recorder.register_histogram(&key(name, labels), &META)
        })
    }

    /// The `model` label for a requested model: a configured literal route model as is, otherwise the glob
    /// of the route that serves it, otherwise `other`. Clients choose model names; labels must not let them
    /// grow the series count.
    pub fn model_label<'a>(&'a self, model: &'a str) -> &'a str {
        if self.literal_models.contains(model) {
            return model;
        }
        self.route_patterns
            .iter()
            .find(|p| p.matches(model))
            .map_or("other", |p| p.as_str())
    }

    /// Every HTTP response (middleware).
    pub fn http(&self, route: &str, status: http::StatusCode, secs: f64) {
        // The code's standard digits, not formatted per request.
        let status = status.as_str();
        self.counter(
            "tollgate_http_requests_total",
            &[("route", route), ("status", status)],
        )
        .increment(1);
        self.histogram(
            "tollgate_http_request_duration_seconds",
            &[("route", route)],
        )
        .record(secs);
    }

    /// A proxy-route response; `model`/`provider` are `none` when the request was refused before routing.
    pub fn request(&self, route: &str, model: &str, provider: &str, status: http::StatusCode) {
        let status = status.as_str();
        self.counter(
            "tollgate_requests_total",
            &[
                ("route", route),
                ("model", model),
                ("provider", provider),
                ("status", status),
            ],
        )
        .increment(1);
    }

    pub fn refusal(&self, reason: RefusalReason) {
        self.counter("tollgate_refusals_total", &[("reason", reason.as_str())])
            .increment(1);
    }

    /// `outcome`: `minted`, `denied`, `rejected` (identity proof refused), `error`.
    pub fn mint(&self, identity_kind: &str, outcome: &str) {
        self.counter(
            "tollgate_mints_total",
            &[("identity_kind", identity_kind), ("outcome", outcome)],
        )
        .increment(1);
    }

    /// A session-keyed request was served: on its remembered target (`kept`), on another (`moved`), or
    /// with none remembered (`new`).
    pub fn affinity(&self, outcome: &'static str) {
        self.counter("tollgate_affinity_total", &[("outcome", outcome)])
            .increment(1);
    }

    /// Input items carrying encrypted content were stripped before `provider` (the session moved there).
    pub fn reasoning_stripped(&self, provider: &str, items: u64) {
        self.counter(
            "tollgate_reasoning_stripped_items_total",
            &[("provider", provider)],
        )
        .increment(items);
    }

    pub fn failover(&self, provider: &str, reason: &str) {
        self.counter(
            "tollgate_failovers_total",
            &[("provider", provider), ("reason", reason)],
        )
        .increment(1);
    }

    /// The circuit-breaker gauge of one target (1 = open); the router sets it on every transition.
    pub fn breaker_gauge(&self, provider: &str, target: &str) -> Gauge {
        self.gauge(
            "tollgate_breaker_open",
            &[("provider", provider), ("target", target)],
        )
    }

    pub fn added_latency(&self, route: &str, secs: f64) {
        self.histogram("tollgate_added_latency_seconds", &[("route", route)])
            .record(secs);
    }

    /// Accounting for a finished proxied request.
    pub fn settled(&self, s: &Settled<'_>) {
        let model = self.model_label(s.model);
        let base: [(&'static str, &str); 2] = [("model", model), ("provider", s.provider)];
        let with_principal: [(&'static str, &str); 3] =
            [base[0], base[1], ("principal", s.principal)];
        let tokens: &[(&'static str, &str)] = if self.config.per_principal {
            &with_principal
        } else {
            &base
        };
        self.counter("tollgate_input_tokens_total", tokens)
            .increment(s.input_tokens);
        self.counter("tollgate_cached_input_tokens_total", tokens)
            .increment(s.cached_input_tokens);
        self.counter("tollgate_output_tokens_total", tokens)
            .increment(s.output_tokens);
        self.counter("tollgate_cost_nanodollars_total", tokens)
            .increment(s.cost_nanos);
        self.counter("tollgate_stream_ends_total", &[("end", s.end)])
            .increment(1);
        self.histogram("tollgate_upstream_latency_seconds", &base)
            .record(s.upstream_secs);
        if let Some(t) = s.ttfb_secs {
            self.histogram("tollgate_ttfb_seconds", &base).record(t);
        }
    }

    /// A governance store operation failed (`op`: `reserve`, `settle`).
    pub fn store_error(&self, op: &'static str) {
        self.counter("tollgate_store_errors_total", &[("op", op)])
            .increment(1);
    }

    pub fn allotment_grow(&self) {
        self.counter("tollgate_allotment_grows_total", &[])
            .increment(1);
    }

    /// A budget alert was emitted by this replica (`threshold`: `80%`, `soft`: bounded by the config).
    pub fn alert(&self, threshold: &str) {
        self.counter("tollgate_alerts_total", &[("threshold", threshold)])
            .increment(1);
    }

    /// An alert delivery attempt's outcome (`sink`: a configured name; `outcome`: delivered, retried,
    /// failed, dropped).
    pub fn alert_delivery(&self, sink: &str, outcome: &'static str) {
        self.counter(
            "tollgate_alert_deliveries_total",
            &[("sink", sink), ("outcome", outcome)],
        )
        .increment(1);
    }

    pub fn redis_error(&self) {
        self.counter("tollgate_redis_errors_total", &[])
            .increment(1);
    }

    /// Finished requests waiting in the settlement queue.
    pub fn settlement_queue(&self, depth: usize) {
        self.gauge("tollgate_settlement_queue", &[])
            .set(depth as f64);
    }

    /// Audit records lost so far (set at scrape time).
    /// Audit records (and their bytes) waiting in the outage journal (set at scrape time).
    pub fn audit_journal(&self, records: u64, bytes: u64) {
        self.gauge("tollgate_audit_journal_records", &[])
            .set(records as f64);
        self.gauge("tollgate_audit_journal_bytes", &[])
            .set(bytes as f64);
    }

    pub fn audit_failures(&self, n: u64) {
        self.counter("tollgate_audit_failures_total", &[])
            .absolute(n);
    }

    /// Fold recorded histogram samples into their buckets. The exporter keeps every sample until this
    /// runs (at each scrape, and from the background loop), so without it an unscraped broker's memory
    /// grows with every request.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// What [`Metrics::settled`] needs about one finished proxied request.
pub struct Settled<'a> {
    pub model: &'a str,
    pub provider: &'a str,
    pub principal: &'a str,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub cost_nanos: u64,
    pub end: &'a str,
    pub upstream_secs: f64,
    pub ttfb_secs: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Vec<Route> {
        ["gpt-5.5", "claude-*"]
            .iter()
            .map(|m| Route {
                pattern: ModelPattern::new(*m).expect("pattern"),
                targets: vec![],
            })
            .collect()
    }

    #[test]
    fn model_label_is_bounded() {
        let m = Metrics::new(MetricsConfig::default(), &routes());
        assert_eq!(m.model_label("gpt-5.5"), "gpt-5.5");
        assert_eq!(m.model_label("claude-opus-9"), "claude-*");
        assert_eq!(m.model_label("anything-a-client-sends"), "other");
    }

    #[test]
    fn cached_handles_keep_series_apart_and_count_into_the_same_one() {
        let m = Metrics::new(MetricsConfig::default(), &routes());
        use http::StatusCode as S;
        for (route, provider, status, times) in [
            ("/v1/responses", "openai", S::OK, 3),
            ("/v1/responses", "openai", S::TOO_MANY_REQUESTS, 1),
            ("/v1/responses", "azure", S::OK, 1),
            ("/v1/chat/completions", "openai", S::OK, 1),
        ] {
            for _ in 0..times {
                m.request(route, "gpt-5.5", provider, status);
            }
        }
        let out = m.render();
        for line in [
            "tollgate_requests_total{route=\"/v1/responses\",model=\"gpt-5.5\",provider=\"openai\",status=\"200\"} 3",
            "tollgate_requests_total{route=\"/v1/responses\",model=\"gpt-5.5\",provider=\"openai\",status=\"429\"} 1",
            "tollgate_requests_total{route=\"/v1/responses\",model=\"gpt-5.5\",provider=\"azure\",status=\"200\"} 1",
            "tollgate_requests_total{route=\"/v1/chat/completions\",model=\"gpt-5.5\",provider=\"openai\",status=\"200\"} 1",
        ] {
            assert!(out.contains(line), "missing {line} in\n{out}");
        }
        // One cached handle per series.
        let cached: usize = m
            .counters
            .map
            .read()
            .expect("lock")
            .values()
            .map(Vec::len)
            .sum();
        assert_eq!(cached, 4);
    }

    #[test]
    fn recorders_are_isolated() {
        let a = Metrics::new(MetricsConfig::default(), &routes());
        let b = Metrics::new(MetricsConfig::default(), &routes());
        a.refusal(RefusalReason::Budget);
        assert!(
            a.render()
                .contains("tollgate_refusals_total{reason=\"budget\"} 1")
        );
        assert!(!b.render().contains("tollgate_refusals_total{"));
    }
}
