//! Accounting hooks on the request path: admit (before forwarding), release (failed before the first byte),
//! finish (settle real usage), and the revocation check.
//!
//! This first version keeps per-principal totals in memory; the governance store replaces the internals
//! behind the same calls.

use crate::error::ApiError;
use crate::proxy::upstream::Endpoint;
use crate::usage::{StreamEnd, Usage};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tollgate::Claims;

/// A request admitted by governance (later: its budget reservations).
#[derive(Debug)]
pub struct Admission {
    pub id: u64,
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
}

/// Totals for one principal.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    pub incomplete_streams: u64,
}

#[derive(Default)]
pub struct Ledger {
    next_id: std::sync::atomic::AtomicU64,
    totals: Mutex<HashMap<String, Totals>>,
}

impl Ledger {
    pub fn check_revoked(&self, _claims: &Claims) -> Result<(), ApiError> {
        Ok(())
    }

    pub fn admit(
        &self,
        _claims: &Claims,
        _model: &str,
        _body: &[u8],
    ) -> Result<Admission, ApiError> {
        Ok(Admission {
            id: self
                .next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    pub fn release(&self, _admission: Admission, _outcome: Outcome) {}

    pub fn finish(
        &self,
        record: RequestRecord,
        usage: Option<Usage>,
        end: StreamEnd,
        streamed_text_bytes: u64,
    ) {
        let u = usage.unwrap_or_default();
        tracing::info!(
            principal = %record.claims.grant.principal,
            model = %record.model,
            provider = %record.provider,
            input_tokens = u.input_tokens,
            cached_input_tokens = u.cached_input_tokens,
            output_tokens = u.output_tokens,
            end = ?end,
            streamed_text_bytes,
            latency_ms = record.started.elapsed().as_millis() as u64,
            "request finished"
        );
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

    pub fn totals(&self, principal: &str) -> Totals {
        self.totals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(principal)
            .cloned()
            .unwrap_or_default()
    }
}
