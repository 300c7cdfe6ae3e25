//! The shared vocabulary of Tollgate.
//!
//! Both `tollgate-token` (the helper Codex runs) and `tollgate-broker` (the service) depend on this crate.
//! It holds wire types and pure logic only: no I/O, no HTTP server, no async runtime.

pub mod aws;
pub mod exchange;
pub mod grant;
pub mod money;
pub mod openai;
pub mod pattern;

pub use exchange::{OAuthError, OAuthErrorCode, TokenExchangeRequest, TokenExchangeResponse};
pub use grant::{Claims, Grant, IdentityKind, Provenance, RateLimits};
pub use money::{Nanos, ParseMoneyError, Price};
pub use openai::{OpenAiError, OpenAiErrorBody};
pub use pattern::ModelPattern;
