//! Fault suite, helper side, against a real broker: a corrupted cache file, 50 helpers at once on a
//! cold cache (one mint), clock skew between the helper and the broker, and a broker that hangs.
//!
//! The helper runs as the real binary (built by a workspace `cargo test`; a lone `cargo test --test`
//! needs `cargo build -p tollgate-token` first), except for the skew test, which drives the helper's
//! library entry point with an injected clock so both sides' time can move without sleeping.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod faults;

use faults::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tollgate_broker::clock::{FakeClock, SystemClock};
use tollgate_testkit::mock::{self, MockConfig};

/// Counts successful mints by wrapping the broker's router.
struct Counted {
    broker: Broker,
    mints: Arc<AtomicUsize>,
}

async fn counted_broker(
    dir: &Path,
    upstream: String,
    clock: tollgate_broker::clock::SharedClock,
) -> Counted {
    let cfg = write_config(
        dir,
        &[ProviderSpec {
            name: "only",
            base_url: upstream,
            timeout_ms: 5_000,
        }],
    );
    let mints = Arc::new(AtomicUsize::new(0));
    let m = mints.clone();
    let broker = Broker::start_with(&load_config(&cfg), clock, move |r| {
        r.layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let m = m.clone();
                async move {
                    let is_mint = req.uri().path() == "/oauth/token";
                    let resp = next.run(req).await;
                    if is_mint && resp.status() == 200 {
                        m.fetch_add(1, Ordering::SeqCst);
                    }
                    resp
                }
            },
        ))
    })
    .await;
    Counted { broker, mints }
}

fn helper_bin() -> PathBuf {
    let p = tollgate_testkit::procs::target_bin("tollgate-token");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p tollgate-token` (a workspace `cargo test` builds it)",
        p.display()
    );
    p
}

fn helper_cmd(broker: &str, home: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(helper_bin());
    c.env_clear()
        .env("HOME", home)
        .env("TOLLGATE_BROKER", broker)
        .env("TOLLGATE_CREDENTIAL", CREDENTIAL)
        .env("TOLLGATE_CACHE_DIR", home.join("cache"))
        .env("TOLLGATE_RERUN_WINDOW_SECS", "0")
        .stdin(std::process::Stdio::null());
    c
}

async fn run_helper(broker: &str, home: &Path) -> (i32, String, String) {
    let out = helper_cmd(broker, home).output().await.expect("run helper");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cache_files(home: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(home.join("cache"))
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn corrupted_cache_file_is_replaced_by_a_fresh_mint() {
    let up = mock::spawn(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let b = counted_broker(dir.path(), up.base_url(), Arc::new(SystemClock)).await;
    let home = tempfile::tempdir().unwrap();

    let (code, first, _) = run_helper(&b.broker.base(), home.path()).await;
    assert_eq!(code, 0);
    assert_eq!(b.mints.load(Ordering::SeqCst), 1);
    let files = cache_files(home.path());
    assert_eq!(files.len(), 1, "{files:?}");

    for garbage in [
        &b"\x00\xff{not json"[..],
        b"",
        b"{\"version\":1}",
        b"{\"version\":99,\"x\":1}",
    ] {
        std::fs::write(&files[0], garbage).unwrap();
        let (code, out, err) = run_helper(&b.broker.base(), home.path()).await;
        assert_eq!(code, 0, "stderr: {err}");
        let token = out.strip_suffix('\n').expect("one line");
        assert!(!token.is_empty() && !token.contains('\n'));
        assert_ne!(
            token,
            first.trim_end(),
            "a fresh token replaces the unreadable cache"
        );
        // The minted token works on the proxy.
        let (status, _, body) = responses(&b.broker.base(), token, false).await;
        assert_eq!(status, 200, "{body}");
        // And the cache is whole again: the next run is served from it without a mint.
        let before = b.mints.load(Ordering::SeqCst);
        let (code, again, _) = run_helper(&b.broker.base(), home.path()).await;
        assert_eq!(code, 0);
        assert_eq!(again, out);
        assert_eq!(b.mints.load(Ordering::SeqCst), before);
    }
}

#[tokio::test]
async fn fifty_helpers_on_a_cold_cache_mint_once() {
    let up = mock::spawn(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let b = counted_broker(dir.path(), up.base_url(), Arc::new(SystemClock)).await;
    let home = tempfile::tempdir().unwrap();

    let mut children = Vec::new();
    for _ in 0..50 {
        children.push(
            helper_cmd(&b.broker.base(), home.path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn helper"),
        );
    }
    let mut tokens = std::collections::BTreeSet::new();
    for c in children {
        let out = c.wait_with_output().await.expect("helper");
        assert_eq!(
            out.status.code(),
            Some(0),
            "stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokens.insert(String::from_utf8(out.stdout).expect("utf8"));
    }
    assert_eq!(b.mints.load(Ordering::SeqCst), 1, "exactly one mint");
    assert_eq!(tokens.len(), 1, "everyone got the same token");
    let token = tokens.into_iter().next().unwrap();
    let (status, _, _) = responses(&b.broker.base(), token.trim_end(), false).await;
    assert_eq!(status, 200);
}

/// Run the helper library in-process with its own clock at `helper_now`.
async fn helper_at(broker: String, cache: PathBuf, helper_now: u64) -> (u8, String, String) {
    helper_at_with(broker, cache, helper_now, &[]).await
}

/// [`helper_at`] with extra environment variables.
async fn helper_at_with(
    broker: String,
    cache: PathBuf,
    helper_now: u64,
    extra: &[(&'static str, &'static str)],
) -> (u8, String, String) {
    let extra = extra.to_vec();
    tokio::task::spawn_blocking(move || {
        let cache = cache.display().to_string();
        let mut vars = vec![
            ("HOME", "/nonexistent-tollgate-home"),
            ("TOLLGATE_BROKER", broker.as_str()),
            ("TOLLGATE_CREDENTIAL", CREDENTIAL),
            ("TOLLGATE_CACHE_DIR", cache.as_str()),
            ("TOLLGATE_TTL_SECS", "600"),
            ("TOLLGATE_RERUN_WINDOW_SECS", "0"),
        ];
        vars.extend(extra);
        let env = tollgate_token::sys::MapEnv::new(vars);
        let clock = tollgate_token::sys::FixedClock(helper_now);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let exit =
            tollgate_token::run_with(["tollgate-token".into()], &env, &clock, &mut out, &mut err);
        (
            exit as u8,
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        )
    })
    .await
    .expect("helper task")
}

/// Skew of `skew_secs` (broker minus helper). Tokens live 600 s; the helper refreshes with 300 s left.
async fn skew_case(skew_secs: i64) {
    const T0: u64 = 1_800_000_000;
    let broker_t0 = T0.checked_add_signed(skew_secs).unwrap();
    let clock = FakeClock::new(broker_t0);
    let up = mock::spawn(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let b = counted_broker(dir.path(), up.base_url(), Arc::new(clock.clone())).await;
    let base = b.broker.base();
    let cache = dir.path().join("cache");

    // t = 0: mint.
    let (code, t1, err) = helper_at(base.clone(), cache.clone(), T0).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(b.mints.load(Ordering::SeqCst), 1);
    let (status, _, _) = responses(&base, t1.trim_end(), false).await;
    assert_eq!(status, 200, "skew {skew_secs}: a fresh token must work");

    // t = 100 s: served from the cache (no mint), still accepted.
    clock.advance(100);
    let (code, t2, err) = helper_at(base.clone(), cache.clone(), T0 + 100).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(t2, t1, "skew {skew_secs}: the cached token is reused");
    assert_eq!(
        b.mints.load(Ordering::SeqCst),
        1,
        "skew {skew_secs}: no mint at t=100"
    );
    let (status, _, _) = responses(&base, t2.trim_end(), false).await;
    assert_eq!(status, 200);

    // t = 700 s: the broker has expired the first token; the helper must not hand it out again.
    clock.advance(600);
    let (code, t3, err) = helper_at(base.clone(), cache.clone(), T0 + 700).await;
    assert_eq!(code, 0, "{err}");
    assert_ne!(
        t3, t1,
        "skew {skew_secs}: an expired token was served from the cache"
    );
    let (status, _, body) = responses(&base, t3.trim_end(), false).await;
    assert_eq!(status, 200, "skew {skew_secs}: {body}");
    assert_eq!(b.mints.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn clock_skew_between_helper_and_broker() {
    // Broker two hours ahead, two hours behind, and a small skew within the backdating window.
    for skew in [7_200, -7_200, 20, -20] {
        skew_case(skew).await;
    }
}

/// A broker whose token endpoint hangs while `hang` is set. `arrived` counts the exchanges that reached it.
struct Hanging {
    broker: Broker,
    hang: Arc<AtomicBool>,
    arrived: Arc<AtomicUsize>,
}

async fn hanging_broker(
    dir: &Path,
    upstream: String,
    clock: tollgate_broker::clock::SharedClock,
) -> Hanging {
    let cfg = write_config(
        dir,
        &[ProviderSpec {
            name: "only",
            base_url: upstream,
            timeout_ms: 5_000,
        }],
    );
    let hang = Arc::new(AtomicBool::new(false));
    let arrived = Arc::new(AtomicUsize::new(0));
    let (h, a) = (hang.clone(), arrived.clone());
    let broker = Broker::start_with(&load_config(&cfg), clock, move |r| {
        r.layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let (h, a) = (h.clone(), a.clone());
                async move {
                    if req.uri().path() == "/oauth/token" {
                        a.fetch_add(1, Ordering::SeqCst);
                        if h.load(Ordering::SeqCst) {
                            std::future::pending::<()>().await;
                        }
                    }
                    next.run(req).await
                }
            },
        ))
    })
    .await;
    Hanging {
        broker,
        hang,
        arrived,
    }
}

/// Under a hung broker each Codex retry used to rerun the helper into the full deadline (about 40 s per
/// turn). Now one run waits it out, the failure is remembered for 10 s (per broker and identity, in the
/// cache directory), reruns within that fail at once with the same message, a still-valid cached token is
/// served at once meanwhile, and after 10 s the broker is tried again. Every step moves a fake clock.
#[tokio::test]
async fn a_hung_broker_costs_one_deadline_then_reruns_fail_at_once() {
    const T0: u64 = 1_800_000_000;
    const DEADLINE: &[(&str, &str)] = &[("TOLLGATE_TIMEOUT_MS", "1000")];
    let clock = FakeClock::new(T0);
    let up = mock::spawn(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let b = hanging_broker(dir.path(), up.base_url(), Arc::new(clock.clone())).await;
    let base = b.broker.base();
    let cache = dir.path().join("cache");
    let arrived = || b.arrived.load(Ordering::SeqCst);
    let at = |t: u64| {
        clock.set(T0 + t);
        helper_at_with(base.clone(), cache.clone(), T0 + t, DEADLINE)
    };

    // t = 0: a token, valid for 600 s.
    let (code, token, err) = at(0).await;
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(arrived(), 1);

    b.hang.store(true, Ordering::SeqCst);
    // t = 400: 200 s left, inside the 300 s margin: the run tries to mint, waits out its deadline, and
    // serves the cached token with a warning.
    let started = std::time::Instant::now();
    let (code, out, err) = at(400).await;
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
    assert_eq!((code, out.as_str()), (0, token.as_str()), "{err}");
    assert!(err.contains("timed out"), "{err}");
    assert_eq!(arrived(), 2);
    // t = 401: the same token at once, without asking the broker.
    let started = std::time::Instant::now();
    let (code, out, err) = at(401).await;
    assert!(started.elapsed() < std::time::Duration::from_millis(900));
    assert_eq!((code, out.as_str()), (0, token.as_str()), "{err}");
    assert!(
        err.contains("failed 1s ago") && err.contains("serving the cached token"),
        "{err}"
    );
    assert_eq!(arrived(), 2);

    // t = 700: the token has expired. One run waits and fails…
    let (code, out, first) = at(700).await;
    assert_eq!((code, out.as_str()), (69, ""), "{first}");
    assert!(first.contains("timed out"), "{first}");
    assert_eq!(arrived(), 3);
    // …the reruns of the next 10 s fail at once with the same message…
    for t in [700, 703, 709] {
        let started = std::time::Instant::now();
        let (code, out, err) = at(t).await;
        assert!(started.elapsed() < std::time::Duration::from_millis(900));
        assert_eq!((code, out.as_str()), (69, ""));
        assert!(err.starts_with(first.trim_end()), "{err}\nvs {first}");
        assert!(err.contains(&format!("failed {}s ago", t - 700)), "{err}");
        assert_eq!(arrived(), 3, "t = {t}");
    }
    // …and then the broker is tried again.
    let (code, _, _) = at(710).await;
    assert_eq!(code, 69);
    assert_eq!(arrived(), 4);

    // The broker recovers: within the memory the helper still fails fast; after it, a mint that works.
    b.hang.store(false, Ordering::SeqCst);
    let (code, _, _) = at(715).await;
    assert_eq!(code, 69);
    assert_eq!(arrived(), 4);
    let (code, fresh, err) = at(720).await;
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(arrived(), 5);
    let (status, _, body) = responses(&base, fresh.trim_end(), false).await;
    assert_eq!(status, 200, "{body}");
}
