//! Black-box tests of `setup`, `status` and `completions`.

mod support;

use support::{FakeBroker, Reply, Sandbox};

const HAND_WRITTEN: &str = r#"# My Codex config — hand written, keep every byte
model = "o3"   # keep me
approval_policy = "on-request"

[mcp_servers.docs]
command = "docs-mcp"
args = ["--port", "0"]   # tools

# Other providers
[model_providers.ollama]
name = "Ollama"
base_url = "http://localhost:11434/v1"  # local

[model_providers.azure]
name = "Azure"
base_url = "https://example.openai.azure.com/openai"
env_key = "AZURE_OPENAI_API_KEY"
query_params = { api-version = "2025-04-01-preview" }

# profiles below
[profiles.fast]
model = "gpt-5-mini"  # trailing

[profiles.fast.features]
x = true
"#;

fn write_codex_config(sb: &Sandbox, content: &str) -> std::path::PathBuf {
    let path = sb.home().join(".codex/config.toml");
    std::fs::create_dir_all(path.parent().expect("p")).expect("mkdir");
    std::fs::write(&path, content).expect("write");
    path
}

#[test]
fn setup_changes_nothing_else_and_is_idempotent() {
    let sb = Sandbox::new();
    let path = write_codex_config(&sb, HAND_WRITTEN);
    let run = sb.run(&["setup", "--broker", "https://tollgate.corp.example/"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stderr, "");
    let after = std::fs::read_to_string(&path).expect("read");

    // The only change is one inserted block; everything else is byte-for-byte the same.
    let exe = std::fs::canonicalize(support::BIN).expect("exe");
    let block = format!(
        "[model_providers.tollgate]\nname = \"Tollgate\"\nbase_url = \"https://tollgate.corp.example/v1\"\n\
         wire_api = \"responses\"\n\n[model_providers.tollgate.auth]\ncommand = \"{}\"\n\
         args = [\"--broker\", \"https://tollgate.corp.example\"]\ntimeout_ms = 5000\nrefresh_interval_ms = 240000\n\n",
        exe.display()
    );
    assert!(after.contains(&block), "block not found in:\n{after}");
    assert_eq!(after.replacen(&block, "", 1), HAND_WRITTEN);

    // Codex would parse it; the provider is complete.
    let doc: toml::Table = toml::from_str(&after).expect("valid toml");
    assert_eq!(
        doc["model_providers"]["tollgate"]["auth"]["timeout_ms"].as_integer(),
        Some(5000)
    );
    assert!(
        doc.get("model_provider").is_none(),
        "--set-default was not given"
    );

    let again = sb.run(&["setup", "--broker", "https://tollgate.corp.example/"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stdout.contains("already up to date"), "{again:?}");
    assert_eq!(std::fs::read_to_string(&path).expect("read"), after);
}

#[test]
fn setup_dry_run_writes_nothing() {
    let sb = Sandbox::new();
    let path = write_codex_config(&sb, HAND_WRITTEN);
    let run = sb.run(&[
        "setup",
        "--broker",
        "https://b.example",
        "--dry-run",
        "--set-default",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(std::fs::read_to_string(&path).expect("read"), HAND_WRITTEN);
    assert!(
        run.stdout.contains("+model_provider = \"tollgate\"\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("+[model_providers.tollgate.auth]\n"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.ends_with("(dry run: nothing written)\n"));
    // Only additions.
    assert!(
        !run.stdout
            .lines()
            .any(|l| l.starts_with('-') && !l.starts_with("---")),
        "{}",
        run.stdout
    );

    // No config at all: dry run does not create one either.
    let empty = Sandbox::new();
    let run = empty.run(&["setup", "--broker", "https://b.example", "--dry-run"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!empty.home().join(".codex").exists());
}

#[test]
fn setup_updates_an_existing_block_in_place() {
    let sb = Sandbox::new();
    let src = "[model_providers.tollgate]\n# ours\nname = \"Corp\"\nbase_url = \"https://old/v1\"\nenv_key = \"K\"\n\
               request_max_retries = 2\n\n[model_providers.tollgate.auth]\ncommand = \"old\"\ncwd = \"/tmp\"\n";
    let path = write_codex_config(&sb, src);
    let run = sb.run(&[
        "setup",
        "--broker",
        "https://new.example",
        "--set-default",
        "--model",
        "gpt-5.5",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("removed `env_key`"), "{run:?}");
    let doc: toml::Table =
        toml::from_str(&std::fs::read_to_string(&path).expect("read")).expect("toml");
    let p = &doc["model_providers"]["tollgate"];
    assert_eq!(p["name"].as_str(), Some("Corp"), "user's name kept");
    assert_eq!(p["base_url"].as_str(), Some("https://new.example/v1"));
    assert_eq!(p["request_max_retries"].as_integer(), Some(2));
    assert!(p.get("env_key").is_none());
    assert_eq!(p["auth"]["cwd"].as_str(), Some("/tmp"));
    assert_eq!(doc["model_provider"].as_str(), Some("tollgate"));
    assert_eq!(doc["model"].as_str(), Some("gpt-5.5"));
}

#[test]
fn setup_pins_profile_and_broker_only_when_needed() {
    let sb = Sandbox::new();
    let cfg = sb.home().join(".config/tollgate/config.toml");
    std::fs::create_dir_all(cfg.parent().expect("p")).expect("mkdir");
    std::fs::write(&cfg, "[profiles.work]\nbroker = \"https://work.example\"\n").expect("write");
    let run = sb.run(&["setup", "--profile", "work", "--provider-id", "corp"]);
    assert_eq!(run.code, 0, "{run:?}");
    let doc: toml::Table = toml::from_str(
        &std::fs::read_to_string(sb.home().join(".codex/config.toml")).expect("read"),
    )
    .expect("toml");
    let auth = &doc["model_providers"]["corp"]["auth"];
    assert_eq!(
        auth["args"],
        toml::Value::Array(vec!["--profile".into(), "work".into()])
    );
    assert_eq!(
        doc["model_providers"]["corp"]["base_url"].as_str(),
        Some("https://work.example/v1")
    );
}

#[test]
fn setup_pins_a_credential_file_as_an_absolute_path() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    let cred = sb.home().join("cred");
    std::fs::write(&cred, "secret-credential").expect("write");
    // A credential others can read is refused here already (every run Codex makes would refuse it).
    std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let run = sb.run(&[
        "--credential-file",
        cred.to_str().expect("utf8"),
        "setup",
        "--broker",
        "https://b.example",
    ]);
    assert_eq!(run.code, 64, "{run:?}");
    assert!(run.stderr.contains("chmod 600"), "{run:?}");
    assert!(!sb.home().join(".codex/config.toml").exists());
    std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let run = sb.run(&[
        "--credential-file",
        cred.to_str().expect("utf8"),
        "setup",
        "--broker",
        "https://b.example",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let text = std::fs::read_to_string(sb.home().join(".codex/config.toml")).expect("read");
    assert!(
        !text.contains("secret-credential"),
        "the credential itself never goes into Codex's config"
    );
    let doc: toml::Table = toml::from_str(&text).expect("toml");
    let args = doc["model_providers"]["tollgate"]["auth"]["args"]
        .as_array()
        .expect("args")
        .clone();
    let pos = args
        .iter()
        .position(|a| a.as_str() == Some("--credential-file"))
        .expect("pinned");
    assert_eq!(args[pos + 1].as_str(), cred.to_str());
}

#[test]
fn setup_refuses_broken_codex_config() {
    let sb = Sandbox::new();
    let path = write_codex_config(&sb, "model = \n[x]\n");
    let run = sb.run(&["setup", "--broker", "https://b.example"]);
    assert_eq!(run.code, 64, "{run:?}");
    assert!(run.stderr.contains("line 1"), "{run:?}");
    assert_eq!(
        std::fs::read_to_string(&path).expect("read"),
        "model = \n[x]\n"
    );
}

#[test]
fn status_shows_grant_but_not_the_token() {
    let broker = FakeBroker::start(Reply::Token { ttl_secs: 900 });
    let sb = Sandbox::new();
    let none = sb.run(&["--broker", &broker.url, "status"]);
    assert_eq!(none.code, 0, "{none:?}");
    assert!(none.stdout.contains("none cached"), "{none:?}");

    let minted = sb.run(&["--broker", &broker.url]);
    let token = minted.stdout.trim_end();
    let run = sb.run(&["status", "--broker", &broker.url]);
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");
    for needle in [
        "profile:    default",
        "identity:   static",
        "subject:    static:alice",
        "principal:  alice",
        "team:       platform",
        "models:     gpt-5*, demo",
        "valid for 1",
    ] {
        assert!(
            run.stdout.contains(needle),
            "missing {needle:?} in\n{}",
            run.stdout
        );
    }
    assert!(!run.stdout.contains(token));
    // Reading the status never mints.
    assert_eq!(broker.mints(), 1);

    let shown = sb.run(&["status", "--broker", &broker.url, "--show-token"]);
    assert!(
        shown.stdout.contains(&format!("token:      {token}\n")),
        "{shown:?}"
    );
}

#[test]
fn status_remote_prints_usage_and_tolerates_404() {
    let broker = FakeBroker::start(Reply::Token { ttl_secs: 900 });
    let sb = Sandbox::new();
    let minted = sb.run(&["--broker", &broker.url]);
    let token = minted.stdout.trim_end().to_owned();

    let run = sb.run(&["status", "--remote", "--broker", &broker.url]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .contains("usage:\n  not available on this broker (HTTP 404)"),
        "{run:?}"
    );

    broker.set_usage(
        200,
        r#"{"budgets":[{"id":"team","remaining_usd":"12.50"}]}"#,
    );
    let run = sb.run(&["status", "--remote", "--broker", &broker.url]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("\"remaining_usd\": \"12.50\""),
        "{run:?}"
    );
    assert!(!run.stdout.contains(&token));
    assert_eq!(
        broker.usage_auth().last().map(String::as_str),
        Some(format!("Bearer {token}").as_str())
    );
}

#[test]
fn completions_are_printed() {
    let sb = Sandbox::new();
    let run = sb.run(&["completions", "bash"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("tollgate-token"), "{run:?}");
}

/// The auth args `setup` wrote into Codex's config.
fn codex_auth_args(sb: &Sandbox) -> Vec<String> {
    let doc: toml::Table = toml::from_str(
        &std::fs::read_to_string(sb.home().join(".codex/config.toml")).expect("read"),
    )
    .expect("toml");
    doc["model_providers"]["tollgate"]["auth"]["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("str").to_owned())
        .collect()
}

/// The README's flow: a credential file, `setup` with flags, Codex runs the helper with the args setup
/// wrote; then a bare `tollgate-token status` (no flags, no helper config file) reports on that token.
#[test]
fn status_with_no_flags_reads_the_args_codex_runs_the_helper_with() {
    let broker = FakeBroker::start(Reply::Token { ttl_secs: 900 });
    let mut sb = Sandbox::new();
    sb.unset("TOLLGATE_CREDENTIAL");
    let cred = sb.home().join("credential");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&cred)
            .expect("create");
        f.write_all(support::CREDENTIAL.as_bytes()).expect("write");
    }
    let setup = sb.run(&[
        "--credential-file",
        cred.to_str().expect("utf8"),
        "setup",
        "--broker",
        &broker.url,
        "--set-default",
    ]);
    assert_eq!(setup.code, 0, "{setup:?}");
    // What Codex runs.
    let args = codex_auth_args(&sb);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let minted = sb.run(&args);
    assert_eq!(minted.code, 0, "{minted:?}");
    let token = minted.stdout.trim_end().to_owned();

    let run = sb.run(&["status"]);
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");
    for needle in [
        format!(
            "codex:      [model_providers.tollgate] in {} (its auth args are used)\n",
            sb.home().join(".codex/config.toml").display()
        ),
        format!("broker:     {}\n", broker.url),
        "identity:   static\n".to_owned(),
        "principal:  alice\n".to_owned(),
        "valid for 1".to_owned(),
    ] {
        assert!(
            run.stdout.contains(&needle),
            "missing {needle:?} in\n{}",
            run.stdout
        );
    }
    assert!(!run.stdout.contains(&token));
    assert_eq!(broker.mints(), 1, "status never mints");

    // A flag given here wins over Codex's args; an unknown provider id is a usage error.
    let other = FakeBroker::start(Reply::Token { ttl_secs: 900 });
    let run = sb.run(&["status", "--broker", &other.url]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains(&format!("broker:     {}\n", other.url)),
        "{run:?}"
    );
    assert!(run.stdout.contains("none cached"), "{run:?}");
    let run = sb.run(&["status", "--provider-id", "nope"]);
    assert_eq!(run.code, 64, "{run:?}");
    assert!(run.stderr.contains("provider `nope` is not in"), "{run:?}");
}

#[test]
fn refresh_mints_now_and_replaces_the_cached_token() {
    let broker = FakeBroker::start(Reply::Token { ttl_secs: 900 });
    let sb = Sandbox::new();
    let setup = sb.run(&["setup", "--broker", &broker.url]);
    assert_eq!(setup.code, 0, "{setup:?}");
    let first = sb.run(&["--broker", &broker.url]);
    assert_eq!(first.code, 0, "{first:?}");

    // No flags: the slot Codex uses (from its config). Nothing on stdout, one summary line on stderr.
    let run = sb.run(&["refresh"]);
    assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{run:?}");
    assert!(
        run.stderr.starts_with(
            "tollgate-token: minted a new token for static:alice (principal alice, team platform; \
             models gpt-5*, demo); expires "
        ),
        "{run:?}"
    );
    assert!(
        run.stderr
            .ends_with(" (in 15m 00s); it replaced the cached token\n"),
        "{run:?}"
    );
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert_eq!(
        broker.mints(),
        2,
        "minted although the cached token was fresh"
    );

    // The cache now holds the new token: Codex's next run gets it without a mint.
    let next = sb.run(&["--broker", &broker.url]);
    assert_eq!(next.code, 0, "{next:?}");
    assert_ne!(next.stdout, first.stdout);
    assert_eq!(broker.mints(), 2);

    // --print: the token, alone, on stdout, and it is the one now cached.
    let printed = sb.run(&["refresh", "--print"]);
    assert_eq!(printed.code, 0, "{printed:?}");
    assert_eq!(printed.stdout.matches('\n').count(), 1, "{printed:?}");
    assert_ne!(printed.stdout, next.stdout);
    assert_eq!(broker.mints(), 3);
    let served = sb.run(&["--broker", &broker.url]);
    assert_eq!(served.stdout, printed.stdout);

    // A refusal is reported, not papered over with the cached token.
    broker.set_default(Reply::Status(
        400,
        r#"{"error":"invalid_grant","error_description":"no grant"}"#.into(),
    ));
    let refused = sb.run(&["refresh", "--print"]);
    assert_eq!(
        (refused.code, refused.stdout.as_str()),
        (66, ""),
        "{refused:?}"
    );
}

/// `setup --agent claude-code` through the binary: `--project DIR --dry-run` shows the three settings and
/// writes nothing; `--project DIR` writes the project's `.claude/settings.json` and keeps what was there;
/// a second run changes nothing; `--project` with the Codex agent is a usage error that names the flag.
#[test]
fn setup_claude_code_project_and_dry_run_through_the_binary() {
    let sb = Sandbox::new();
    let project = sb.home().join("repo");
    let settings = project.join(".claude/settings.json");
    std::fs::create_dir_all(settings.parent().expect("dir")).expect("mkdir");
    let before = "{\n  \"permissions\": {\"allow\": [\"Bash(ls)\"]},\n  \"model\": \"sonnet\"\n}\n";
    std::fs::write(&settings, before).expect("write");
    let dir = project.to_str().expect("utf8");
    let base = [
        "setup",
        "--agent",
        "claude-code",
        "--broker",
        "https://tollgate.corp.example",
    ];

    let dry: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--project", dir, "--dry-run"])
        .collect();
    let run = sb.run(&dry);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        std::fs::read_to_string(&settings).expect("read"),
        before,
        "dry run wrote"
    );
    for want in [
        "\"apiKeyHelper\"",
        "\"ANTHROPIC_BASE_URL\": \"https://tollgate.corp.example\"",
        "\"CLAUDE_CODE_API_KEY_HELPER_TTL_MS\"",
    ] {
        assert!(
            run.stdout.contains(want),
            "{want} not shown: {}",
            run.stdout
        );
    }
    assert!(
        run.stdout.ends_with("(dry run: nothing written)\n"),
        "{}",
        run.stdout
    );
    assert!(
        !sb.home().join(".claude").exists(),
        "the user's settings were touched"
    );

    let write: Vec<&str> = base.iter().copied().chain(["--project", dir]).collect();
    let run = sb.run(&write);
    assert_eq!(run.code, 0, "{run:?}");
    let after = std::fs::read_to_string(&settings).expect("read");
    let v: serde_json::Value = serde_json::from_str(&after).expect("json");
    assert_eq!(v["permissions"]["allow"][0], "Bash(ls)", "kept: {after}");
    assert_eq!(v["model"], "sonnet", "kept: {after}");
    assert_eq!(
        v["env"]["ANTHROPIC_BASE_URL"],
        "https://tollgate.corp.example"
    );
    assert!(
        v["apiKeyHelper"]
            .as_str()
            .is_some_and(|c| c.contains("tollgate-token")),
        "{after}"
    );
    assert!(
        !sb.home().join(".claude").exists(),
        "the user's settings were touched"
    );

    let again = sb.run(&write);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stdout.contains("already up to date"), "{again:?}");
    assert_eq!(std::fs::read_to_string(&settings).expect("read"), after);

    let codex = sb.run(&["setup", "--broker", "https://b.example", "--project", dir]);
    assert_eq!(codex.code, 64, "{codex:?}");
    assert!(codex.stderr.contains("--project"), "{codex:?}");
    assert!(codex.stdout.is_empty());
}
