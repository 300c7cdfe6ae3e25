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
use crate::rerun::{self, Parent};
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
    parent: Option<&Parent>,
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
    // Re-run detection (see `rerun`): the fingerprint of a cached token this parent just had refused.
    let window = parent.map_or(0, |p| p.window(settings.rerun_window_secs));
    let marker = cache
        .as_ref()
        .map(|c| c.file_path().with_extension("served"));
    let mut refused_fp: Option<String> = None;
    let serve = |t: CachedToken| -> Outcome {
        if let (Some(p), Some(m), true) = (parent, &marker, window > 0) {
            rerun::record(
                m,
                p,
                &rerun::token_fingerprint(t.access_token.expose_secret()),
                clock.now_unix(),
            );
        }
        Outcome {
            token: t.access_token,
        }
    };
    if let Some(cache) = &cache {
        let mut warned_corrupt = false;
        match cache.read() {
            Lookup::Hit(t) if t.is_fresh(clock.now_unix(), margin) => {
                let fp = rerun::token_fingerprint(t.access_token.expose_secret());
                match (parent, &marker) {
                    (Some(p), Some(m)) if rerun::is_rerun(m, p, &fp, clock.now_unix(), window) => {
                        report.warn("the same process asked again right away: treating the cached token as refused and minting a new one");
                        refused_fp = Some(fp);
                        fallback = Some(t);
                    }
                    _ => return Ok(serve(t)),
                }
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
                    Lookup::Hit(t)
                        if t.is_fresh(clock.now_unix(), margin)
                            && refused_fp.as_deref()
                                != Some(&rerun::token_fingerprint(
                                    t.access_token.expose_secret(),
                                )) =>
                    {
                        return Ok(serve(t));
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
            if let (Some(p), Some(m), true) = (parent, &marker, window > 0) {
                rerun::record(
                    m,
                    p,
                    &rerun::token_fingerprint(minted.access_token.expose_secret()),
                    now,
                );
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Flags};
    use crate::sys::{FixedClock, MapEnv};

    /// Settings for a dead broker, a static credential and a cache under `home`.
    fn settings(home: &std::path::Path) -> Settings {
        // A loopback port nobody listens on any more.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let broker = format!("http://{}", dead.local_addr().expect("addr"));
        drop(dead);
        let env = MapEnv::new([
            ("HOME", home.to_str().expect("utf8")),
            ("TOLLGATE_BROKER", broker.as_str()),
            ("TOLLGATE_CREDENTIAL", "unit-test-credential"),
            ("TOLLGATE_TIMEOUT_MS", "2000"),
        ]);
        config::resolve(&Flags::default(), &env).expect("resolve")
    }

    fn seed(s: &Settings, expires_at: u64) {
        let identity = identity::load(&s.identity).expect("identity");
        let fp = identity.fingerprint();
        let key = CacheKey {
            broker: &s.broker,
            audience: &s.audience,
            identity: identity.name(),
            fingerprint: &fp,
            profile: &s.profile,
        };
        let cache = Cache::new(s.cache_dir.as_deref().expect("cache on"), &key);
        cache
            .write(&CachedToken {
                access_token: SecretString::from("cached.token.sig"),
                expires_at,
                minted_at: 0,
                broker: s.broker.clone(),
                audience: s.audience.clone(),
                profile: s.profile.clone(),
                identity: "static".into(),
                scope: None,
            })
            .expect("seed");
    }

    #[test]
    fn fake_clock_decides_between_hit_fallback_and_failure() {
        let tmp = tempfile::tempdir().expect("tmp");
        let s = settings(tmp.path());
        seed(&s, 1000);
        let mut err = Vec::new();

        // 500 s left > 300 s margin: a silent hit, no network.
        let mut report = Reporter::new(&mut err);
        let got = get_token(&s, &FixedClock(500), &mut report, Instant::now(), None).expect("hit");
        assert_eq!(got.token.expose_secret(), "cached.token.sig");
        assert!(err.is_empty());

        // 200 s left: a mint is attempted, the broker is dead, the cached token is served with a warning.
        let mut report = Reporter::new(&mut err);
        let got =
            get_token(&s, &FixedClock(800), &mut report, Instant::now(), None).expect("fallback");
        assert_eq!(got.token.expose_secret(), "cached.token.sig");
        let text = String::from_utf8(std::mem::take(&mut err)).expect("utf8");
        assert!(
            text.contains("serving the cached token, which expires in 3m 20s"),
            "{text}"
        );

        // Expired: nothing to fall back on.
        let mut report = Reporter::new(&mut err);
        let e = get_token(&s, &FixedClock(1000), &mut report, Instant::now(), None)
            .expect_err("expired");
        assert_eq!(e.exit(), crate::error::Exit::BrokerUnavailable);
    }

    #[test]
    fn emit_token_writes_one_line() {
        let mut out = Vec::new();
        emit_token(&mut out, &SecretString::from("a.b.c")).expect("write");
        assert_eq!(out, b"a.b.c\n");
    }
}
