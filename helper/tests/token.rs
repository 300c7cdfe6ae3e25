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
    // Without remembering the first failure, so that the second run reaches the broker.
    let closed = sb.run(&["--broker", &broker.url, "--failure-memory", "0"]);
    assert_eq!(closed.code, 69, "{closed:?}");
    let run = sb.run(&["--broker", &broker.url, "--failure-memory", "0"]);
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
    make_file(&path, &format!("{CREDENTIAL}\n"), 0o600);
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
    assert!(!run.stdout.contains("coming"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("Identity source: static, aws, vault, azure, azure-cli, oidc-file or chain"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("TOLLGATE_TOKEN_CONFIG"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("refresh"), "{}", run.stdout);
}

#[test]
fn a_broker_url_ending_in_v1_is_a_usage_error_saying_what_to_drop() {
    let broker = FakeBroker::start(Reply::Token { ttl_secs: 900 });
    let mut sb = Sandbox::new();
    let with_v1 = format!("{}/v1", broker.url);
    let run = sb.run(&["--broker", &with_v1]);
    assert_eq!((run.code, run.stdout.as_str()), (64, ""), "{run:?}");
    assert_eq!(
        run.stderr,
        format!(
            "tollgate-token: invalid broker URL {with_v1:?}: drop `/v1` and give the broker's base URL, {} \
             (only Codex's base_url ends in /v1; the helper adds /oauth/token itself)\n",
            broker.url
        )
    );
    sb.set("TOLLGATE_BROKER", &format!("{with_v1}/"));
    let run = sb.run(&[]);
    assert_eq!(run.code, 64, "{run:?}");
    assert!(run.stderr.contains("drop `/v1`"), "{run:?}");
    // `setup` refuses it too, rather than writing a base_url ending in /v1/v1.
    let run = sb.run(&["setup", "--dry-run"]);
    assert_eq!(run.code, 64, "{run:?}");
    assert_eq!(broker.mints(), 0, "nothing reached the broker");
}

#[test]
fn the_brokers_config_variable_does_not_break_the_helper() {
    let broker = FakeBroker::start(Reply::Token { ttl_secs: 900 });
    let mut sb = Sandbox::new();
    // Exported for the broker in the same shell: a broker config, which the helper used to parse (exit 64).
    let broker_cfg = sb.home().join("broker.toml");
    std::fs::write(
        &broker_cfg,
        "policy_file = \"policy.toml\"\n\n[server]\nlisten = \"127.0.0.1:8787\"\n",
    )
    .expect("write");
    sb.set("TOLLGATE_CONFIG", broker_cfg.to_str().expect("utf8"));
    let run = sb.run(&["--broker", &broker.url]);
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");
    assert_eq!(broker.mints(), 1);

    // The helper's own variable names its config file.
    let helper_cfg = sb.home().join("helper.toml");
    std::fs::write(
        &helper_cfg,
        format!("[profiles.work]\nbroker = \"{}\"\n", broker.url),
    )
    .expect("write");
    sb.set("TOLLGATE_TOKEN_CONFIG", helper_cfg.to_str().expect("utf8"));
    let run = sb.run(&["--profile", "work"]);
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");
}

/// Spawn the binary with stdout the write end of a pipe whose read end is already closed.
fn run_into_closed_pipe(sb: &Sandbox, args: &[&str]) -> support::Run {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = sb
        .command(args)
        .stdout(std::process::Stdio::from(writer))
        .output()
        .expect("spawn");
    support::Run::from(out)
}

#[test]
fn a_closed_stdout_is_a_quiet_success() {
    let broker = FakeBroker::start(Reply::Token { ttl_secs: 900 });
    let sb = Sandbox::new();
    let url = broker.url.as_str();
    // A mint, then a cache hit, then every command that writes to stdout.
    for args in [
        &["--broker", url][..],
        &["--broker", url],
        &["--broker", url, "status"],
        &["--broker", url, "status", "--show-token"],
        &["--broker", url, "refresh", "--print"],
        &["completions", "bash"],
        &["--help"],
        &["--broker", url, "setup", "--dry-run"],
    ] {
        let run = run_into_closed_pipe(&sb, args);
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
        if args.contains(&"refresh") {
            // Its summary goes to stderr, which is still open.
            assert!(
                run.stderr
                    .starts_with("tollgate-token: minted a new token for "),
                "{run:?}"
            );
            assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
        } else {
            assert_eq!(run.stderr, "", "{args:?}: {run:?}");
        }
    }
    assert_eq!(broker.mints(), 2, "the first run and refresh");
}

fn make_file(path: &std::path::Path, content: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn a_credential_file_others_can_read_is_refused_like_ssh() {
    let broker = FakeBroker::start(Reply::Token { ttl_secs: 900 });
    let mut sb = Sandbox::new();
    sb.unset("TOLLGATE_CREDENTIAL");
    let path = sb.home().join("cred");
    make_file(&path, &format!("{CREDENTIAL}\n"), 0o644);
    let p = path.to_str().expect("utf8");
    let run = sb.run(&["--broker", &broker.url, "--credential-file", p]);
    assert_eq!((run.code, run.stdout.as_str()), (64, ""), "{run:?}");
    assert_eq!(
        run.stderr,
        format!(
            "tollgate-token: static identity: credential file {p} is accessible by group or others (mode 0644); \
             run `chmod 600 {p}` (a credential others can read is refused, as ssh refuses such a key)\n"
        )
    );
    assert_eq!(broker.mints(), 0);
    make_file(&path, &format!("{CREDENTIAL}\n"), 0o600);
    let run = sb.run(&["--broker", &broker.url, "--credential-file", p]);
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");
}

/// The README's trial-credential line, run as printed (with a common umask of 022) in the sandbox's HOME.
#[test]
fn the_readmes_credential_command_makes_a_private_file() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let line = readme
        .lines()
        .find(|l| l.contains("quickstart-dev-credential >"))
        .expect("the README's credential line");
    let command = line.split("  #").next().expect("command").trim();
    let sb = Sandbox::new();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("umask 022; {command}"))
        .env_clear()
        .env("HOME", sb.home())
        .env("PATH", "/usr/bin:/bin")
        .status()
        .expect("sh");
    assert!(status.success(), "{command}");
    let cred = sb.home().join(".config/tollgate/credential");
    assert_eq!(
        std::fs::metadata(&cred).expect("credential").mode() & 0o777,
        0o600,
        "{command}"
    );
    assert_eq!(
        std::fs::read_to_string(&cred).expect("read"),
        "quickstart-dev-credential"
    );
    // And the helper accepts it (the exchange then fails: nothing listens at this broker).
    let run = sb.run(&[
        "--broker",
        &dead_url(),
        "--credential-file",
        cred.to_str().expect("utf8"),
    ]);
    assert_eq!(run.code, 69, "{run:?}");
}

#[test]
fn a_cache_file_others_can_read_is_not_served_and_is_recreated_private() {
    let mut broker = FakeBroker::start(Reply::Token { ttl_secs: 900 });
    let sb = Sandbox::new();
    let first = sb.run(&["--broker", &broker.url]);
    assert_eq!(first.code, 0, "{first:?}");
    let file = sb.cache_files().pop().expect("cache file");
    make_file(&file, &std::fs::read_to_string(&file).expect("read"), 0o644);

    let run = sb.run(&["--broker", &broker.url]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_ne!(run.stdout, first.stdout, "a new token, not the exposed one");
    assert_eq!(broker.mints(), 2);
    assert_eq!(
        run.stderr,
        format!(
            "tollgate-token: warning: not using the token cache: {} is accessible by group or others \
             (mode 0644), but tollgate-token writes it 0600 and yours only, so it was changed since: minting \
             a new token, which re-creates it 0600\n",
            file.display()
        )
    );
    assert_eq!(std::fs::metadata(&file).expect("f").mode() & 0o777, 0o600);
    let again = sb.run(&["--broker", &broker.url]);
    assert_eq!(
        (again.stdout.as_str(), again.stderr.as_str()),
        (run.stdout.as_str(), "")
    );

    // Exposed again and the broker is gone: not served even as a fallback, and taken off the disk.
    make_file(&file, &std::fs::read_to_string(&file).expect("read"), 0o640);
    broker.stop();
    let run = sb.run(&["--broker", &broker.url]);
    assert_eq!((run.code, run.stdout.as_str()), (69, ""), "{run:?}");
    assert!(!file.exists(), "the exposed token was removed");
}

#[test]
fn a_hung_broker_is_waited_on_once_then_reruns_fail_at_once() {
    let broker = FakeBroker::start(Reply::Token { ttl_secs: 900 });
    broker.set_delay_ms(30_000);
    let sb = Sandbox::new();
    // A long memory, so a slow machine cannot let it lapse between the runs.
    let args = [
        "--broker",
        &broker.url,
        // Long enough for the request to reach the broker on a loaded machine (it must count one mint).
        "--timeout-ms",
        "2000",
        "--failure-memory",
        "600",
    ];
    let first = sb.run(&args);
    assert_eq!((first.code, first.stdout.as_str()), (69, ""), "{first:?}");
    assert!(first.stderr.contains("timed out"), "{first:?}");
    assert_eq!(broker.mints(), 1);
    let first_msg = first.stderr.trim_end();

    for _ in 0..3 {
        let started = std::time::Instant::now();
        let run = sb.run(&args);
        assert_eq!((run.code, run.stdout.as_str()), (69, ""), "{run:?}");
        assert!(run.stderr.starts_with(first_msg), "{run:?}\nvs {first_msg}");
        assert!(run.stderr.contains("s ago; the broker is tried again 600s after a failure, or now by `tollgate-token refresh`)"), "{run:?}");
        assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
        // No wait on the broker (its 30 s delay) and not even on our own 2 s deadline.
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }
    assert_eq!(broker.mints(), 1, "the reruns did not reach the broker");
    let memo: Vec<_> = std::fs::read_dir(sb.cache_dir())
        .expect("ls")
        .map(|e| e.expect("e").path())
        .filter(|p| p.extension().is_some_and(|e| e == "fail"))
        .collect();
    assert_eq!(memo.len(), 1, "{memo:?}");
    assert_eq!(
        std::fs::metadata(&memo[0]).expect("m").mode() & 0o777,
        0o600
    );

    // `refresh` tries the broker regardless; once it answers, the memory is cleared.
    broker.set_delay_ms(0);
    let run = sb.run(&["refresh", "--broker", &broker.url]);
    assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{run:?}");
    assert_eq!(broker.mints(), 2);
    assert!(!memo[0].exists());
    let run = sb.run(&args);
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");
    assert_eq!(broker.mints(), 2, "served from the cache refresh filled");
}
