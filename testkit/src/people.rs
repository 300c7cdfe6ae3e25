//! The peers of the people sign-in tests (issue 14), one harness for every test that signs a person in:
//!
//! - [`CompanyIdp`]: the company IdP, the real npm `oidc-provider` (OpenID Certified), run by
//!   `testkit/js/company_idp.mjs` on a loopback port the OS picks, with test users and groups (alice,
//!   bob, carol), the broker registered as a confidential client;
//! - [`browser`]: a person at headless Chromium (`testkit/js/browser.mjs`, the pinned npm
//!   `playwright-core` driving Debian's Chromium) going through the real pages: the broker's choice of
//!   IdP, the IdP's login and consent pages, the broker's consent and device pages, up to a client's
//!   loopback redirect.
//!
//! Both come from `.test-tools/` (`scripts/install-test-tools.sh`; `TOLLGATE_TEST_TOOLS` points
//! elsewhere). Everything stays on loopback: the browser aborts any other host.

use serde_json::{Value, json};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The repository root (the workspace this crate sits in).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The test tools' root: `TOLLGATE_TEST_TOOLS`, else `.test-tools/` in the repository.
pub fn test_tools() -> PathBuf {
    std::env::var_os("TOLLGATE_TEST_TOOLS")
        .map_or_else(|| repo_root().join(".test-tools"), PathBuf::from)
}

/// `node_modules` holding `oidc-provider` and `playwright-core`, or a panic that says how to install them.
pub fn idp_modules() -> PathBuf {
    let m = test_tools().join("idp/node_modules");
    assert!(
        m.join("oidc-provider").exists() && m.join("playwright-core").exists(),
        "oidc-provider / playwright-core are not installed in {}: run scripts/install-test-tools.sh",
        m.display()
    );
    m
}

/// A script of `testkit/js/`.
pub fn js(name: &str) -> PathBuf {
    repo_root().join("testkit/js").join(name)
}

/// The company IdP process; killed (by its own pid) when dropped.
#[derive(Debug)]
pub struct CompanyIdp {
    child: Child,
    /// `http://127.0.0.1:PORT`, as its ID tokens carry it in `iss`.
    pub issuer: String,
}

impl Drop for CompanyIdp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl CompanyIdp {
    /// Start an IdP with the broker registered as client `client_id` (secret `client_secret`,
    /// `client_secret_basic`) whose only redirect URI is `callback` (the broker's `/oauth/callback`).
    pub fn start(client_id: &str, client_secret: &str, callback: &str) -> CompanyIdp {
        let clients = json!([{
            "client_id": client_id,
            "client_secret": client_secret,
            "redirect_uris": [callback],
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_basic",
        }]);
        let mut child = Command::new("node")
            .arg(js("company_idp.mjs"))
            .arg(idp_modules())
            .env("IDP_CLIENTS", clients.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("node runs company_idp.mjs: {e}"));
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = std::io::BufReader::new(out).read_line(&mut line);
        }
        let issuer = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v["issuer"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("the IdP announces itself with a JSON line, got {line:?}"));
        CompanyIdp { child, issuer }
    }

    /// The IdP's loopback port (for the browser's allow-list).
    pub fn port(&self) -> u16 {
        port_of(&self.issuer).unwrap_or(0)
    }
}

/// The port of a URL (`http://127.0.0.1:PORT/…`), if it names one.
pub fn port_of(url: &str) -> Option<u16> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    authority.rsplit_once(':')?.1.parse().ok()
}

/// Play the person in Chromium through the real pages, following `plan` (see `testkit/js/browser.mjs`:
/// `start`, `user`, `consent`, `idp`, `user_code`, `stop_prefix`, `allow_ports`, `forge`). Returns the
/// browser's JSON (`final_url`, `status`, `title`, `text`, `steps`, `headers`); panics with its stderr if
/// it failed.
pub async fn browser(plan: Value) -> Value {
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new("node")
            .arg(js("browser.mjs"))
            .arg(idp_modules())
            .arg(plan.to_string())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("the browser took more than 90 s: {plan}"))
    .unwrap_or_else(|e| panic!("node runs browser.mjs: {e}"));
    assert!(
        out.status.success(),
        "browser failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "browser JSON: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A `$BROWSER` for a program that opens a sign-in page itself (`tollgate-token login`): a script in
/// `dir` that plays `user` at headless Chromium from the URL it is given (approving the consent; picking
/// the first IdP), allowed onto `allow_ports`, appending what the browser printed to `log`.
pub fn browser_script(dir: &Path, user: &str, allow_ports: &[u16], log: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("browser.sh");
    let ports = allow_ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    // The URL goes into the JSON plan as it is: a sign-in URL is percent-encoded (no quote, no backslash).
    let text = format!(
        "#!/bin/sh\nexec node '{}' '{}' \"{{\\\"start\\\":\\\"$1\\\",\\\"user\\\":\\\"{user}\\\",\\\"consent\\\":\\\"approve\\\",\\\"allow_ports\\\":[{ports}]}}\" >>'{}' 2>&1\n",
        js("browser.mjs").display(),
        idp_modules().display(),
        log.display()
    );
    std::fs::write(&script, text).unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    script
}

#[cfg(test)]
mod tests {
    use super::port_of;

    #[test]
    fn ports_of_urls() {
        for (url, port) in [
            ("http://127.0.0.1:8080/oauth/authorize?x=1", Some(8080)),
            ("http://127.0.0.1:1/", Some(1)),
            ("http://[::1]:4443/a", Some(4443)),
            ("http://127.0.0.1/callback", None),
            ("not a url", None),
        ] {
            assert_eq!(port_of(url), port, "{url}");
        }
    }

    #[test]
    fn the_browser_script_puts_the_url_into_a_json_plan() {
        let dir = std::env::temp_dir().join(format!("tollgate-browser-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let script = super::browser_script(&dir, "alice", &[1, 2], &dir.join("log"));
        let text = std::fs::read_to_string(&script).expect("read");
        assert!(
            text.contains(r#" "{\"start\":\"$1\",\"user\":\"alice\",\"consent\":\"approve\",\"allow_ports\":[1,2]}" >>'"#),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
