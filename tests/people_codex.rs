//! Codex signs in by itself (`gateway_oauth`) and keeps working, end to end with the real Codex in every
//! pinned version (0.171.0 and 0.169.0 both speak `gateway_oauth`), the broker in process with a fake
//! clock, the company IdP (npm `oidc-provider`) and a person at headless Chromium
//! (`tests/support/people.rs`):
//!
//! - the access token expires (the broker's clock moves past its life) and Codex refreshes it silently
//!   through the token endpoint after the broker's rejection: the refresh token rotates, no browser step,
//!   the turn completes; the next expiry uses the rotated refresh token;
//! - an administrator revokes the person's sign-ins with the real `tollgate-broker admin` CLI: the next
//!   turn asks the person to sign in again (the authorization URL, once), and goes through after it;
//! - a stolen refresh token used before Codex uses it makes Codex's own use a replay: the family is
//!   revoked (the thief's new token too), and Codex asks for a new sign-in;
//! - the device flow: Codex offers it through its app server (`account/gatewayOAuth/login` with
//!   `deviceAuth`), not in `codex exec`; driven end to end, the person approves on the broker's device page.

mod support;

use serde_json::{Value, json};
use support::people::{CODEX_AUTHORIZE, Laptop, Options, PeopleBroker};

/// Past an access token's life (600 s, the policy rule's cap) and the verifier's leeway.
const PAST_EXPIRY_SECS: u64 = 600 + 120;

fn assert_authorize_url(url: &str, broker: &str, what: &str) {
    assert!(
        url.starts_with(&format!(
            "{broker}/oauth/authorize?response_type=code&client_id=codex&redirect_uri=http%3A%2F%2F127.0.0.1%3A"
        )) && url.contains("&code_challenge_method=S256&state=")
            && url.contains("&scope=models+offline_access"),
        "{what}: {url}"
    );
}

/// The first sign-in: Codex prints the authorization URL once, the person signs in, the turn completes.
async fn first_sign_in(version: &str, broker: &PeopleBroker, laptop: &Laptop) {
    let run = laptop.codex_exec(version, broker, Some("alice")).await;
    run.assert_turn_completed(&format!("{version}: first turn"));
    assert_eq!(run.auth_urls.len(), 1, "{version}: {}", run.stderr);
    assert_authorize_url(&run.auth_urls[0], &broker.url, version);
    let codes = broker.traffic.grants("authorization_code");
    assert_eq!(codes.len(), 1, "{version}: {codes:?}");
    assert_eq!(codes[0].status, 200, "{version}: {codes:?}");
    assert_eq!(codes[0].client_id.as_deref(), Some("codex"));
}

/// The refresh token Codex holds now: the last one the token endpoint issued.
fn codex_refresh_token(broker: &PeopleBroker) -> String {
    broker
        .traffic
        .all()
        .iter()
        .rev()
        .find_map(|s| s.refresh_token_issued.clone())
        .expect("a refresh token was issued")
}

/// The token endpoint's refresh grants since the last `clear`: each answered 200 and presented the
/// token the one before issued (starting with `held`), each issued a new one. Returns the last.
fn assert_rotating_refreshes(broker: &PeopleBroker, held: &str, what: &str) -> String {
    let refreshes = broker.traffic.grants("refresh_token");
    assert!(!refreshes.is_empty(), "{what}: Codex refreshed");
    let mut held = held.to_string();
    let mut seen = std::collections::BTreeSet::from([held.clone()]);
    for r in &refreshes {
        assert_eq!(
            (r.status, r.client_id.as_deref()),
            (200, Some("codex")),
            "{what}: {r:?}"
        );
        assert_eq!(
            r.refresh_token_sent.as_deref(),
            Some(held.as_str()),
            "{what}: Codex presents the refresh token it was given last"
        );
        let next = r.refresh_token_issued.clone().expect("a new refresh token");
        assert!(seen.insert(next.clone()), "{what}: rotated, never reissued");
        held = next;
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_refreshes_silently_and_rotates_its_refresh_token() {
    for version in support::codex_versions() {
        let broker = PeopleBroker::start(Options::default()).await;
        let laptop = Laptop::new(&broker);
        laptop.setup_codex().await;
        // Codex refreshes 30 s before `expires_in` runs out, on its own clock: told 30 s, every later use
        // is due (the broker's token itself lives 600 s).
        broker.traffic.set_expires_in(30);
        first_sign_in(&version, &broker, &laptop).await;
        let mut held = codex_refresh_token(&broker);

        for round in 1..=2 {
            let what = format!("{version}, turn {}", round + 1);
            broker.traffic.clear();
            let run = laptop.codex_exec(&version, &broker, None).await;
            run.assert_turn_completed(&what);
            assert!(
                run.auth_urls.is_empty() && !run.stderr.contains(CODEX_AUTHORIZE),
                "{what}: no sign-in asked: {}",
                run.stderr
            );
            assert_eq!(
                broker.traffic.count("GET", "/oauth/authorize"),
                0,
                "{what}: no browser step"
            );
            assert!(
                broker.traffic.grants("authorization_code").is_empty(),
                "{what}"
            );
            held = assert_rotating_refreshes(&broker, &held, &what);
            // Refreshed before the call: no model call was refused.
            let turns = broker.traffic.turns();
            assert!(
                !turns.is_empty() && turns.iter().all(|s| *s == 200),
                "{what}: {turns:?}"
            );
        }
        // One sign-in, live; the audit trail has it and its refreshes.
        let families = broker.sign_ins("alice@example.com", true).await;
        assert_eq!(families.len(), 1, "{version}: {families:?}");
        assert_eq!(families[0]["client_id"], "codex");
        assert!(families[0]["revoked_at"].is_null(), "{families:?}");
        let audit = broker.audit_text().await;
        let grants: Vec<String> = audit
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["detail"]["oauth"]["grant"].as_str().map(str::to_string))
            .collect();
        assert_eq!(
            grants.first().map(String::as_str),
            Some("sign-in"),
            "{version}: {grants:?}"
        );
        assert!(
            grants.len() >= 3 && grants[1..].iter().all(|g| g == "refresh"),
            "{version}: {grants:?}"
        );
    }
}
