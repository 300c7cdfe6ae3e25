//! The default command: print a token, from the cache if it is fresh, else minted.
//!
//! Hot path (cache hit): resolve settings, load the identity (read a file), hash the cache key,
//! read one small JSON file, compare a timestamp, print. No runtime, no HTTP client, no TLS.

use crate::Reporter;
use crate::cache::{Cache, CacheError, CacheKey, CachedToken, Lookup};
use crate::config::Settings;
use crate::error::{ExchangeError, HelperError};
use crate::exchange::{self, MintRequest};
use crate::identity::{self, Identity};
use crate::sys::Clock;
use secrecy::{ExposeSecret, SecretString};
use std::io::{self, Write};
use std::time::{Duration, Instant};

/// THE function that writes to stdout on the token path: the token and one newline, nothing else.
pub fn emit_token(out: &mut dyn Write, token: &SecretString) -> io::Result<()> {
    let mut line = Vec::with_capacity(token.expose_secret().len() + 1);
    line.extend_from_slice(token.expose_secret().as_bytes());
    line.push(b'\n');
    out.write_all(&line)?;
    out.flush()
}

/// What the token path decided to print.
#[derive(Debug)]
pub struct Outcome {
    pub token: SecretString,
}

/// Find or mint a token. Warnings go to `report`; the caller prints the token with [`emit_token`].
pub fn get_token(
    settings: &Settings,
    clock: &dyn Clock,
    report: &mut Reporter<'_>,
    started: Instant,
) -> Result<Outcome, HelperError> {
    let deadline = started + Duration::from_millis(settings.timeout_ms);
    let identity = identity::load(&settings.identity)?;
    report.add_secrets(identity.secrets());
    let fingerprint = identity.fingerprint();
    let key = CacheKey {
        broker: &settings.broker,
        audience: &settings.audience,
        identity: identity.name(),
        fingerprint: &fingerprint,
        profile: &settings.profile,
    };
    let margin = settings.refresh_margin_secs;
    let cache = settings
        .cache_dir
        .as_deref()
        .map(|dir| Cache::new(dir, &key));

    // A still-valid token we may fall back to if the broker is unreachable.
    let mut fallback: Option<CachedToken> = None;
    let mut lock = None;
    if let Some(cache) = &cache {
        let mut warned_corrupt = false;
        match cache.read() {
            Lookup::Hit(t) if t.is_fresh(clock.now_unix(), margin) => {
                return Ok(Outcome {
                    token: t.access_token,
                });
            }
            Lookup::Hit(t) => fallback = Some(t),
            Lookup::Miss => {}
            Lookup::Corrupt(why) => {
                report.warn(&format!(
                    "ignoring token cache: {why}; it will be overwritten"
                ));
                warned_corrupt = true;
            }
        }
        match cache.lock(deadline) {
            Ok(l) => {
                lock = Some(l);
                // Another process may have minted while we waited for the lock.
                match cache.read() {
                    Lookup::Hit(t) if t.is_fresh(clock.now_unix(), margin) => {
                        return Ok(Outcome {
                            token: t.access_token,
                        });
                    }
                    Lookup::Hit(t) => fallback = Some(t),
                    Lookup::Miss => {}
                    Lookup::Corrupt(why) if !warned_corrupt => {
                        report.warn(&format!(
                            "ignoring token cache: {why}; it will be overwritten"
                        ));
                    }
                    Lookup::Corrupt(_) => {}
                }
            }
            Err(e @ CacheError::LockTimeout { .. }) => {
                return serve_fallback(
                    fallback,
                    clock,
                    report,
                    ExchangeError::Unavailable {
                        url: settings.broker.clone(),
                        reason: e.to_string(),
                    },
                );
            }
            Err(e) => report.warn(&format!("token cache unusable ({e}); minting without it")),
        }
    }

    match mint(settings, identity.as_ref(), clock, deadline) {
        Ok(minted) => {
            report.add_secrets([minted.access_token.clone()]);
            let now = clock.now_unix();
            if minted.expires_at <= now.saturating_add(margin) {
                report.warn(&format!(
                    "the broker issued a token with {}s left, not more than the refresh margin of {margin}s: \
                     every run will mint (lower --refresh-margin or raise --ttl)",
                    minted.expires_at.saturating_sub(now)
                ));
            }
            if let (Some(cache), Some(_held)) = (&cache, &lock) {
                let entry = CachedToken {
                    access_token: minted.access_token.clone(),
                    expires_at: minted.expires_at,
                    minted_at: now,
                    broker: settings.broker.clone(),
                    audience: settings.audience.clone(),
                    profile: settings.profile.clone(),
                    identity: identity.name().to_owned(),
                    scope: minted.scope.clone(),
                };
                if let Err(e) = cache.write(&entry) {
                    report.warn(&format!("{e}; the token was not cached"));
                }
            }
            drop(lock);
            Ok(Outcome {
                token: minted.access_token,
            })
        }
        Err(HelperError::Exchange(
            e @ (ExchangeError::Unavailable { .. } | ExchangeError::BadResponse { .. }),
        )) => serve_fallback(fallback, clock, report, e),
        Err(e) => Err(e),
    }
}

/// The broker is unreachable: serve a cached token that is still valid, or fail with `err`.
fn serve_fallback(
    fallback: Option<CachedToken>,
    clock: &dyn Clock,
    report: &mut Reporter<'_>,
    err: ExchangeError,
) -> Result<Outcome, HelperError> {
    match fallback {
        Some(t) if t.is_valid(clock.now_unix()) => {
            report.warn(&format!(
                "{err}; serving the cached token, which expires in {}",
                crate::status::fmt_duration(t.remaining(clock.now_unix()))
            ));
            Ok(Outcome {
                token: t.access_token,
            })
        }
        _ => Err(err.into()),
    }
}

/// Build the runtime and client (only now), prove identity, exchange.
fn mint(
    settings: &Settings,
    identity: &dyn Identity,
    clock: &dyn Clock,
    deadline: Instant,
) -> Result<exchange::Minted, HelperError> {
    let url = exchange::token_endpoint(&settings.broker);
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err(ExchangeError::Unavailable {
            url,
            reason: format!(
                "no time left before the {} ms deadline",
                settings.timeout_ms
            ),
        }
        .into());
    }
    let http = exchange::http_client(remaining)
        .map_err(|e| HelperError::Internal(format!("cannot build the HTTP client: {e}")))?;
    let req = MintRequest {
        broker: &settings.broker,
        audience: &settings.audience,
        ttl_secs: settings.ttl_secs,
        scope: None,
    };
    let now = clock.now_unix();
    exchange::block_on_with_deadline(
        deadline,
        "minting a token",
        &url,
        exchange::mint(&http, identity, &req, now),
    )
    .map_err(|e| HelperError::Internal(format!("cannot start the async runtime: {e}")))?
}
