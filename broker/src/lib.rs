//! `tollgate-broker`: verifies workload identities, mints short-lived scoped tokens, and governs an
//! OpenAI-compatible proxy in front of the providers.

pub mod accounting;
pub mod admin;
pub mod app;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod governance;
pub mod identity;
pub mod keys;
pub mod log_fields;

pub mod metrics;
pub mod oauth;
pub mod observe;
pub mod opscli;
pub mod policy;
pub mod proxy;
pub mod request_id;
pub mod router;
pub mod routes;
pub mod server;
pub mod session;
pub mod sqlbatch;
pub mod sse;
pub mod telemetry;
pub mod tls;
pub mod token;
pub mod translate;
pub mod usage;
pub mod vault;
