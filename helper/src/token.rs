//! The default command: print a token, from the cache if it is fresh, else minted.
//!
//! Hot path (cache hit): resolve settings, load the identity (read a file), hash the cache key,
//! read one small JSON file, compare a timestamp, print. No runtime, no HTTP client, no TLS.

use crate::Reporter;
use crate::cache::{Cache, CacheError, CacheKey, CachedToken, Lookup, RememberedFailure};
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

/// How the token path runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// What Codex runs: a fresh cached token if there is one, else a mint; when the broker is unavailable,
    /// a still-valid cached token (with a warning). A broker failure is remembered for a few seconds.
    Cached,
    /// `refresh`: mint now and replace the cache whatever it holds. Neither a cached token nor a
    /// remembered failure stands in for the mint: the user asked for a new token.
    Refresh,
}

/// What the token path decided to print.
#[derive(Debug)]
pub struct Outcome {
    pub token: SecretString,
    /// Unix seconds, local clock.
    pub expires_at: u64,
    /// Freshly minted and written to the cache.
    pub cached: bool,
}

impl Outcome {
    fn cached(t: CachedToken) -> Self {
        Outcome {
            token: t.access_token,
            expires_at: t.expires_at,
            cached: false,
        }
    }
}

/// Find or mint a token. Warnings go to `report`; the caller prints the token with [`emit_token`].
pub fn get_token(
    settings: &Settings,
    clock: &dyn Clock,
    report: &mut Reporter<'_>,
    started: Instant,
    parent: Option<&Parent>,
    mode: Mode,
) -> Result<Outcome, HelperError> {
    let deadline = started + Duration::from_millis(settings.timeout_ms);
    let identity = Source::load(settings)?;
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
    let memory = settings.failure_memory_secs;
    let refresh = mode == Mode::Refresh;
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
        Outcome::cached(t)
    };
    if let Some(cache) = &cache {
        let mut warned = false;
        if !refresh {
            match cache.read() {
                Lookup::Hit(t) if t.is_fresh(clock.now_unix(), margin) => {
                    let fp = rerun::token_fingerprint(t.access_token.expose_secret());
                    match (parent, &marker) {
                        (Some(p), Some(m))
                            if rerun::is_rerun(m, p, &fp, clock.now_unix(), window) =>
                        {
                            report.warn("the same process asked again right away: treating the cached token as refused and minting a new one");
                            refused_fp = Some(fp);
                            fallback = Some(t);
                        }
                        _ => return Ok(serve(t)),
                    }
                }
                Lookup::Hit(t) => fallback = Some(t),
                Lookup::Miss => {}
                other => warned = warn_unusable(report, other),
            }
            // The broker failed a moment ago: say so at once instead of waiting on it again.
            if let Some(f) = cache.recent_failure(clock.now_unix(), memory) {
                return serve_fallback(fallback, clock, report, remembered(f, clock, memory));
            }
        }
        match cache.lock(deadline) {
            Ok(l) => {
                lock = Some(l);
                // Another process may have minted (or failed) while we waited for the lock.
                match cache.read() {
                    Lookup::Hit(t)
                        if !refresh
                            && t.is_fresh(clock.now_unix(), margin)
                            && refused_fp.as_deref()
                                != Some(&rerun::token_fingerprint(
                                    t.access_token.expose_secret(),
                                )) =>
                    {
                        return Ok(serve(t));
                    }
                    Lookup::Hit(t) if !refresh => fallback = Some(t),
                    Lookup::Hit(_) | Lookup::Miss => {}
                    other => {
                        let insecure = matches!(other, Lookup::Insecure(_));
                        if !warned {
                            warn_unusable(report, other);
                        }
                        // Holding the lock, nobody else writes it: take the exposed token off the disk now,
                        // even if the mint below fails.
                        if insecure {
                            cache.remove();
                        }
                    }
                }
                if !refresh && let Some(f) = cache.recent_failure(clock.now_unix(), memory) {
                    drop(lock);
                    return serve_fallback(fallback, clock, report, remembered(f, clock, memory));
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

    match mint(settings, &identity, clock, deadline) {
        Ok(minted) => {
            report.add_secrets([minted.access_token.clone()]);
            let now = clock.now_unix();
            let mut cached = false;
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
                match cache.write(&entry) {
                    Ok(()) => cached = true,
                    Err(e) => report.warn(&format!("{e}; the token was not cached")),
                }
                cache.forget_failure();
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
                expires_at: minted.expires_at,
                cached,
            })
        }
        Err(HelperError::Exchange(
            e @ (ExchangeError::Unavailable { .. } | ExchangeError::BadResponse { .. }),
        )) => {
            if let (Some(cache), true, Some(f)) =
                (&cache, memory > 0, failure_record(&e, clock.now_unix()))
            {
                // Best effort: without it the next run only waits again.
                let _ = cache.remember_failure(&f);
            }
            drop(lock);
            serve_fallback(fallback, clock, report, e)
        }
        Err(e) => Err(e),
    }
}

/// `refresh`'s one line about the new token: whom it is for, what it may use, until when. Never the
/// token itself (that goes to stdout, and only with `--print`).
pub fn summary(o: &Outcome, now: u64) -> String {
    use crate::sys::{fmt_duration, fmt_unix};
    let mut s = String::from("minted a new token");
    if let Some(c) = exchange::jwt_claims(o.token.expose_secret()) {
        s.push_str(&format!(" for {} (principal {}", c.sub, c.grant.principal));
        if let Some(team) = &c.grant.team {
            s.push_str(&format!(", team {team}"));
        }
        let models: Vec<&str> = c.grant.models.iter().map(|m| m.as_str()).collect();
        s.push_str(&format!(
            "; models {}",
            if models.is_empty() {
                "-".to_owned()
            } else {
                models.join(", ")
            }
        ));
        s.push(')');
    }
    s.push_str(&format!(
        "; expires {} (in {})",
        fmt_unix(o.expires_at),
        fmt_duration(o.expires_at.saturating_sub(now))
    ));
    s.push_str(if o.cached {
        "; it replaced the cached token"
    } else {
        "; not cached"
    });
    s
}

/// What to remember of a broker failure (a refusal is not remembered: it comes back at once anyway, and
/// the policy may be fixed a second later).
fn failure_record(e: &ExchangeError, at: u64) -> Option<RememberedFailure> {
    let (url, reason, bad_response) = match e {
        ExchangeError::Unavailable { url, reason } => (url, reason, false),
        ExchangeError::BadResponse { url, reason } => (url, reason, true),
        ExchangeError::Refused { .. } => return None,
    };
    Some(RememberedFailure {
        at,
        bad_response,
        url: url.clone(),
        reason: reason.clone(),
    })
}

/// The error a remembered failure stands for: the same message, and how old it is.
fn remembered(f: RememberedFailure, clock: &dyn Clock, memory: u64) -> ExchangeError {
    let age = clock.now_unix().saturating_sub(f.at);
    let reason = format!(
        "{} (failed {age}s ago; the broker is tried again {memory}s after a failure, or now by `tollgate-token refresh`)",
        f.reason
    );
    if f.bad_response {
        ExchangeError::BadResponse { url: f.url, reason }
    } else {
        ExchangeError::Unavailable { url: f.url, reason }
    }
}

/// Warn about a cache file that cannot be used. Returns true (a warning was given).
fn warn_unusable(report: &mut Reporter<'_>, lookup: Lookup) -> bool {
    match lookup {
        Lookup::Corrupt(why) => report.warn(&format!(
            "ignoring token cache: {why}; it will be overwritten"
        )),
        Lookup::Insecure(why) => report.warn(&format!(
            "not using the token cache: {why}, but tollgate-token writes it 0600 and yours only, so it was \
             changed since: minting a new token, which re-creates it 0600"
        )),
        Lookup::Hit(_) | Lookup::Miss => return false,
    }
    true
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
                crate::sys::fmt_duration(t.remaining(clock.now_unix()))
            ));
            Ok(Outcome::cached(t))
        }
        _ => Err(err.into()),
    }
}

/// Where tokens come from: a workload identity's proof, exchanged (RFC 8693), or a person's sign-in,
/// renewed with its refresh token.
pub enum Source {
    Proof(Box<dyn Identity>),
    Login(Box<crate::login::Session>),
}

impl Source {
    pub fn load(settings: &Settings) -> Result<Self, HelperError> {
        match settings.identity {
            crate::config::IdentityConfig::Login => Ok(Source::Login(Box::new(
                crate::login::Session::load(settings)?,
            ))),
            ref other => Ok(Source::Proof(identity::load(other)?)),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Source::Proof(i) => i.name(),
            Source::Login(_) => crate::login::IDENTITY_NAME,
        }
    }

    pub fn fingerprint(&self) -> String {
        match self {
            Source::Proof(i) => i.fingerprint(),
            Source::Login(s) => s.fingerprint(),
        }
    }

    pub fn secrets(&self) -> Vec<SecretString> {
        match self {
            Source::Proof(i) => i.secrets(),
            Source::Login(_) => Vec::new(),
        }
    }
}

/// Build the runtime and client (only now), prove identity, exchange; or renew a sign-in.
fn mint(
    settings: &Settings,
    source: &Source,
    clock: &dyn Clock,
    deadline: Instant,
) -> Result<exchange::Minted, HelperError> {
    let identity = match source {
        Source::Proof(i) => i.as_ref(),
        Source::Login(session) => return session.renew(settings, clock, deadline),
    };
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
        exchange::mint(&http, identity, &req, now, deadline),
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
        let got = get_token(
            &s,
            &FixedClock(500),
            &mut report,
            Instant::now(),
            None,
            Mode::Cached,
        )
        .expect("hit");
        assert_eq!(got.token.expose_secret(), "cached.token.sig");
        assert!(err.is_empty());

        // 200 s left: a mint is attempted, the broker is dead, the cached token is served with a warning.
        let mut report = Reporter::new(&mut err);
        let got = get_token(
            &s,
            &FixedClock(800),
            &mut report,
            Instant::now(),
            None,
            Mode::Cached,
        )
        .expect("fallback");
        assert_eq!(got.token.expose_secret(), "cached.token.sig");
        let text = String::from_utf8(std::mem::take(&mut err)).expect("utf8");
        assert!(
            text.contains("serving the cached token, which expires in 3m 20s"),
            "{text}"
        );

        // Expired: nothing to fall back on.
        let mut report = Reporter::new(&mut err);
        let e = get_token(
            &s,
            &FixedClock(1000),
            &mut report,
            Instant::now(),
            None,
            Mode::Cached,
        )
        .expect_err("expired");
        assert_eq!(e.exit(), crate::error::Exit::BrokerUnavailable);
    }

    /// A broker that accepts connections and never answers (a hung broker). Counting the connections
    /// still waiting in its queue tells how many attempts reached it.
    struct HungBroker(std::net::TcpListener);

    impl HungBroker {
        fn start() -> Self {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.set_nonblocking(true).expect("nonblocking");
            HungBroker(l)
        }

        fn settings(&self, home: &std::path::Path) -> Settings {
            let broker = format!("http://{}", self.0.local_addr().expect("addr"));
            let env = MapEnv::new([
                ("HOME", home.to_str().expect("utf8")),
                ("TOLLGATE_BROKER", broker.as_str()),
                ("TOLLGATE_CREDENTIAL", "unit-test-credential"),
                ("TOLLGATE_TIMEOUT_MS", "300"),
            ]);
            config::resolve(&Flags::default(), &env).expect("resolve")
        }

        /// Connections that arrived since the last call (they are kept open, unanswered).
        fn attempts(&self, kept: &mut Vec<std::net::TcpStream>) -> usize {
            let before = kept.len();
            while let Ok((c, _)) = self.0.accept() {
                kept.push(c);
            }
            kept.len() - before
        }
    }

    fn run(s: &Settings, now: u64, mode: Mode) -> (Result<Outcome, HelperError>, String) {
        let mut err = Vec::new();
        let mut report = Reporter::new(&mut err);
        let r = get_token(s, &FixedClock(now), &mut report, Instant::now(), None, mode);
        (r, String::from_utf8(err).expect("utf8"))
    }

    #[test]
    fn a_broker_failure_is_remembered_for_a_few_seconds_per_slot() {
        let tmp = tempfile::tempdir().expect("tmp");
        let hung = HungBroker::start();
        let s = hung.settings(tmp.path());
        let mut kept = Vec::new();
        assert_eq!(s.failure_memory_secs, 10);

        // The first run waits out its deadline against the hung broker.
        let (r, _) = run(&s, 1000, Mode::Cached);
        let first = r.expect_err("hung").to_string();
        assert!(first.contains("timed out"), "{first}");
        assert_eq!(hung.attempts(&mut kept), 1);

        // Within 10 s: the same failure at once, without trying the broker.
        for now in [1000, 1004, 1009] {
            let (r, _) = run(&s, now, Mode::Cached);
            let e = r.expect_err("remembered");
            assert_eq!(e.exit(), crate::error::Exit::BrokerUnavailable);
            let text = e.to_string();
            assert!(text.starts_with(&first), "{text}\nvs {first}");
            assert!(
                text.contains(&format!("failed {}s ago", now - 1000)),
                "{text}"
            );
            assert_eq!(hung.attempts(&mut kept), 0, "no attempt at {now}");
        }
        // A clock that went back does not make the memory last for ever.
        let (r, _) = run(&s, 999, Mode::Cached);
        assert!(r.is_err());
        assert_eq!(
            hung.attempts(&mut kept),
            1,
            "a record from the future is ignored"
        );

        // 10 s after the latest real failure (at 999) the broker is tried again.
        let (r, _) = run(&s, 1008, Mode::Cached);
        assert!(r.is_err());
        assert_eq!(hung.attempts(&mut kept), 0);
        let (r, _) = run(&s, 1009, Mode::Cached);
        assert!(r.is_err());
        assert_eq!(hung.attempts(&mut kept), 1);

        // Another identity is another slot: not affected.
        let other = Settings {
            identity: config::IdentityConfig::Static(config::StaticCredential::Inline(
                SecretString::from("another-credential"),
            )),
            ..s.clone()
        };
        let (r, _) = run(&other, 1019, Mode::Cached);
        assert!(r.is_err());
        assert_eq!(hung.attempts(&mut kept), 1);

        // `refresh` always tries.
        let (r, _) = run(&s, 1020, Mode::Refresh);
        assert!(r.is_err());
        assert_eq!(hung.attempts(&mut kept), 1);

        // 0 turns it off.
        let off = Settings {
            failure_memory_secs: 0,
            ..s.clone()
        };
        let (r, _) = run(&off, 1021, Mode::Cached);
        assert!(r.is_err());
        assert_eq!(hung.attempts(&mut kept), 1);
    }

    #[test]
    fn a_remembered_failure_still_serves_a_valid_cached_token_at_once() {
        let tmp = tempfile::tempdir().expect("tmp");
        let hung = HungBroker::start();
        let s = hung.settings(tmp.path());
        let mut kept = Vec::new();
        // 200 s left: inside the 300 s margin, so a run tries to mint, and falls back.
        seed(&s, 2000);
        let (r, warn) = run(&s, 1800, Mode::Cached);
        assert_eq!(
            r.expect("fallback").token.expose_secret(),
            "cached.token.sig"
        );
        assert!(warn.contains("timed out"), "{warn}");
        assert_eq!(hung.attempts(&mut kept), 1);
        let (r, warn) = run(&s, 1801, Mode::Cached);
        assert_eq!(
            r.expect("fallback").token.expose_secret(),
            "cached.token.sig"
        );
        assert!(
            warn.contains("failed 1s ago") && warn.contains("serving the cached token"),
            "{warn}"
        );
        assert_eq!(hung.attempts(&mut kept), 0, "served at once");
        // A fresh token is served as always, whatever is remembered.
        let (r, warn) = run(&s, 1500, Mode::Cached);
        assert_eq!(r.expect("hit").token.expose_secret(), "cached.token.sig");
        assert_eq!(warn, "");
        // `refresh` never serves the cached token instead of a new one.
        let (r, _) = run(&s, 1802, Mode::Refresh);
        assert_eq!(
            r.expect_err("refresh fails").exit(),
            crate::error::Exit::BrokerUnavailable
        );
        assert_eq!(hung.attempts(&mut kept), 1);
    }

    #[test]
    fn emit_token_writes_one_line() {
        let mut out = Vec::new();
        emit_token(&mut out, &SecretString::from("a.b.c")).expect("write");
        assert_eq!(out, b"a.b.c\n");
    }
}
