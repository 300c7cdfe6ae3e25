//! A person's sign-in: `tollgate-token login`, `logout`, and the silent renewal the token path does for
//! a signed-in person.
//!
//! `login` discovers the broker's authorization server metadata ([`oauth::discover`]) and runs either
//! the browser sign-in (authorization code with PKCE S256, the redirect to a loopback port:
//! [`loopback`]) or the device sign-in (RFC 8628) for SSH sessions and machines without a display. The
//! refresh token goes to the OS credential store or its 0600 fallback ([`store`]); the access token
//! goes to the ordinary token cache, so the next `tollgate-token` is a cache hit.
//!
//! The token path ([`Session::renew`]) only ever uses the refresh token: it rotates it (the new one is
//! stored before the access token is handed out) and never opens a browser. When the refresh token is
//! missing or refused it fails with [`SignInError`], exit 67, and one line telling the person to run
//! `tollgate-token login`.

pub mod loopback;
pub mod oauth;
pub mod store;

use crate::Reporter;
use crate::cache::{Cache, CacheKey, CachedToken};
use crate::config::{Settings, Source};
use crate::error::{ExchangeError, Exit, HelperError, SignInError};
use crate::exchange::{self, Minted};
use crate::sys::{Clock, Env};
use oauth::{GrantOutcome, Metadata, TokenSet};
use secrecy::ExposeSecret;
use std::time::{Duration, Instant};
use store::{Record, Slot};

/// The identity name of a signed-in person in the token cache and in `status`.
pub const IDENTITY_NAME: &str = "login";
/// The OAuth client the helper is at the broker (a public client).
pub const DEFAULT_CLIENT_ID: &str = "tollgate-token";
/// How long `login` waits for the person to finish in the browser.
const BROWSER_WAIT: Duration = Duration::from_secs(600);
/// Each request of a sign-in (discovery, the code exchange, one device poll).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How `login` runs.
#[derive(Debug, Clone)]
pub struct LoginOptions {
    /// `--device`: the device sign-in, whatever the display.
    pub device: bool,
    /// `--no-browser`: the browser sign-in, but only print the URL.
    pub no_browser: bool,
    pub client_id: String,
    /// `--scope`; default: `openid offline_access`, each only if the server lists it.
    pub scope: Option<String>,
}

/// What the person types to sign in again, with the flags this run needed.
pub fn login_args(settings: &Settings) -> String {
    let mut a = String::new();
    if matches!(settings.broker_source, Source::Flag | Source::Env) {
        a.push_str(&format!(" --broker {}", settings.broker));
    }
    if settings.profile != crate::config::DEFAULT_PROFILE {
        a.push_str(&format!(" --profile {}", settings.profile));
    }
    a
}

fn slot(settings: &Settings) -> Result<Slot, HelperError> {
    let dir = settings
        .state_dir
        .as_deref()
        .ok_or(crate::error::ConfigError::NoHome {
            what: "the sign-in directory",
            vars: "TOLLGATE_STATE_DIR, XDG_STATE_HOME",
        })?;
    Ok(Slot::new(dir, &settings.broker, &settings.profile))
}

/// Whether a sign-in is recorded for this broker and profile (the token path then uses it when no
/// identity is configured).
pub fn is_signed_in(settings: &Settings) -> bool {
    slot(settings).is_ok_and(|s| matches!(s.load(), Ok(Some(_))))
}

/// A recorded sign-in, as the token path uses it.
pub struct Session {
    slot: Slot,
    pub record: Record,
}

impl Session {
    pub fn load(settings: &Settings) -> Result<Self, HelperError> {
        let slot = slot(settings)?;
        match slot.load()? {
            Some(record) => Ok(Session { slot, record }),
            None => Err(SignInError::NotSignedIn {
                broker: settings.broker.clone(),
                args: login_args(settings),
            }
            .into()),
        }
    }

    pub fn fingerprint(&self) -> String {
        self.record.fingerprint()
    }

    /// Trade the refresh token for a new access token, storing the rotated refresh token first.
    pub fn renew(
        &self,
        settings: &Settings,
        clock: &dyn Clock,
        deadline: Instant,
    ) -> Result<Minted, HelperError> {
        let url = self.record.token_endpoint.clone();
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
        let _held = self.slot.lock()?;
        // Another process may have renewed (rotated) or signed out while we waited for the lock.
        let record = match self.slot.load()? {
            Some(r) if r.fingerprint() == self.record.fingerprint() => r,
            _ => {
                return Err(SignInError::NotSignedIn {
                    broker: settings.broker.clone(),
                    args: login_args(settings),
                }
                .into());
            }
        };
        let Some(refresh) = self.slot.get_refresh(&record)? else {
            return Err(SignInError::NotSignedIn {
                broker: settings.broker.clone(),
                args: login_args(settings),
            }
            .into());
        };
        let http = exchange::http_client(remaining)
            .map_err(|e| HelperError::Internal(format!("cannot build the HTTP client: {e}")))?;
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.expose_secret()),
            ("client_id", record.client_id.as_str()),
        ];
        if let Some(r) = &record.resource {
            form.push(("resource", r.as_str()));
        }
        let outcome =
            exchange::block_on_with_deadline(deadline, "renewing the sign-in", &url, async {
                oauth::grant(&http, &url, &form).await
            })
            .map_err(|e| HelperError::Internal(format!("cannot start the async runtime: {e}")))??;
        let now = clock.now_unix();
        match outcome {
            GrantOutcome::Tokens(t) => {
                if let Some(new) = &t.refresh_token {
                    self.slot.rotate(&record, new)?;
                }
                Ok(minted(t, now))
            }
            GrantOutcome::Error {
                error, description, ..
            } if matches!(
                error.as_str(),
                "invalid_grant" | "unauthorized_client" | "invalid_client"
            ) =>
            {
                // Dead for good (expired, revoked, replayed): drop it so nobody replays it again.
                self.slot.forget(Some(&record));
                Err(SignInError::Expired {
                    broker: settings.broker.clone(),
                    error: match description {
                        Some(d) => format!("{error}: {d}"),
                        None => error,
                    },
                    args: login_args(settings),
                }
                .into())
            }
            GrantOutcome::Error {
                status,
                error,
                description,
            } => Err(ExchangeError::Refused {
                status,
                error,
                description,
            }
            .into()),
        }
    }
}

fn minted(t: TokenSet, now: u64) -> Minted {
    Minted {
        access_token: t.access_token,
        expires_at: now.saturating_add(t.expires_in),
        expires_in: t.expires_in,
        scope: t.scope,
    }
}

/// Whether a browser can be opened here: `$BROWSER`, or a graphical session (a display on Linux and
/// the BSDs; on macOS anything but an SSH session).
pub fn has_display(env: &dyn Env) -> bool {
    if env.var("BROWSER").is_some() {
        return true;
    }
    if cfg!(target_os = "macos") {
        return env.var("SSH_CONNECTION").is_none() && env.var("SSH_TTY").is_none();
    }
    env.var("DISPLAY").is_some() || env.var("WAYLAND_DISPLAY").is_some()
}

/// Open `url` with `$BROWSER`, else the desktop's opener. Nothing it prints reaches our stdout.
fn open_browser(env: &dyn Env, url: &str) -> Result<(), String> {
    let cmd = env.var("BROWSER").unwrap_or_else(|| {
        if cfg!(target_os = "macos") {
            "open".into()
        } else {
            "xdg-open".into()
        }
    });
    std::process::Command::new(&cmd)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(drop)
        .map_err(|e| format!("cannot run {cmd}: {e}"))
}

fn runtime() -> Result<tokio::runtime::Runtime, HelperError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| HelperError::Internal(format!("cannot start the async runtime: {e}")))
}

/// The scope to ask for: the person's, else `openid models offline_access` as far as the server lists
/// them (`models`: the broker's whole grant; nothing when it lists none: the server's default).
fn default_scope(meta: &Metadata) -> Option<String> {
    let s: Vec<&str> = ["openid", "models", "offline_access"]
        .into_iter()
        .filter(|s| meta.scopes_supported.iter().any(|x| x == s))
        .collect();
    (!s.is_empty()).then(|| s.join(" "))
}

/// `tollgate-token login`.
pub fn login(
    settings: &Settings,
    opts: &LoginOptions,
    env: &dyn Env,
    clock: &dyn Clock,
    report: &mut Reporter<'_>,
) -> Result<Exit, HelperError> {
    let rt = runtime()?;
    let http = exchange::http_client_unpooled(REQUEST_TIMEOUT)
        .map_err(|e| HelperError::Internal(format!("cannot build the HTTP client: {e}")))?;
    let meta = rt.block_on(oauth::discover(&http, &settings.broker))?;
    let scope = opts.scope.clone().or_else(|| default_scope(&meta));
    // RFC 8707: the token is for this broker (its `aud`).
    let resource = settings.broker.clone();
    let device = if opts.device {
        true
    } else if !opts.no_browser && !has_display(env) {
        report.note(
            "no display here (no DISPLAY, WAYLAND_DISPLAY or BROWSER): signing in with a code on another device; \
             pass --no-browser to get a link for a browser on this machine instead",
        );
        true
    } else {
        false
    };
    let tokens = if device {
        device_sign_in(&rt, &http, &meta, opts, scope.as_deref(), &resource, report)?
    } else {
        browser_sign_in(
            &rt,
            &http,
            &meta,
            opts,
            scope.as_deref(),
            &resource,
            env,
            report,
        )?
    };
    let now = clock.now_unix();
    let (subject, name) = oauth::who(&tokens);
    let has_refresh = tokens.refresh_token.is_some();
    let slot = slot(settings)?;
    let _held = slot.lock()?;
    let previous = slot.load().ok().flatten();
    let (held, fallback_reason) = match &tokens.refresh_token {
        Some(rt) => slot.put_refresh(settings.credential_store, rt)?,
        None => {
            report.warn(
                "the broker issued no refresh token: the helper cannot renew this sign-in, so you will \
                 sign in again when the access token expires",
            );
            slot.forget(previous.as_ref());
            (store::Held::File, None)
        }
    };
    let record = Record {
        version: 1,
        broker: settings.broker.clone(),
        profile: settings.profile.clone(),
        issuer: meta.issuer.clone(),
        client_id: opts.client_id.clone(),
        token_endpoint: meta.token_endpoint.clone(),
        revocation_endpoint: meta.revocation_endpoint.clone(),
        resource: Some(resource),
        scope: tokens.scope.clone().or(scope),
        subject,
        name,
        signed_in_at: now,
        refresh_expires_at: tokens.refresh_expires_in.map(|s| now.saturating_add(s)),
        held,
        fallback_reason: fallback_reason.clone(),
    };
    slot.save(&record)?;
    // The new access token is what the next `tollgate-token` prints: no renewal right after a sign-in.
    let minted = minted(tokens, now);
    let fp = record.fingerprint();
    if let Some(dir) = settings.cache_dir.as_deref() {
        let cache = Cache::new(dir, &key(settings, &fp));
        if let Err(e) = cache.write(&CachedToken {
            access_token: minted.access_token.clone(),
            expires_at: minted.expires_at,
            minted_at: now,
            broker: settings.broker.clone(),
            audience: settings.audience.clone(),
            profile: settings.profile.clone(),
            identity: IDENTITY_NAME.to_owned(),
            scope: minted.scope.clone(),
        }) {
            report.warn(&format!("{e}; the access token was not cached"));
        }
    }
    let kept = match (&record.held, &fallback_reason) {
        _ if !has_refresh => "no refresh token was issued".to_owned(),
        (store::Held::Keyring, _) => "the refresh token is in the OS credential store".to_owned(),
        (store::Held::File, reason) => format!(
            "the refresh token is in {} (a fallback, 0600: {})",
            slot.fallback_path().display(),
            reason
                .as_deref()
                .unwrap_or("the OS credential store is unavailable")
        ),
    };
    report.note(&format!(
        "signed in to {} as {}; {kept}; the access token expires in {}",
        settings.broker,
        record.who(),
        crate::sys::fmt_duration(minted.expires_in)
    ));
    Ok(Exit::Ok)
}

fn key<'a>(settings: &'a Settings, fingerprint: &'a str) -> CacheKey<'a> {
    CacheKey {
        broker: &settings.broker,
        audience: &settings.audience,
        identity: IDENTITY_NAME,
        fingerprint,
        profile: &settings.profile,
    }
}

/// Authorization code with PKCE S256 and a loopback redirect.
#[allow(clippy::too_many_arguments)]
fn browser_sign_in(
    rt: &tokio::runtime::Runtime,
    http: &reqwest::Client,
    meta: &Metadata,
    opts: &LoginOptions,
    scope: Option<&str>,
    resource: &str,
    env: &dyn Env,
    report: &mut Reporter<'_>,
) -> Result<TokenSet, HelperError> {
    let Some(endpoint) = meta.authorization_endpoint.as_deref() else {
        return Err(SignInError::Unsupported {
            broker: meta.issuer.clone(),
            reason: "its metadata has no authorization_endpoint (try --device)".into(),
        }
        .into());
    };
    let listener = loopback::Listener::bind()
        .map_err(|e| HelperError::Internal(format!("cannot listen on 127.0.0.1: {e}")))?;
    let redirect_uri = listener.redirect_uri();
    let pkce = oauth::Pkce::new()?;
    let state = oauth::random_b64(32)?;
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", opts.client_id.as_str()),
        ("redirect_uri", redirect_uri.as_str()),
        ("code_challenge", pkce.challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("state", state.as_str()),
        ("resource", resource),
    ];
    if let Some(s) = scope {
        params.push(("scope", s));
    }
    let url = oauth::authorization_url(endpoint, &params)?;
    if opts.no_browser {
        report.note(&format!(
            "open this link in a browser on this machine to sign in: {url}"
        ));
    } else {
        report.note(&format!(
            "opening your browser to sign in; if it does not open, visit: {url}"
        ));
        if let Err(e) = open_browser(env, &url) {
            report.warn(&format!(
                "{e}; open the link above yourself (or use --device)"
            ));
        }
    }
    let redirect = listener.wait(&state, &meta.issuer, Instant::now() + BROWSER_WAIT)?;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", redirect.code.as_str()),
        ("redirect_uri", redirect_uri.as_str()),
        ("client_id", opts.client_id.as_str()),
        ("code_verifier", pkce.verifier.expose_secret()),
        ("resource", resource),
    ];
    match rt.block_on(oauth::grant(http, &meta.token_endpoint, &form))? {
        GrantOutcome::Tokens(t) => Ok(t),
        GrantOutcome::Error {
            error, description, ..
        } => Err(SignInError::Denied { error, description }.into()),
    }
}

/// RFC 8628: show a code and a link, poll until the person confirms elsewhere.
fn device_sign_in(
    rt: &tokio::runtime::Runtime,
    http: &reqwest::Client,
    meta: &Metadata,
    opts: &LoginOptions,
    scope: Option<&str>,
    resource: &str,
    report: &mut Reporter<'_>,
) -> Result<TokenSet, HelperError> {
    let Some(endpoint) = meta.device_authorization_endpoint.as_deref() else {
        return Err(SignInError::Unsupported {
            broker: meta.issuer.clone(),
            reason: "its metadata has no device_authorization_endpoint (sign in with a browser: drop --device)"
                .into(),
        }
        .into());
    };
    let mut form = vec![
        ("client_id", opts.client_id.as_str()),
        ("resource", resource),
    ];
    if let Some(s) = scope {
        form.push(("scope", s));
    }
    let da = match rt.block_on(oauth::device_authorization(http, endpoint, &form))? {
        Ok(da) => da,
        Err(GrantOutcome::Error {
            error, description, ..
        }) => return Err(SignInError::Denied { error, description }.into()),
        Err(GrantOutcome::Tokens(_)) => {
            return Err(HelperError::Internal("unreachable device answer".into()));
        }
    };
    let user_code = exchange::sanitize(&da.user_code, 64);
    match da.verification_uri_complete.as_deref() {
        Some(complete) => report.note(&format!(
            "to sign in, open {} on any device and check that it shows the code {user_code} \
             (or open {} and enter the code)",
            exchange::sanitize(complete, 500),
            exchange::sanitize(&da.verification_uri, 500)
        )),
        None => report.note(&format!(
            "to sign in, open {} on any device and enter the code {user_code}",
            exchange::sanitize(&da.verification_uri, 500)
        )),
    }
    let started = Instant::now();
    let expires = started + Duration::from_secs(da.expires_in.min(3600));
    // §3.5: 5 s when the server says nothing; `slow_down` adds 5 s for good.
    let mut interval = Duration::from_secs(da.interval.unwrap_or(5).max(1));
    let form = [
        ("grant_type", oauth::GRANT_DEVICE_CODE),
        ("device_code", da.device_code.as_str()),
        ("client_id", opts.client_id.as_str()),
        ("resource", resource),
    ];
    loop {
        if Instant::now() + interval > expires {
            return Err(SignInError::TimedOut(
                "the code expired before the sign-in was confirmed; run `tollgate-token login --device` again"
                    .into(),
            )
            .into());
        }
        std::thread::sleep(interval);
        match rt.block_on(oauth::grant(http, &meta.token_endpoint, &form))? {
            GrantOutcome::Tokens(t) => return Ok(t),
            GrantOutcome::Error { error, .. } if error == "authorization_pending" => {}
            GrantOutcome::Error { error, .. } if error == "slow_down" => {
                interval += Duration::from_secs(5);
            }
            GrantOutcome::Error { error, .. } if error == "expired_token" => {
                return Err(SignInError::TimedOut(
                    "the code expired before the sign-in was confirmed; run `tollgate-token login --device` again"
                        .into(),
                )
                .into());
            }
            GrantOutcome::Error {
                error, description, ..
            } => return Err(SignInError::Denied { error, description }.into()),
        }
    }
}

/// `tollgate-token logout`: revoke the refresh token at the broker (RFC 7009), then forget the sign-in
/// and its cached access token here, whatever the broker said.
pub fn logout(settings: &Settings, report: &mut Reporter<'_>) -> Result<Exit, HelperError> {
    let slot = slot(settings)?;
    let _held = slot.lock()?;
    let Some(record) = slot.load()? else {
        report.note(&format!(
            "not signed in to {}; nothing to do",
            settings.broker
        ));
        return Ok(Exit::Ok);
    };
    let token = slot.get_refresh(&record);
    let revoked: Result<(), String> = match (&record.revocation_endpoint, &token) {
        (Some(url), Ok(Some(t))) => {
            report.add_secrets([t.clone()]);
            let http = exchange::http_client(REQUEST_TIMEOUT)
                .map_err(|e| HelperError::Internal(format!("cannot build the HTTP client: {e}")))?;
            runtime()?
                .block_on(oauth::revoke(&http, url, &record.client_id, t))
                .map_err(|e| e.to_string())
        }
        (None, _) => Err("the broker has no revocation endpoint".into()),
        (_, Ok(None)) => Err("the refresh token was already gone here".into()),
        (_, Err(e)) => Err(e.to_string()),
    };
    slot.forget(Some(&record));
    if let Some(dir) = settings.cache_dir.as_deref() {
        Cache::new(dir, &key(settings, &record.fingerprint())).remove();
    }
    match revoked {
        Ok(()) => {
            report.note(&format!(
                "signed out of {} ({}): the broker revoked the refresh token, and it is forgotten here",
                settings.broker,
                record.who()
            ));
            Ok(Exit::Ok)
        }
        Err(why) => {
            report.warn(&format!(
                "signed out of {} ({}) here, but the broker could not revoke the refresh token ({why}); \
                 it stays valid there until it expires or an administrator revokes it",
                settings.broker,
                record.who()
            ));
            Ok(Exit::BrokerUnavailable)
        }
    }
}

/// `status` lines about the sign-in (None when not signed in).
pub fn status_lines(
    settings: &Settings,
    now: u64,
) -> Result<Option<Vec<(String, String)>>, HelperError> {
    let slot = slot(settings)?;
    let Some(r) = slot.load()? else {
        return Ok(None);
    };
    let mut rows = vec![
        (
            "signed in".to_owned(),
            format!("as {} at {}", r.who(), r.issuer),
        ),
        (
            "since".to_owned(),
            format!(
                "{} ({} ago)",
                crate::sys::fmt_unix(r.signed_in_at),
                crate::sys::fmt_duration(now.saturating_sub(r.signed_in_at))
            ),
        ),
    ];
    let until = match r.refresh_expires_at {
        Some(t) if t > now => format!(
            "{} (in {}), renewed silently until then",
            crate::sys::fmt_unix(t),
            crate::sys::fmt_duration(t - now)
        ),
        Some(t) => format!(
            "expired at {}: run `tollgate-token login`",
            crate::sys::fmt_unix(t)
        ),
        None => "as long as the broker keeps renewing it (each renewal rotates the refresh token)"
            .to_owned(),
    };
    rows.push(("until".to_owned(), until));
    let held = match slot.get_refresh(&r) {
        Ok(Some(_)) => match r.held {
            store::Held::Keyring => "refresh token in the OS credential store".to_owned(),
            store::Held::File => format!(
                "refresh token in {} (a fallback: {})",
                slot.fallback_path().display(),
                r.fallback_reason
                    .as_deref()
                    .unwrap_or("the OS credential store is unavailable")
            ),
        },
        Ok(None) => "no refresh token: run `tollgate-token login`".to_owned(),
        Err(e) => e.to_string(),
    };
    rows.push(("kept".to_owned(), held));
    rows.push(("client".to_owned(), r.client_id.clone()));
    Ok(Some(rows))
}
