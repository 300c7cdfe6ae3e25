//! Model → ordered chain of upstream targets.

use crate::config::{Config, Route};
use crate::proxy::upstream::{Provider, http_client};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// One hop of a chain, resolved.
#[derive(Clone)]
pub struct ResolvedTarget {
    pub provider: Arc<Provider>,
    /// Upstream model id when it differs from the requested one.
    pub model: Option<String>,
    pub timeout_ms: u64,
}

pub struct Router {
    routes: Vec<Route>,
    providers: BTreeMap<String, (Arc<Provider>, u64)>,
}

impl Router {
    pub fn new(config: &Config) -> Self {
        let mut providers = BTreeMap::new();
        for (name, p) in &config.providers {
            let client = http_client(Duration::from_millis(p.connect_timeout_ms));
            providers.insert(
                name.clone(),
                (Arc::new(Provider::new(p, client)), p.timeout_ms),
            );
        }
        Router {
            routes: config.routes.clone(),
            providers,
        }
    }

    /// The chain for a model: the first route whose pattern matches, its enabled targets in order. Standby
    /// targets are used only when no regular target is enabled. `None` when nothing can serve the model.
    pub fn chain(&self, model: &str) -> Option<Vec<ResolvedTarget>> {
        let route = self.routes.iter().find(|r| r.pattern.matches(model))?;
        let resolve = |standby: bool| -> Vec<ResolvedTarget> {
            route
                .targets
                .iter()
                .filter(|t| t.standby == standby)
                .filter_map(|t| {
                    let (p, timeout_ms) = self.providers.get(&t.provider)?;
                    p.enabled.then(|| ResolvedTarget {
                        provider: p.clone(),
                        model: t.model.clone(),
                        timeout_ms: *timeout_ms,
                    })
                })
                .collect()
        };
        let regular = resolve(false);
        let chain = if regular.is_empty() {
            resolve(true)
        } else {
            regular
        };
        (!chain.is_empty()).then_some(chain)
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
        self.providers.values().map(|(p, _)| p)
    }
}
