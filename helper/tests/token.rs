//! Black-box tests of the token path: exact stdout, stderr and exit codes.

mod support;

use std::os::unix::fs::MetadataExt;
use support::{CREDENTIAL, FakeBroker, Reply, Sandbox, dead_url};

fn token_of(run: &support::Run) -> String {
    assert!(
        run.stdout.ends_with('\n') && run.stdout.matches('\n').count() == 1,
        "{run:?}"
    );
    run.stdout.trim_end().to_owned()
}

#[test]
fn happy_path_prints_exactly_the_token() {
    let broker = FakeBroker::start(Reply::Token { ttl_secs: 900 });
    let sb = Sandbox::new();
    let run = sb.run(&["--broker", &broker.url, "--ttl", "900"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stderr, "");
    let token = token_of(&run);
    assert_eq!(token.split('.').count(), 3);
    assert_eq!(run.stdout, format!("{token}\n"));
    assert_eq!(broker.mints(), 1);
    let form = &broker.forms()[0];
    assert_eq!(
        form["grant_type"],
        "urn:ietf:params:oauth:grant-type:token-exchange"
    );
    assert_eq!(form["subject_token"], CREDENTIAL);
    assert_eq!(
        form["subject_token_type"],
        "urn:tollgate:params:token-type:static-credential"
    );
    assert_eq!(form["audience"], "tollgate");
    assert_eq!(form["requested_ttl_secs"], "900");
}

#[test]
fn cache_hit_makes_no_network_call() {
    let mut broker = FakeBroker::start(Reply::Token { ttl_secs: 900 });
    let sb = Sandbox::new();
    let first = sb.run(&["--broker", &broker.url]);
    assert_eq!(first.code, 0, "{first:?}");
    let second = sb.run(&["--broker", &broker.url]);
    assert_eq!(second.code, 0, "{second:?}");
    assert_eq!(second.stdout, first.stdout);
    assert_eq!(broker.mints(), 1);
    // Same URL, nothing listening any more: still served from the cache, silently.
    broker.stop();
    let third = sb.run(&["--broker", &broker.url]);
    assert_eq!(
        (third.code, third.stdout.as_str(), third.stderr.as_str()),
        (0, first.stdout.as_str(), "")
    );
}

#[test]
fn env_and_config_file_configure_the_same_slot() {
    let broker = FakeBroker::start(Reply::Token { ttl_secs: 900 });
    let mut sb = Sandbox::new();
    sb.set("TOLLGATE_BROKER", &broker.url);
    let a = sb.run(&[]);
    assert_eq!(a.code, 0, "{a:?}");
    sb.unset("TOLLGATE_BROKER");
    let cfg = sb.home().join(".config/tollgate/config.toml");
    std::fs::create_dir_all(cfg.parent().expect("p")).expect("mkdir");
    std::fs::write(
        &cfg,
        format!("[profiles.default]\nbroker = \"{}/\"\n", broker.url),
    )
    .expect("write");
    let b = sb.run(&[]);
    assert_eq!((b.code, &b.stdout), (0, &a.stdout), "{b:?}");
    assert_eq!(broker.mints(), 1);
}

#[test]
fn refresh_margin_triggers_a_new_mint() {
    let broker = FakeBroker::start(Reply::Token { ttl_secs: 600 });
    let sb = Sandbox::new();
    let a = sb.run(&["--broker", &broker.url]);
    let b = sb.run(&["--broker", &broker.url]);
    assert_eq!(broker.mints(), 1);
    assert_eq!(a.stdout, b.stdout);
    // 600 s left is no longer enough with a 700 s margin.
    let c = sb.run(&["--broker", &broker.url, "--refresh-margin", "700"]);
    assert_eq!(c.code, 0, "{c:?}");
    assert_eq!(broker.mints(), 2);
    assert_ne!(c.stdout, a.stdout);
    assert!(c.stderr.contains("every run will mint"), "{c:?}");
    // The new token replaced the old one in the cache.
    let d = sb.run(&["--broker", &broker.url]);
    assert_eq!(d.stdout, c.stdout);
    assert_eq!(broker.mints(), 2);
}

#[test]
fn broker_refusal_is_66_with_its_reason() {
    let broker = FakeBroker::start(Reply::Status(
        400,
        r#"{"error":"invalid_grant","error_description":"unknown credential"}"#.into(),
    ));
    let sb = Sandbox::new();
    let run = sb.run(&["--broker", &broker.url]);
    assert_eq!(run.code, 66);
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr,
        "tollgate-token: broker refused the token exchange (HTTP 400): invalid_grant: unknown credential\n"
    );
    assert!(sb.cache_files().is_empty());
}

#[test]
fn a_broker_echoing_the_credential_is_redacted() {
    let broker = FakeBroker::start(Reply::Status(
        401,
        format!(r#"{{"error":"invalid_client","error_description":"bad secret {CREDENTIAL}"}}"#),
    ));
    let sb = Sandbox::new();
    // `Run::from` asserts that the credential is nowhere in the output.
    let run = sb.run(&["--broker", &broker.url]);
    assert_eq!(run.code, 66);
    assert!(
        run.stderr.contains("invalid_client: bad secret [redacted]"),
        "{run:?}"
    );
}

#[test]
fn unreachable_without_cache_is_69() {
    let sb = Sandbox::new();
    let url = dead_url();
    let run = sb.run(&["--broker", &url]);
    assert_eq!(run.code, 69, "{run:?}");
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr.starts_with(&format!(
            "tollgate-token: broker {url}/oauth/token is unavailable: cannot connect"
        )),
        "{run:?}"
    );
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
}

#[test]
fn server_errors_and_dropped_connections_are_69() {
    let broker = FakeBroker::start(Reply::Status(
        503,
        r#"{"error":"temporarily_unavailable"}"#.into(),
    ));
    broker.script([Reply::Close]);
    let sb = Sandbox::new();
    let closed = sb.run(&["--broker", &broker.url]);
    assert_eq!(closed.code, 69, "{closed:?}");
    let run = sb.run(&["--broker", &broker.url]);
    assert_eq!(run.code, 69);
    assert_eq!(
        run.stderr,
        format!(
            "tollgate-token: broker {}/oauth/token is unavailable: HTTP 503 (temporarily_unavailable)\n",
            broker.url
        )
    );
}

#[test]
fn slow_broker_hits_the_deadline() {
    let broker = FakeBroker::start(Reply::Token { ttl_secs: 900 });
    broker.set_delay_ms(20_000);
    let sb = Sandbox::new();
    let started = std::time::Instant::now();
    let run = sb.run(&["--broker", &broker.url, "--timeout-ms", "300"]);
    assert!(
        // Far below the broker's 20 s delay: the 300 ms deadline fired (generous for a loaded machine).
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(run.code, 69, "{run:?}");
    assert!(run.stderr.contains("timed out"), "{run:?}");
}

#[test]
fn unreachable_with_valid_cache_serves_and_warns() {
    let mut broker = FakeBroker::start(Reply::Token { ttl_secs: 200 });
    let sb = Sandbox::new();
    let first = sb.run(&["--broker", &broker.url]);
    assert_eq!(first.code, 0, "{first:?}");
    broker.stop();
    // 200 s left is inside the 300 s margin, so this run tries to mint and cannot.
    let run = sb.run(&["--broker", &broker.url]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, first.stdout);
    assert!(
        run.stderr.starts_with("tollgate-token: warning: broker "),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("serving the cached token, which expires in"),
        "{run:?}"
    );
    assert_eq!(run.stderr.lines().count(), 1);
}

#[test]
fn refused_with_stale_cache_is_still_a_refusal() {
    let broker = FakeBroker::start(Reply::Token { ttl_secs: 200 });
    let sb = Sandbox::new();
    assert_eq!(sb.run(&["--broker", &broker.url]).code, 0);
    broker.set_default(Reply::Status(
        400,
        r#"{"error":"invalid_grant","error_description":"revoked"}"#.into(),
    ));
    let run = sb.run(&["--broker", &broker.url]);
    assert_eq!((run.code, run.stdout.as_str()), (66, ""), "{run:?}");
}

#[test]
fn bad_config_is_64_naming_field_and_line() {
    let sb = Sandbox::new();
    let cfg = sb.home().join(".config/tollgate/config.toml");
    std::fs::create_dir_all(cfg.parent().expect("p")).expect("mkdir");
    std::fs::write(
        &cfg,
        "# mine\n[profiles.default]\nbroker = \"http://x\"\ntimeout = 3\n",
    )
    .expect("write");
    let run = sb.run(&[]);
    assert_eq!(run.code, 64);
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr.starts_with(&format!(
            "tollgate-token: config file {}, line 4, column 1: ",
            cfg.display()
        )),
        "{run:?}"
    );
    assert!(run.stderr.contains("unknown field `timeout`"), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1);
}

#[test]
fn usage_errors_are_64() {
    let sb = Sandbox::new();
    let run = sb.run(&["--no-such-flag"]);
    assert_eq!((run.code, run.stdout.as_str()), (64, ""));
    assert!(run.stderr.starts_with("tollgate-token: error:"), "{run:?}");
    let run = sb.run(&[]);
    assert_eq!(run.code, 64);
    assert!(run.stderr.contains("no broker configured"), "{run:?}");
    let run = sb.run(&["--broker", "http://127.0.0.1:1", "--identity", "kerberos"]);
    assert_eq!(run.code, 64);
    assert!(
        run.stderr.contains("unknown identity `kerberos`"),
        "{run:?}"
    );
}

#[test]
fn missing_credential_is_65() {
    let mut sb = Sandbox::new();
    sb.unset("TOLLGATE_CREDENTIAL");
    let run = sb.run(&["--broker", "http://127.0.0.1:1"]);
    assert_eq!((run.code, run.stdout.as_str()), (65, ""));
    assert!(
        run.stderr
            .starts_with("tollgate-token: static identity has no credential"),
        "{run:?}"
    );
    let run = sb.run(&[
        "--broker",
        "http://127.0.0.1:1",
        "--credential-file",
        "/nonexistent/cred",
    ]);
    assert_eq!(run.code, 65);
    assert!(run.stderr.contains("/nonexistent/cred"), "{run:?}");
}

#[test]
fn credential_file_works() {
    let broker = FakeBroker::start(Reply::Token { ttl_secs: 900 });
    let mut sb = Sandbox::new();
    sb.unset("TOLLGATE_CREDENTIAL");
    let path = sb.home().join("cred");
    std::fs::write(&path, format!("{CREDENTIAL}\n")).expect("write");
    let run = sb.run(&[
        "--broker",
        &broker.url,
        "--credential-file",
        path.to_str().expect("utf8"),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(broker.forms()[0]["subject_token"], CREDENTIAL);
}

#[test]
fn corrupted_cache_recovers() {
    let broker = FakeBroker::start(Reply::Token { ttl_secs: 900 });
    let sb = Sandbox::new();
    let first = sb.run(&["--broker", &broker.url]);
    let files = sb.cache_files();
    assert_eq!(files.len(), 1);
    std::fs::write(&files[0], "{\"version\": 1, \"access_tok").expect("corrupt");
    let run = sb.run(&["--broker", &broker.url]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_ne!(run.stdout, first.stdout);
    assert_eq!(broker.mints(), 2);
    assert!(
        run.stderr
            .starts_with("tollgate-token: warning: ignoring token cache:"),
        "{run:?}"
    );
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    // Overwritten with a good entry: the next run is a silent hit.
    let again = sb.run(&["--broker", &broker.url]);
    assert_eq!(
        (again.stdout.as_str(), again.stderr.as_str()),
        (run.stdout.as_str(), "")
    );
    assert_eq!(broker.mints(), 2);
}

#[test]
fn cache_file_and_dir_modes() {
    let broker = FakeBroker::start(Reply::Token { ttl_secs: 900 });
    let sb = Sandbox::new();
    assert_eq!(sb.run(&["--broker", &broker.url]).code, 0);
    assert_eq!(
        std::fs::metadata(sb.cache_dir()).expect("dir").mode() & 0o777,
        0o700
    );
    for entry in std::fs::read_dir(sb.cache_dir()).expect("ls") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert!(
            name.ends_with(".json") || name.ends_with(".lock"),
            "stray file {name}"
        );
        assert_eq!(
            std::fs::metadata(&path).expect("file").mode() & 0o777,
            0o600,
            "{name}"
        );
        // The file name is a digest, never the credential.
        assert!(!name.contains(CREDENTIAL));
        let content = std::fs::read_to_string(&path).expect("read");
        assert!(!content.contains(CREDENTIAL));
    }
}

#[test]
fn no_cache_always_mints_and_writes_nothing() {
    let broker = FakeBroker::start(Reply::Token { ttl_secs: 900 });
    let sb = Sandbox::new();
    let a = sb.run(&["--broker", &broker.url, "--no-cache"]);
    let b = sb.run(&["--broker", &broker.url, "--no-cache"]);
    assert_eq!((a.code, b.code), (0, 0));
    assert_ne!(a.stdout, b.stdout);
    assert_eq!(broker.mints(), 2);
    assert!(!sb.cache_dir().exists());
}

#[test]
fn profiles_and_audiences_get_separate_slots() {
    let broker = FakeBroker::start(Reply::Token { ttl_secs: 900 });
    let sb = Sandbox::new();
    let a = sb.run(&["--broker", &broker.url]);
    let b = sb.run(&["--broker", &broker.url, "--audience", "other"]);
    assert_eq!((a.code, b.code), (0, 0));
    assert_ne!(a.stdout, b.stdout);
    assert_eq!(broker.forms()[1]["audience"], "other");
    assert_eq!(sb.cache_files().len(), 2);
}

#[test]
fn concurrent_cold_runs_mint_once() {
    let broker = FakeBroker::start(Reply::Token { ttl_secs: 900 });
    // Widen the race: every waiter is blocked on the lock while the first one mints.
    broker.set_delay_ms(150);
    let sb = Sandbox::new();
    let children: Vec<_> = (0..24)
        .map(|_| {
            sb.command(&["--broker", &broker.url, "--timeout-ms", "20000"])
                .spawn()
                .expect("spawn")
        })
        .collect();
    let runs: Vec<support::Run> = children
        .into_iter()
        .map(|c| support::Run::from(c.wait_with_output().expect("wait")))
        .collect();
    for r in &runs {
        assert_eq!((r.code, r.stderr.as_str()), (0, ""), "{r:?}");
        assert_eq!(r.stdout, runs[0].stdout);
    }
    assert_eq!(broker.mints(), 1);
}

#[test]
fn help_documents_exit_codes_and_env() {
    let sb = Sandbox::new();
    let run = sb.run(&["--help"]);
    assert_eq!(run.code, 0);
    for needle in [
        "64",
        "65",
        "66",
        "69",
        "70",
        "TOLLGATE_BROKER",
        "TOLLGATE_CREDENTIAL",
        "status",
        "setup",
    ] {
        assert!(run.stdout.contains(needle), "help lacks {needle}");
    }
}
