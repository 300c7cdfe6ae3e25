//! A person's sign-in, black-box: the real `tollgate-token` binary against a real OAuth 2.1 authorization
//! server (npm `oidc-provider`, started on 127.0.0.1:0 by `support/oidc_idp.mjs`), with a person at a real
//! browser (headless Chromium driven by `playwright-core`, `testkit/js/browser.mjs`) going through the
//! provider's own login, consent and device pages. The helper opens "the browser" through `$BROWSER`,
//! exactly as it would open a person's; the device sign-in is confirmed from the link the helper prints.
//!
//! Exact stdout, stderr and exit codes throughout; the refresh token never appears in any output.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use support::{Sandbox, tool};

/// The provider, running until dropped.
struct Idp {
    issuer: String,
    child: Child,
}

impl Idp {
    fn start(access_ttl: u64) -> Idp {
        let tools = tool("idp/node_modules/oidc-provider");
        let tools = tools.ancestors().nth(3).expect("tools root").to_owned();
        let mut child = Command::new("node")
            .arg(support_file("oidc_idp.mjs"))
            .env("TOLLGATE_TEST_TOOLS", &tools)
            .env("IDP_ACCESS_TTL", access_ttl.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(match std::env::var_os("IDP_LOG") {
                Some(p) => Stdio::from(std::fs::File::create(p).expect("log")),
                None => Stdio::null(),
            })
            .spawn()
            .expect("node");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        let v: serde_json::Value = serde_json::from_str(&line).expect("issuer line");
        Idp {
            issuer: v["issuer"].as_str().expect("issuer").to_owned(),
            child,
        }
    }

    /// POST a form to the provider's token endpoint; the `error` it answers, or `None` on success.
    fn token_error(&self, form: &[(&str, &str)]) -> Option<String> {
        let body = serde_urlencoded::to_string(form).expect("form");
        let addr = self.issuer.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        write!(
            s,
            "POST /token HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        let json = &out[out.find("\r\n\r\n").expect("head") + 4..];
        let json =
            &json[json.find('{').unwrap_or(0)..json.rfind('}').map_or(json.len(), |i| i + 1)];
        let v: serde_json::Value = serde_json::from_str(json).expect("json");
        v.get("error").and_then(|e| e.as_str()).map(str::to_owned)
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn support_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(name)
}

fn tools_root() -> PathBuf {
    tool("idp/node_modules/playwright-core")
        .ancestors()
        .nth(3)
        .expect("root")
        .to_owned()
}

/// The person at headless Chromium: `testkit/js/browser.mjs`, the one browser of every sign-in test.
fn testkit_browser() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testkit/js/browser.mjs")
}

/// Its plan: start at `url` as `user`; `action` "deny" cancels at the provider's login page.
fn browser_plan(url: &str, user: &str, action: &str) -> String {
    serde_json::json!({
        "start": url,
        "user": user,
        "consent": "approve",
        "at_idp": (action == "deny").then_some("abort"),
    })
    .to_string()
}

/// A `$BROWSER` for the helper: the Chromium driver on the URL it is given, its output appended to `log`.
fn browser_script(dir: &Path, user: &str, action: &str) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let log = dir.join(format!("browser-{user}-{action}.log"));
    let script = dir.join(format!("browser-{user}-{action}.sh"));
    // The plan is JSON with the URL in it: a sign-in URL is percent-encoded (no quote, no backslash).
    let plan = browser_plan("URL", user, action)
        .replace('"', "\\\"")
        .replace("URL", "$1");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec node '{}' '{}' \"{plan}\" >>'{}' 2>&1\n",
            testkit_browser().display(),
            tools_root().join("idp/node_modules").display(),
            log.display()
        ),
    )
    .expect("write");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    (script, log)
}

/// What the browser ended on. The helper exits as soon as the redirect reached it, a moment before the
/// browser has rendered the page and written it down: wait for that (bounded).
fn browser_result(log: &Path) -> String {
    for _ in 0..300 {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("\"final_url\"") {
            return text;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!(
        "the browser never finished: {:?}",
        std::fs::read_to_string(log)
    );
}

/// A sandbox for a person: no workload credential, the file store (no OS keyring in tests), no display.
fn person(idp: &Idp) -> Sandbox {
    let mut sb = Sandbox::new();
    sb.unset("TOLLGATE_CREDENTIAL");
    let home = sb.home().to_str().expect("utf8").to_owned();
    sb.set("XDG_STATE_HOME", &format!("{home}/.local/state"));
    sb.set("TOLLGATE_BROKER", &idp.issuer);
    sb.set("TOLLGATE_CREDENTIAL_STORE", "file");
    sb
}

/// The one fallback file holding the refresh token.
fn fallback(sb: &Sandbox) -> PathBuf {
    let dir = sb.home().join(".local/state/tollgate");
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.map(|e| e.expect("entry").path())
                .filter(|p| p.extension().is_some_and(|e| e == "refresh"))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

fn refresh_token(sb: &Sandbox) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fallback(sb)).expect("read")).expect("json");
    v["refresh_token"].as_str().expect("rt").to_owned()
}

fn assert_no_secret(run: &support::Run, secrets: &[&str]) {
    for s in secrets {
        assert!(
            !run.stdout.contains(s) && !run.stderr.contains(s),
            "a token leaked: {run:?}"
        );
    }
}

/// The browser sign-in's first line names the URL; return its query, checked key by key.
fn authorization_query(stderr_line: &str, issuer: &str) -> Vec<(String, String)> {
    let prefix =
        "tollgate-token: opening your browser to sign in; if it does not open, visit: ".to_owned();
    let url = stderr_line.strip_prefix(&prefix).expect(stderr_line);
    let (base, query) = url.split_once('?').expect("query");
    assert_eq!(base, format!("{issuer}/auth"));
    serde_urlencoded::from_str(query).expect("query")
}

#[test]
fn browser_sign_in_renews_silently_rotates_and_a_replay_ends_it() {
    let idp = Idp::start(600);
    let mut sb = person(&idp);
    let (browser, log) = browser_script(sb.home(), "alice", "approve");
    sb.set("BROWSER", browser.to_str().expect("utf8"));
    let issuer = idp.issuer.clone();

    // Before any sign-in, the token path (Codex's auth command) says what to do and opens nothing.
    let run = sb.run(&["--identity", "login"]);
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (
            67,
            "",
            format!(
                "tollgate-token: not signed in to {issuer}: run `tollgate-token login --broker {issuer}`\n"
            )
            .as_str()
        )
    );
    assert!(!log.exists(), "the token path opened a browser");

    // Sign in: the browser goes through the IdP's real login and consent pages to our loopback port.
    let run = sb.run(&["login"]);
    assert_eq!(
        run.code,
        0,
        "{run:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(run.stdout, "");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", run.stderr);
    let q = authorization_query(lines[0], &issuer);
    let keys: Vec<&str> = q.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "response_type",
            "client_id",
            "redirect_uri",
            "code_challenge",
            "code_challenge_method",
            "state",
            "resource",
            "scope"
        ]
    );
    let get = |k: &str| q.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    assert_eq!(get("response_type"), Some("code"));
    assert_eq!(get("client_id"), Some("tollgate-token"));
    assert_eq!(get("code_challenge_method"), Some("S256"));
    assert_eq!(get("code_challenge").map(str::len), Some(43));
    assert_eq!(get("state").map(str::len), Some(43));
    assert_eq!(get("resource"), Some(issuer.as_str()));
    assert_eq!(get("scope"), Some("openid models offline_access"));
    let redirect = get("redirect_uri").expect("redirect");
    assert!(
        redirect.starts_with("http://127.0.0.1:") && redirect.ends_with("/callback"),
        "{redirect}"
    );
    let store = fallback(&sb);
    // The server counts `expires_in` down to the second it answers: 600 s, or 599 s on a slow machine.
    let (said, expires) = lines[1]
        .rsplit_once("; the access token expires in ")
        .expect(lines[1]);
    assert_eq!(
        said,
        format!(
            "tollgate-token: signed in to {issuer} as alice@example.com (subject alice); the refresh token is in {} \
             (a fallback, 0600: TOLLGATE_CREDENTIAL_STORE=file)",
            store.display()
        )
    );
    assert!(
        ["10m 00s", "9m 59s", "9m 58s"].contains(&expires),
        "{expires}"
    );
    let page = browser_result(&log);
    assert!(
        page.contains(&format!("\"final_url\":\"{redirect}?code="))
            && page.contains("You are signed in to Tollgate."),
        "{page}"
    );
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(&store).expect("meta").mode() & 0o777,
            0o600
        );
    }
    let rt1 = refresh_token(&sb);

    // The token path: the access token the sign-in cached, no network, no browser.
    let run = sb.run(&[]);
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");
    let at1 = run.stdout.trim_end().to_owned();
    assert_eq!(run.stdout, format!("{at1}\n"));
    let claims = tollgate_token::exchange::jwt_payload(&at1).expect("jwt");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(
        claims["aud"],
        issuer.as_str(),
        "RFC 8707: the token is for the resource asked for"
    );
    assert_no_secret(&run, &[&rt1]);

    // status: who, since when, where the refresh token is.
    let run = sb.run(&["status"]);
    assert_eq!(run.code, 0, "{run:?}");
    for want in [
        "identity:   login\n".to_owned(),
        format!("signed in:  as alice@example.com (subject alice) at {issuer}\n"),
        format!(
            "kept:       refresh token in {} (a fallback: TOLLGATE_CREDENTIAL_STORE=file)\n",
            store.display()
        ),
        "client:     tollgate-token\n".to_owned(),
        // oidc-provider's access token is a JWT, but not a Tollgate one (the broker's is).
        "claims:     not a Tollgate JWT (cannot show subject and grant)\n".to_owned(),
    ] {
        assert!(
            run.stdout.contains(&want),
            "{want:?} not in\n{}",
            run.stdout
        );
    }
    assert_no_secret(&run, &[&rt1, &at1]);

    // Renewal (what the token path does when the cached token is near its end): a new access token and a
    // rotated refresh token, stored before the token is printed.
    let run = sb.run(&["refresh", "--print"]);
    assert_eq!(run.code, 0, "{run:?}");
    let at2 = run.stdout.trim_end().to_owned();
    assert_ne!(at2, at1);
    assert!(
        run.stderr
            .starts_with("tollgate-token: minted a new token; expires ")
            && (run
                .stderr
                .ends_with("(in 10m 00s); it replaced the cached token\n")
                || run
                    .stderr
                    .ends_with("(in 9m 59s); it replaced the cached token\n")),
        "{}",
        run.stderr
    );
    let rt2 = refresh_token(&sb);
    assert_ne!(rt2, rt1, "the refresh token rotates on every use");
    assert_no_secret(&run, &[&rt1, &rt2]);
    let run = sb.run(&[]);
    assert_eq!((run.code, run.stdout.trim_end()), (0, at2.as_str()));

    // The used token, replayed (stolen and put back): the IdP revokes the whole family, the helper says
    // to sign in again (exit 67), forgets it, and the newest token of the family is dead too.
    let store_text = std::fs::read_to_string(&store).expect("read");
    std::fs::write(&store, store_text.replace(&rt2, &rt1)).expect("replay");
    let run = sb.run(&["refresh"]);
    assert_eq!(run.code, 67, "{run:?}");
    assert_eq!(
        run.stderr,
        format!(
            "tollgate-token: the sign-in to {issuer} has expired or was revoked (invalid_grant: grant request is invalid): \
             run `tollgate-token login --broker {issuer}`\n"
        )
    );
    assert!(!store.exists(), "a dead refresh token is forgotten");
    assert_eq!(
        idp.token_error(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt2),
            ("client_id", "tollgate-token"),
        ])
        .as_deref(),
        Some("invalid_grant"),
        "the replay revoked the newest token of the family too"
    );
}

#[test]
fn logout_revokes_at_the_issuer_and_forgets_here() {
    let idp = Idp::start(600);
    let mut sb = person(&idp);
    let (browser, _log) = browser_script(sb.home(), "bob", "approve");
    sb.set("BROWSER", browser.to_str().expect("utf8"));
    let issuer = idp.issuer.clone();
    let run = sb.run(&["login"]);
    assert_eq!(run.code, 0, "{run:?}");
    let rt = refresh_token(&sb);

    let run = sb.run(&["logout"]);
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (
            0,
            "",
            format!(
                "tollgate-token: signed out of {issuer} (bob@example.com (subject bob)): the broker revoked the refresh token, \
                 and it is forgotten here\n"
            )
            .as_str()
        )
    );
    assert_eq!(
        idp.token_error(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt),
            ("client_id", "tollgate-token"),
        ])
        .as_deref(),
        Some("invalid_grant")
    );
    let state: Vec<_> = std::fs::read_dir(sb.home().join(".local/state/tollgate"))
        .expect("dir")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(state.is_empty(), "{state:?}");
    assert!(
        sb.cache_files().is_empty(),
        "the cached access token is gone"
    );

    // Signed out: Codex's auth command asks for a sign-in; a second logout has nothing to do.
    let run = sb.run(&["--identity", "login"]);
    assert_eq!(run.code, 67, "{run:?}");
    let run = sb.run(&["logout"]);
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            0,
            format!("tollgate-token: not signed in to {issuer}; nothing to do\n").as_str()
        )
    );
}

#[test]
fn without_a_display_login_uses_the_device_sign_in() {
    let idp = Idp::start(600);
    let sb = person(&idp);
    let issuer = idp.issuer.clone();
    let mut child = sb.command(&["login"]).spawn().expect("spawn");
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let mut first = String::new();
    err.read_line(&mut first).expect("read");
    assert_eq!(
        first,
        "tollgate-token: no display here (no DISPLAY, WAYLAND_DISPLAY or BROWSER): signing in with a code on another \
         device; pass --no-browser to get a link for a browser on this machine instead\n"
    );
    let mut second = String::new();
    err.read_line(&mut second).expect("read");
    let rest = second
        .strip_prefix(&format!(
            "tollgate-token: to sign in, open {issuer}/device?user_code="
        ))
        .expect(&second);
    let (code, tail) = rest.split_once(' ').expect("code");
    assert_eq!(
        tail,
        format!(
            "on any device and check that it shows the code {code} (or open {issuer}/device and enter the code)\n"
        )
    );
    // The person confirms on "another device": the browser opens the link.
    let out = Command::new("node")
        .arg(testkit_browser())
        .arg(tools_root().join("idp/node_modules"))
        .arg(browser_plan(
            &format!("{issuer}/device?user_code={code}"),
            "alice",
            "approve",
        ))
        .output()
        .expect("browser");
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains("Sign-in Success"), "{page}");
    let status = child.wait().expect("wait");
    let mut tail = String::new();
    err.read_to_string(&mut tail).expect("read");
    assert_eq!(status.code(), Some(0), "{tail}");
    assert!(
        tail.starts_with(&format!(
            "tollgate-token: signed in to {issuer} as alice@example.com (subject alice); the refresh token is in "
        )),
        "{tail}"
    );
    let run = sb.run(&[]);
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");
}

#[test]
fn a_refused_sign_in_keeps_nothing() {
    let idp = Idp::start(600);
    let mut sb = person(&idp);
    let (browser, _log) = browser_script(sb.home(), "alice", "deny");
    sb.set("BROWSER", browser.to_str().expect("utf8"));
    let run = sb.run(&["login"]);
    assert_eq!(run.code, 66, "{run:?}");
    let last = run.stderr.lines().last().expect("line");
    assert_eq!(
        last,
        "tollgate-token: sign-in refused: access_denied: End-User aborted interaction"
    );
    let recorded = std::fs::read_dir(sb.home().join(".local/state/tollgate"))
        .map(|rd| rd.count())
        .unwrap_or(0);
    assert_eq!(recorded, 0, "nothing kept after a refused sign-in");
    let run = sb.run(&["--identity", "login"]);
    assert_eq!(run.code, 67);
}
