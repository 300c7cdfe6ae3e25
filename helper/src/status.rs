//! `tollgate-token status`: what is cached for this profile, for humans. Never the token itself
//! unless `--show-token`.

use crate::Reporter;
use crate::cache::{Cache, CacheKey, CachedToken, Lookup};
use crate::config::Settings;
use crate::error::{ExchangeError, Exit, HelperError};
use crate::exchange;
use crate::sys::Clock;
use secrecy::ExposeSecret;
use std::io::{self, Write};
use std::time::{Duration, Instant};

pub use crate::sys::{fmt_duration, fmt_unix};

/// Options of `status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusOptions {
    pub show_token: bool,
    pub remote: bool,
}

/// Print the status of the cached token for the resolved profile.
pub fn status(
    settings: &Settings,
    codex: Option<&crate::codex::CodexProvider>,
    clock: &dyn Clock,
    opts: StatusOptions,
    out: &mut dyn Write,
    report: &mut Reporter<'_>,
    started: Instant,
) -> Result<Exit, HelperError> {
    // Not signed in is a status to report, not a failure of `status`.
    let identity = match crate::token::Source::load(settings) {
        Err(HelperError::SignIn(e @ crate::error::SignInError::NotSignedIn { .. })) => {
            writeln!(out, "{:<12}no", "signed in:").map_err(HelperError::Stdout)?;
            writeln!(out, "{:<12}{}", "token:", e).map_err(HelperError::Stdout)?;
            return Ok(Exit::SignInRequired);
        }
        other => other?,
    };
    report.add_secrets(identity.secrets());
    let fingerprint = identity.fingerprint();
    let key = CacheKey {
        broker: &settings.broker,
        audience: &settings.audience,
        identity: identity.name(),
        fingerprint: &fingerprint,
        profile: &settings.profile,
    };
    let io_err = HelperError::Stdout;
    let row = |out: &mut dyn Write, k: &str, v: &str| writeln!(out, "{:<12}{v}", format!("{k}:"));

    if let Some(c) = codex {
        row(
            out,
            "codex",
            &format!(
                "[model_providers.{}] in {} (its auth args are used)",
                c.id,
                c.config_path.display()
            ),
        )
        .map_err(io_err)?;
    }
    row(out, "profile", &settings.profile).map_err(io_err)?;
    row(out, "broker", &settings.broker).map_err(io_err)?;
    row(out, "audience", &settings.audience).map_err(io_err)?;
    row(out, "identity", identity.name()).map_err(io_err)?;
    if matches!(identity, crate::token::Source::Login(_))
        && let Some(rows) = crate::login::status_lines(settings, clock.now_unix())?
    {
        for (k, v) in rows {
            row(out, &k, &v).map_err(io_err)?;
        }
    }
    let Some(dir) = settings.cache_dir.as_deref() else {
        row(out, "token", "caching is off (--no-cache)").map_err(io_err)?;
        return Ok(Exit::Ok);
    };
    let cache = Cache::new(dir, &key);
    row(out, "cache file", &cache.file_path().display().to_string()).map_err(io_err)?;
    let token = match cache.read() {
        Lookup::Hit(t) => t,
        Lookup::Miss => {
            row(
                out,
                "token",
                "none cached (run `tollgate-token` to mint one)",
            )
            .map_err(io_err)?;
            return Ok(Exit::Ok);
        }
        Lookup::Corrupt(why) => {
            row(out, "token", &format!("unusable cache file: {why}")).map_err(io_err)?;
            return Ok(Exit::Ok);
        }
        Lookup::Insecure(why) => {
            row(
                out,
                "token",
                &format!("not used: {why} (the next run mints and re-creates it 0600)"),
            )
            .map_err(io_err)?;
            return Ok(Exit::Ok);
        }
    };
    report.add_secrets([token.access_token.clone()]);
    print_token(
        &token,
        clock.now_unix(),
        settings.refresh_margin_secs,
        opts,
        out,
    )
    .map_err(io_err)?;

    if opts.remote {
        return remote_usage(settings, &token, clock, out, started);
    }
    Ok(Exit::Ok)
}

fn print_token(
    t: &CachedToken,
    now: u64,
    margin: u64,
    opts: StatusOptions,
    out: &mut dyn Write,
) -> io::Result<()> {
    let row = |out: &mut dyn Write, k: &str, v: &str| writeln!(out, "{:<12}{v}", format!("{k}:"));
    let state = if !t.is_valid(now) {
        format!(
            "expired {} ago",
            fmt_duration(now.saturating_sub(t.expires_at))
        )
    } else if !t.is_fresh(now, margin) {
        format!(
            "valid for {} (inside the {margin}s refresh margin: the next run mints)",
            fmt_duration(t.remaining(now))
        )
    } else {
        format!("valid for {}", fmt_duration(t.remaining(now)))
    };
    row(
        out,
        "expires",
        &format!("{} ({state})", fmt_unix(t.expires_at)),
    )?;
    row(out, "minted", &fmt_unix(t.minted_at))?;
    if let Some(scope) = &t.scope {
        row(out, "scope", scope)?;
    }
    match exchange::jwt_claims(t.access_token.expose_secret()) {
        Some(c) => {
            let g = &c.grant;
            row(out, "subject", &c.sub)?;
            row(out, "principal", &g.principal)?;
            row(out, "team", g.team.as_deref().unwrap_or("-"))?;
            if let Some(org) = &g.org {
                row(out, "org", org)?;
            }
            let models: Vec<&str> = g.models.iter().map(|m| m.as_str()).collect();
            row(
                out,
                "models",
                &if models.is_empty() {
                    "-".to_owned()
                } else {
                    models.join(", ")
                },
            )?;
            if !g.budgets.is_empty() {
                row(out, "budgets", &g.budgets.join(", "))?;
            }
            if let Some(rpm) = g.rate.requests_per_minute {
                row(out, "rpm", &rpm.to_string())?;
            }
            if let Some(tpm) = g.rate.tokens_per_minute {
                row(out, "tpm", &tpm.to_string())?;
            }
            row(
                out,
                "proven by",
                &format!("{} ({})", g.identity.kind, g.identity.subject),
            )?;
            row(out, "issuer", &c.iss)?;
            row(out, "token id", &c.jti)?;
        }
        None => row(
            out,
            "claims",
            "not a Tollgate JWT (cannot show subject and grant)",
        )?,
    }
    if opts.show_token {
        row(out, "token", t.access_token.expose_secret())?;
    }
    Ok(())
}

/// `GET {broker}/v1/tollgate/usage` with the cached token; print its JSON.
fn remote_usage(
    settings: &Settings,
    token: &CachedToken,
    clock: &dyn Clock,
    out: &mut dyn Write,
    started: Instant,
) -> Result<Exit, HelperError> {
    let io_err = HelperError::Stdout;
    if !token.is_valid(clock.now_unix()) {
        writeln!(
            out,
            "usage:      the cached token has expired; run `tollgate-token` first"
        )
        .map_err(io_err)?;
        return Ok(Exit::Ok);
    }
    let url = format!("{}/v1/tollgate/usage", settings.broker);
    let deadline = started + Duration::from_millis(settings.timeout_ms);
    let http = exchange::http_client(deadline.saturating_duration_since(Instant::now()))
        .map_err(|e| HelperError::Internal(format!("cannot build the HTTP client: {e}")))?;
    let fetched = exchange::block_on_with_deadline(deadline, "fetching usage", &url, async {
        let resp = http
            .get(&url)
            .bearer_auth(token.access_token.expose_secret())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| ExchangeError::Unavailable {
                url: url.clone(),
                reason: crate::error::transport_reason(&e),
            })?;
        let status = resp.status();
        let body = exchange::read_body(resp, &url).await?;
        Ok::<_, ExchangeError>((status, body))
    })
    .map_err(|e| HelperError::Internal(format!("cannot start the async runtime: {e}")))??;
    let (status, body) = fetched;
    let text = match status.as_u16() {
        200..=299 => match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(v) => budget_lines(&v)
                .unwrap_or_else(|| serde_json::to_string_pretty(&v).unwrap_or_default()),
            Err(_) => "(the broker answered with something that is not JSON)".to_owned(),
        },
        404 => "not available on this broker (HTTP 404)".to_owned(),
        401 | 403 => format!(
            "the broker rejected the cached token (HTTP {}); run `tollgate-token` to mint a new one",
            status.as_u16()
        ),
        s if s >= 500 => {
            return Err(ExchangeError::Unavailable {
                url,
                reason: format!("HTTP {s}"),
            }
            .into());
        }
        s => format!("unexpected HTTP {s}"),
    };
    writeln!(out, "usage:").map_err(io_err)?;
    for line in text.lines() {
        writeln!(out, "  {line}").map_err(io_err)?;
    }
    Ok(Exit::Ok)
}

/// One line per budget from the broker's usage report, or `None` if the report has no `budgets` list.
fn budget_lines(v: &serde_json::Value) -> Option<String> {
    let budgets = v.get("budgets")?.as_array()?;
    if budgets.is_empty() {
        return Some("no budgets apply to this token".to_owned());
    }
    // Only a report in the shape we know is summarised; anything else is shown as the JSON it is.
    let known = [
        "id",
        "scope",
        "window",
        "amount_usd",
        "spent_usd",
        "reserved_usd",
        "remaining_usd",
    ];
    if !budgets.iter().all(|b| {
        known
            .iter()
            .all(|k| b.get(*k).is_some_and(|v| v.is_string()))
    }) {
        return None;
    }
    let s = |b: &serde_json::Value, k: &str| {
        b.get(k).and_then(|x| x.as_str()).unwrap_or("?").to_owned()
    };
    Some(
        budgets
            .iter()
            .map(|b| {
                let reset = match b.get("resets_at").and_then(|x| x.as_str()) {
                    Some(r) => format!("resets {r}"),
                    None => "lifetime".to_owned(),
                };
                format!(
                    "{} ({} {}, {}): {} left of {} ({} spent, {} in flight); {reset}",
                    s(b, "id"),
                    s(b, "scope"),
                    s(b, "subject"),
                    s(b, "window"),
                    s(b, "remaining_usd"),
                    s(b, "amount_usd"),
                    s(b, "spent_usd"),
                    s(b, "reserved_usd"),
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_report_lines() {
        let v = serde_json::json!({"budgets": [{"id": "d", "scope": "principal", "subject": "alice",
            "window": "daily", "remaining_usd": "$19.95", "amount_usd": "$20.00", "spent_usd": "$0.05",
            "reserved_usd": "$0.00", "resets_at": "2026-11-26T00:00:00Z"}]});
        assert_eq!(
            budget_lines(&v).as_deref(),
            Some(
                "d (principal alice, daily): $19.95 left of $20.00 ($0.05 spent, $0.00 in flight); resets 2026-11-26T00:00:00Z"
            )
        );
        assert_eq!(budget_lines(&serde_json::json!({"usage": {}})), None);
        assert_eq!(
            budget_lines(&serde_json::json!({"budgets": [{"id": "x", "remaining_usd": "1"}]})),
            None,
            "an unknown shape is shown as JSON"
        );
    }

    #[test]
    fn time_formatting() {
        assert_eq!(fmt_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(fmt_unix(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(fmt_unix(1_798_761_599), "2026-12-31T23:59:59Z");
        assert_eq!(fmt_duration(59), "59s");
        assert_eq!(fmt_duration(245), "4m 05s");
        assert_eq!(fmt_duration(3723), "1h 02m 03s");
    }
}
