//! Model → ordered chain of upstream targets, with per-target health.
//!
//! A route's targets are grouped by priority (lower first); within a group the order is a weighted random
//! permutation, so traffic spreads by weight while every healthy target stays available for failover.
//! Each target (provider + upstream model) has a circuit breaker: `breaker_failures` consecutive failures
//! open it for `breaker_cooldown_secs`, then one probe is let through (half-open); the probe's success
//! closes it, its failure re-opens it. A `Retry-After` from the upstream parks the target until then.
//! Time comes from the injected [`Clock`](crate::clock::Clock), so tests move it instead of sleeping.

use crate::clock::SharedClock;
use crate::config::{Config, Route, RoutingConfig};
use crate::proxy::client::UpstreamClient;
use crate::proxy::upstream::{Attempt, KeyCell, Provider};
use rand::Rng;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One hop of a chain, resolved.
#[derive(Clone)]
pub struct ResolvedTarget {
    pub provider: Arc<Provider>,
    /// Upstream model id when it differs from the requested one.
    pub model: Option<String>,
    /// `provider/model` (or just `provider`), for headers and logs.
    pub label: String,
    pub client: UpstreamClient,
    pub first_byte_timeout: Duration,
    pub total_timeout: Duration,
    pub health: Arc<TargetHealth>,
    weight: u32,
    priority: u32,
}

impl ResolvedTarget {
    /// What one attempt on this target may use.
    pub fn attempt(&self) -> Attempt<'_> {
        Attempt {
            client: &self.client,
            first_byte_timeout: self.first_byte_timeout,
            total_timeout: self.total_timeout,
        }
    }
}

/// Why no chain can be planned.
#[derive(Debug, PartialEq, Eq)]
pub enum PlanError {
    /// No route matches, or no target of the matching route is configured.
    NoRoute,
    /// Every target is parked or its breaker is open; the earliest comes back in this many seconds.
    AllUnavailable { retry_after_secs: u64 },
}

#[derive(Debug, Default)]
struct HealthState {
    consecutive_failures: u32,
    /// Breaker open until (clock seconds).
    open_until: Option<u64>,
    /// A half-open probe started at (clock seconds).
    probe_started: Option<u64>,
    /// Parked by `Retry-After` until (clock seconds).
    parked_until: u64,
}

/// Health of one target: circuit breaker and `Retry-After` parking.
pub struct TargetHealth {
    label: String,
    clock: SharedClock,
    failures_to_open: u32,
    cooldown_secs: u64,
    state: Mutex<HealthState>,
    /// `tollgate_breaker_open{provider,target}`, attached once metrics exist (see `Router::attach_metrics`).
    gauge: std::sync::OnceLock<metrics::Gauge>,
}

/// Longest a `Retry-After` parks a target: an upstream asking for a day is not taken at its word.
pub const MAX_PARK_SECS: u64 = 3600;

/// Whether a target may be tried now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Availability {
    Closed,
    /// The breaker's cooldown is over: one probe may go.
    HalfOpen,
    /// Not before this clock second.
    Unavailable(u64),
}

impl TargetHealth {
    fn new(label: String, clock: SharedClock, cfg: &RoutingConfig) -> Self {
        TargetHealth {
            label,
            clock,
            failures_to_open: cfg.breaker_failures.max(1),
            cooldown_secs: cfg.breaker_cooldown_secs,
            state: Mutex::new(HealthState::default()),
            gauge: std::sync::OnceLock::new(),
        }
    }

    fn publish(&self, open: bool) {
        if let Some(g) = self.gauge.get() {
            g.set(if open { 1.0 } else { 0.0 });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn availability(&self) -> Availability {
        let now = self.clock.now_secs();
        let s = self.lock();
        Self::avail(&s, now, self.cooldown_secs)
    }

    fn avail(s: &HealthState, now: u64, cooldown: u64) -> Availability {
        if s.parked_until > now {
            return Availability::Unavailable(s.parked_until);
        }
        match s.open_until {
            Some(t) if now < t => Availability::Unavailable(t),
            Some(_) => match s.probe_started {
                // A probe is in flight; a lost probe (request cancelled) expires after a cooldown.
                Some(p) if now < p + cooldown.max(1) => {
                    Availability::Unavailable(p + cooldown.max(1))
                }
                _ => Availability::HalfOpen,
            },
            None => Availability::Closed,
        }
    }

    /// Claim the right to send one attempt now (the probe slot when half-open).
    pub fn begin_attempt(&self) -> bool {
        let now = self.clock.now_secs();
        let mut s = self.lock();
        match Self::avail(&s, now, self.cooldown_secs) {
            Availability::Closed => true,
            Availability::HalfOpen => {
                s.probe_started = Some(now);
                tracing::info!(target_label = %self.label, "circuit half-open: probing");
                true
            }
            Availability::Unavailable(_) => false,
        }
    }

    pub fn on_success(&self) {
        let mut s = self.lock();
        if s.open_until.is_some() {
            tracing::info!(target_label = %self.label, "circuit closed: probe succeeded");
        }
        *s = HealthState {
            parked_until: s.parked_until,
            ..HealthState::default()
        };
        drop(s);
        self.publish(false);
    }

    pub fn on_failure(&self) {
        let now = self.clock.now_secs();
        let mut s = self.lock();
        s.consecutive_failures = s.consecutive_failures.saturating_add(1);
        let half_open_probe = s.open_until.is_some();
        if half_open_probe || s.consecutive_failures >= self.failures_to_open {
            s.open_until = Some(now + self.cooldown_secs);
            s.probe_started = None;
            tracing::warn!(target_label = %self.label, failures = s.consecutive_failures,
                cooldown_secs = self.cooldown_secs, "circuit open: target parked");
            drop(s);
            self.publish(true);
        }
    }

    /// The upstream asked us to come back after `secs` (`Retry-After`), capped at [`MAX_PARK_SECS`].
    pub fn park(&self, secs: u64) {
        let secs = secs.min(MAX_PARK_SECS);
        let now = self.clock.now_secs();
        let mut s = self.lock();
        s.parked_until = s.parked_until.max(now + secs);
        // A rate limit is not a fault of the target, but a half-open probe that got one is over.
        s.probe_started = None;
    }
}

pub struct Router {
    routes: Vec<Route>,
    providers: BTreeMap<String, Arc<Provider>>,
    /// Resolved targets per route, in config order (shared: a plan clones pointers, not targets).
    resolved: Vec<Vec<(Arc<ResolvedTarget>, bool)>>,
    clock: SharedClock,
}

impl Router {
    /// Give every target's breaker its gauge in `metrics` (starting closed). Labels are configured names only.
    pub fn attach_metrics(&self, metrics: &crate::metrics::Metrics) {
        for (target, _) in self.resolved.iter().flatten() {
            let h = &target.health;
            let provider = h.label.split('/').next().unwrap_or(&h.label);
            if h.gauge
                .set(metrics.breaker_gauge(provider, &h.label))
                .is_ok()
            {
                h.publish(false);
            }
        }
    }

    pub fn new(config: &Config, clock: SharedClock) -> Self {
        // The outbound proxy settings: which providers go through a proxy, and how.
        let proxies = Arc::new(config.upstream_proxy.matcher());
        let mut clients: BTreeMap<u64, UpstreamClient> = BTreeMap::new();
        let mut client_for = |ms: u64| {
            clients
                .entry(ms)
                .or_insert_with(|| UpstreamClient::new(Duration::from_millis(ms), proxies.clone()))
                .clone()
        };
        let mut providers = BTreeMap::new();
        for (name, p) in &config.providers {
            providers.insert(name.clone(), Arc::new(Provider::new(p, &proxies)));
        }
        let mut health: BTreeMap<String, Arc<TargetHealth>> = BTreeMap::new();
        let mut resolved = Vec::new();
        for route in &config.routes {
            let mut targets = Vec::new();
            for t in &route.targets {
                let (Some(p), Some(pc)) = (
                    providers.get(&t.provider),
                    config.providers.get(&t.provider),
                ) else {
                    continue;
                };
                let label = match &t.model {
                    Some(m) => format!("{}/{m}", t.provider),
                    None => t.provider.clone(),
                };
                let h = health
                    .entry(label.clone())
                    .or_insert_with(|| {
                        Arc::new(TargetHealth::new(
                            label.clone(),
                            clock.clone(),
                            &config.routing,
                        ))
                    })
                    .clone();
                let total = t.timeout_ms.unwrap_or(pc.timeout_ms);
                targets.push((
                    Arc::new(ResolvedTarget {
                        provider: p.clone(),
                        model: t.model.clone(),
                        label,
                        client: client_for(t.connect_timeout_ms.unwrap_or(pc.connect_timeout_ms)),
                        first_byte_timeout: Duration::from_millis(
                            t.first_byte_timeout_ms
                                .unwrap_or(pc.first_byte_timeout_ms)
                                .min(total),
                        ),
                        total_timeout: Duration::from_millis(total),
                        health: h,
                        weight: t.weight,
                        priority: t.priority,
                    }),
                    t.standby,
                ));
            }
            resolved.push(targets);
        }
        Router {
            routes: config.routes.clone(),
            providers,
            resolved,
            clock,
        }
    }

    /// The targets of the first route whose pattern matches `model`, with their standby flags.
    fn route_targets(&self, model: &str) -> Option<&[(Arc<ResolvedTarget>, bool)]> {
        let idx = self.routes.iter().position(|r| r.pattern.matches(model))?;
        Some(&self.resolved[idx])
    }

    fn configured(&self, model: &str) -> Option<Vec<Arc<ResolvedTarget>>> {
        let targets = self.route_targets(model)?;
        let pick = |standby: bool| -> Vec<Arc<ResolvedTarget>> {
            targets
                .iter()
                .filter(|(t, s)| *s == standby && t.provider.enabled)
                .map(|(t, _)| t.clone())
                .collect()
        };
        let regular = pick(false);
        let chain = if regular.is_empty() {
            pick(true)
        } else {
            regular
        };
        (!chain.is_empty()).then_some(chain)
    }

    /// Whether anything can serve the model (ignoring health): some enabled target, regular or standby.
    pub fn serves(&self, model: &str) -> bool {
        self.route_targets(model)
            .is_some_and(|targets| targets.iter().any(|(t, _)| t.provider.enabled))
    }

    /// The chain for a model, health and weights applied. Standby targets are used only when no regular
    /// target is enabled.
    pub fn plan(&self, model: &str) -> Result<Vec<Arc<ResolvedTarget>>, PlanError> {
        self.plan_with(model, &mut rand::rng())
    }

    /// [`plan`](Self::plan) with a given random source (tests).
    pub fn plan_with(
        &self,
        model: &str,
        rng: &mut impl Rng,
    ) -> Result<Vec<Arc<ResolvedTarget>>, PlanError> {
        let targets = self.configured(model).ok_or(PlanError::NoRoute)?;
        let now = self.clock.now_secs();
        // One target (the common route): nothing to order.
        if let [only] = targets.as_slice() {
            if let Availability::Unavailable(until) = only.health.availability() {
                return Err(PlanError::AllUnavailable {
                    retry_after_secs: until.saturating_sub(now).max(1),
                });
            }
            return Ok(targets);
        }
        let mut earliest = u64::MAX;
        let mut by_priority: BTreeMap<u32, Vec<Arc<ResolvedTarget>>> = BTreeMap::new();
        for t in targets {
            match t.health.availability() {
                Availability::Unavailable(until) => earliest = earliest.min(until),
                _ => by_priority.entry(t.priority).or_default().push(t),
            }
        }
        if by_priority.is_empty() {
            return Err(PlanError::AllUnavailable {
                retry_after_secs: earliest.saturating_sub(now).max(1),
            });
        }
        let mut out = Vec::new();
        for (_, mut group) in by_priority {
            // Weighted random permutation; weight-0 targets go last, in config order.
            while !group.is_empty() {
                let total: u64 = group.iter().map(|t| u64::from(t.weight)).sum();
                if total == 0 {
                    out.append(&mut group);
                    break;
                }
                let mut r = rng.random_range(0..total);
                let mut idx = 0;
                for (i, t) in group.iter().enumerate() {
                    let w = u64::from(t.weight);
                    if r < w {
                        idx = i;
                        break;
                    }
                    r -= w;
                }
                out.push(group.remove(idx));
            }
        }
        Ok(out)
    }

    /// Route patterns that name exactly one model (listed by `GET /v1/models`).
    pub fn literal_models(&self) -> Vec<String> {
        self.routes
            .iter()
            .filter(|r| r.pattern.is_literal())
            .map(|r| r.pattern.as_str().to_string())
            .collect()
    }

    pub fn providers(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.providers.values()
    }

    /// Providers whose key comes from Vault: their key cells, for the refresher.
    pub fn vault_keys(&self) -> Vec<(String, crate::config::VaultKeyRef, KeyCell)> {
        self.providers
            .values()
            .filter_map(|p| Some((p.name.clone(), p.vault_key.clone()?, p.key.clone())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;
    use crate::config::{Config, Source};
    use rand::SeedableRng;

    fn router(extra: &str) -> (Router, FakeClock) {
        let text = format!(
            "policy_file = \"p.toml\"\n[routing]\nbreaker_failures = 2\nbreaker_cooldown_secs = 30\n\
             [providers.a]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
             [providers.b]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
             [providers.c]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n{extra}"
        );
        let cfg = Config::from_source(
            Source {
                path: "/etc/t/broker.toml".into(),
                text,
            },
            &std::collections::BTreeMap::<String, String>::new(),
        )
        .expect("config");
        let clock = FakeClock::new(1_000);
        (Router::new(&cfg, Arc::new(clock.clone())), clock)
    }

    fn labels(r: &Router, rng: &mut rand::rngs::StdRng) -> Vec<String> {
        r.plan_with("m", rng)
            .expect("plan")
            .into_iter()
            .map(|t| t.label.clone())
            .collect()
    }

    #[test]
    fn default_is_an_ordered_chain() {
        let (r, _) = router(
            "[[routes]]\nmodel = \"m\"\ntargets = [{provider=\"a\"},{provider=\"b\", model=\"x\"},{provider=\"c\"}]\n",
        );
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..20 {
            assert_eq!(labels(&r, &mut rng), ["a", "b/x", "c"]);
        }
    }

    #[test]
    fn equal_priority_shares_by_weight() {
        let (r, _) = router(
            "[[routes]]\nmodel = \"m\"\ntargets = [{provider=\"a\", priority=0, weight=3},{provider=\"b\", priority=0, weight=1},{provider=\"c\", priority=1}]\n",
        );
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut first_a = 0;
        for _ in 0..4000 {
            let l = labels(&r, &mut rng);
            assert_eq!(l.len(), 3);
            assert_eq!(l[2], "c", "lower priority always last");
            if l[0] == "a" {
                first_a += 1;
            }
        }
        // Expect 75 %; allow a generous band.
        assert!((2800..3200).contains(&first_a), "a first {first_a}/4000");
    }

    #[test]
    fn breaker_opens_parks_and_half_opens() {
        let (r, clock) =
            router("[[routes]]\nmodel = \"m\"\ntargets = [{provider=\"a\"},{provider=\"b\"}]\n");
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let a = r.plan_with("m", &mut rng).expect("plan")[0].health.clone();
        a.on_failure();
        assert_eq!(
            labels(&r, &mut rng),
            ["a", "b"],
            "one failure keeps it closed"
        );
        a.on_failure();
        assert_eq!(labels(&r, &mut rng), ["b"], "open after 2");
        clock.advance(29);
        assert_eq!(labels(&r, &mut rng), ["b"]);
        clock.advance(1);
        assert_eq!(a.availability(), Availability::HalfOpen);
        assert!(a.begin_attempt(), "one probe");
        assert!(!a.begin_attempt(), "only one probe at a time");
        a.on_failure();
        assert_eq!(labels(&r, &mut rng), ["b"], "failed probe re-opens");
        clock.advance(30);
        assert!(a.begin_attempt());
        a.on_success();
        assert_eq!(a.availability(), Availability::Closed);
        assert_eq!(labels(&r, &mut rng), ["a", "b"]);
    }

    #[test]
    fn retry_after_parks_and_all_parked_reports_the_wait() {
        let (r, clock) = router("[[routes]]\nmodel = \"m\"\ntargets = [{provider=\"a\"}]\n");
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let a = r.plan_with("m", &mut rng).expect("plan")[0].health.clone();
        a.park(7);
        assert_eq!(
            r.plan_with("m", &mut rng).err(),
            Some(PlanError::AllUnavailable {
                retry_after_secs: 7
            })
        );
        clock.advance(7);
        assert_eq!(labels(&r, &mut rng), ["a"]);
        assert_eq!(
            r.plan_with("nope", &mut rng).err(),
            Some(PlanError::NoRoute)
        );
    }

    #[test]
    fn serves_exactly_when_a_plan_has_a_target() {
        // A provider whose key is not set is disabled.
        let disabled = "[providers.d]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
                        api_key_env = \"TOLLGATE_TEST_UNSET_KEY\"\n";
        // (targets, the plan's labels; empty: nothing serves the model)
        let cases: [(&str, &[&str]); 5] = [
            ("{provider=\"d\"}", &[]),
            ("{provider=\"d\", standby=true}", &[]),
            ("{provider=\"d\"},{provider=\"a\", standby=true}", &["a"]),
            ("{provider=\"b\"},{provider=\"a\", standby=true}", &["b"]),
            ("{provider=\"d\"},{provider=\"c\"}", &["c"]),
        ];
        for (targets, want) in cases {
            let (r, _) = router(&format!(
                "{disabled}[[routes]]\nmodel = \"m\"\ntargets = [{targets}]\n"
            ));
            let mut rng = rand::rngs::StdRng::seed_from_u64(1);
            assert_eq!(r.serves("m"), !want.is_empty(), "{targets}");
            if want.is_empty() {
                assert_eq!(
                    r.plan_with("m", &mut rng).err(),
                    Some(PlanError::NoRoute),
                    "{targets}"
                );
            } else {
                assert_eq!(labels(&r, &mut rng), want, "{targets}");
            }
            assert!(!r.serves("other"), "no route for another model");
        }
    }
}
