//! Test peers for Tollgate.
//!
//! - [`mock`]: a faithful mock LLM upstream (OpenAI Responses, Chat Completions, Anthropic Messages,
//!   model list) with scripted, deterministic answers, fault injection and request recording. It runs
//!   in-process via [`mock::spawn`] or as the `tollgate-mock-upstream` binary, scriptable over
//!   `/_mock/*` HTTP routes.
//! - [`sse`]: a small Server-Sent Events parser for asserting on streams.
//! - [`people`]: the peers of the people sign-in tests: the company IdP (npm `oidc-provider`) and a
//!   person at headless Chromium going through the real sign-in pages.
//! - [`sso_portal`]: a fake AWS IAM Identity Center portal (`GetRoleCredentials`), which moto lacks.
//! - [`procs`]: helpers to run the workspace's real binaries from end-to-end tests without leaking
//!   processes.
//!
//! Everything binds to `127.0.0.1:0`: tests never use fixed ports or leave loopback.

pub mod idp;
pub mod mock;
pub mod people;
pub mod procs;
pub mod sse;
pub mod sso_portal;

pub use mock::{
    CallKind, Fault, MockConfig, MockHandle, RecordedRequest, ReportedUsage, ScriptStep, Scripted,
    SessionScript, spawn,
};
