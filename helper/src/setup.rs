//! `tollgate-token setup`: add or update our provider block in Codex's `config.toml`.
//!
//! Edits go through `toml_edit`, so every other setting, comment and blank line survives. Values that
//! already have the wanted content are not touched (their comments stay), which makes the command
//! idempotent: a second run changes nothing.

use crate::error::{SetupError, line_col, one_line};
use crate::sys::Env;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use toml_edit::{Array, DocumentMut, Item, Table, Value};

/// Codex's default is 5000; we finish well below it (`--timeout-ms` default 4000).
pub const AUTH_TIMEOUT_MS: i64 = 5000;
/// Codex reuses a token for this long. Cached tokens are served only with more than the refresh
/// margin (default 300 s) left, so a token Codex holds is always still valid.
pub const AUTH_REFRESH_INTERVAL_MS: i64 = 240_000;
/// Provider keys that Codex refuses to combine with `auth`.
const CONFLICTING_KEYS: [&str; 3] = [
    "env_key",
    "experimental_bearer_token",
    "requires_openai_auth",
];

/// What to write.
#[derive(Debug, Clone)]
pub struct SetupPlan {
    pub provider_id: String,
    /// Broker base URL (normalized, no trailing slash).
    pub broker: String,
    /// Absolute path of the helper.
    pub command: String,
    /// `args` for the helper.
    pub args: Vec<String>,
    pub set_default: bool,
    pub model: Option<String>,
    /// `--oauth`: Codex signs the person in itself (`gateway_oauth`) instead of running the helper.
    pub oauth: Option<GatewayOAuth>,
}

/// `[model_providers.<id>.gateway_oauth]` as Codex 0.171.0 reads it (verified against the binary: the
/// keys below are accepted; `redirect_port` may be left out, and Codex then listens on a port the system
/// picks; `credentials_store` takes `file` or `keyring`; `delivery = { kind = "header" | "cookie", name }`
/// moves the token out of `Authorization`, which the broker does not need).
#[derive(Debug, Clone)]
pub struct GatewayOAuth {
    pub authorization_url: String,
    pub token_url: String,
    pub device_authorization_url: Option<String>,
    pub client_id: String,
    pub scopes: Vec<String>,
    /// RFC 8707: the broker's URL, the `aud` of the token.
    pub resource: String,
    /// `credentials_store`: `file` where Codex's default, the OS keyring, cannot work (observed with
    /// 0.171.0: without a Secret Service the sign-in ends in "Gateway OAuth authentication failed; check
    /// the gateway configuration and credential store"). `None` leaves the key as the user has it.
    pub credentials_store: Option<&'static str>,
}

/// `$CODEX_HOME/config.toml`, else `~/.codex/config.toml`.
pub fn codex_config_path(env: &dyn Env) -> Option<PathBuf> {
    env.path("CODEX_HOME")
        .or_else(|| env.path("HOME").map(|h| h.join(".codex")))
        .map(|d| d.join("config.toml"))
}

/// Apply the plan to a document's text. Returns the new text and notes for the user.
pub fn apply(
    src: &str,
    path: &Path,
    plan: &SetupPlan,
) -> Result<(String, Vec<String>), SetupError> {
    let mut doc: DocumentMut = src.parse().map_err(|e: toml_edit::TomlError| {
        let (line, column) = e.span().map_or((0, 0), |s| line_col(src, s.start));
        SetupError::Parse {
            path: path.to_owned(),
            line,
            column,
            message: one_line(e.message()),
        }
    })?;
    let mut notes = Vec::new();
    let shape = |key: &str| SetupError::Shape {
        path: path.to_owned(),
        key: key.to_owned(),
    };

    if plan.set_default {
        set_value(
            doc.as_table_mut(),
            "model_provider",
            Value::from(plan.provider_id.as_str()),
        );
        if let Some(m) = &plan.model {
            set_value(doc.as_table_mut(), "model", Value::from(m.as_str()));
        }
    }

    let providers = table_entry(doc.as_table_mut(), "model_providers", true)
        .ok_or_else(|| shape("model_providers"))?;
    let provider = table_entry(providers, &plan.provider_id, false)
        .ok_or_else(|| shape(&format!("model_providers.{}", plan.provider_id)))?;
    if provider.get("name").is_none() {
        set_value(provider, "name", Value::from("Tollgate"));
    }
    set_value(
        provider,
        "base_url",
        Value::from(format!("{}/v1", plan.broker)),
    );
    set_value(provider, "wire_api", Value::from("responses"));
    for key in CONFLICTING_KEYS {
        if provider.remove(key).is_some() {
            notes.push(format!(
                "removed `{key}` from [model_providers.{}]: Codex rejects it next to `auth`",
                plan.provider_id
            ));
        }
    }
    if let Some(g) = &plan.oauth {
        if provider.remove("auth").is_some() {
            notes.push(format!(
                "removed [model_providers.{}.auth]: Codex signs in itself with gateway_oauth now",
                plan.provider_id
            ));
        }
        let t = table_entry(provider, "gateway_oauth", false).ok_or_else(|| {
            shape(&format!(
                "model_providers.{}.gateway_oauth",
                plan.provider_id
            ))
        })?;
        set_value(
            t,
            "authorization_url",
            Value::from(g.authorization_url.as_str()),
        );
        set_value(t, "token_url", Value::from(g.token_url.as_str()));
        match &g.device_authorization_url {
            Some(u) => {
                set_value(t, "device_authorization_url", Value::from(u.as_str()));
            }
            None => {
                t.remove("device_authorization_url");
            }
        }
        set_value(t, "client_id", Value::from(g.client_id.as_str()));
        set_value(
            t,
            "scopes",
            Value::Array(g.scopes.iter().map(String::as_str).collect::<Array>()),
        );
        set_value(t, "resource", Value::from(g.resource.as_str()));
        if let Some(store) = g.credentials_store {
            set_value(t, "credentials_store", Value::from(store));
        }
        return Ok((doc.to_string(), notes));
    }
    if provider.remove("gateway_oauth").is_some() {
        notes.push(format!(
            "removed [model_providers.{}.gateway_oauth]: the helper is Codex's auth command now",
            plan.provider_id
        ));
    }
    let auth = table_entry(provider, "auth", false)
        .ok_or_else(|| shape(&format!("model_providers.{}.auth", plan.provider_id)))?;
    set_value(auth, "command", Value::from(plan.command.as_str()));
    set_value(
        auth,
        "args",
        Value::Array(plan.args.iter().map(String::as_str).collect::<Array>()),
    );
    set_value(auth, "timeout_ms", Value::from(AUTH_TIMEOUT_MS));
    set_value(
        auth,
        "refresh_interval_ms",
        Value::from(AUTH_REFRESH_INTERVAL_MS),
    );

    Ok((doc.to_string(), notes))
}

/// Get `key` as a table, creating it if missing and converting an inline table.
fn table_entry<'a>(parent: &'a mut Table, key: &str, implicit: bool) -> Option<&'a mut Table> {
    let item = parent.entry(key).or_insert_with(|| {
        let mut t = Table::new();
        t.set_implicit(implicit);
        Item::Table(t)
    });
    if let Item::Value(Value::InlineTable(_)) = item {
        let taken = std::mem::take(item);
        *item = match taken.into_table() {
            Ok(t) => Item::Table(t),
            Err(other) => other,
        };
    }
    item.as_table_mut()
}

/// Set a value unless it already has that content (keeping its comments either way).
fn set_value(table: &mut Table, key: &str, mut new: Value) -> bool {
    if let Some(item) = table.get_mut(key) {
        if let Item::Value(old) = item {
            if same_value(old, &new) {
                return false;
            }
            *new.decor_mut() = old.decor().clone();
        }
        // Replace the value only: the key keeps its position and the comments above it.
        *item = Item::Value(new);
    } else {
        table.insert(key, Item::Value(new));
    }
    true
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => x.value() == y.value(),
        (Value::Integer(x), Value::Integer(y)) => x.value() == y.value(),
        (Value::Boolean(x), Value::Boolean(y)) => x.value() == y.value(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(p, q)| same_value(p, q))
        }
        _ => false,
    }
}

/// A small line diff (LCS), unified style with two lines of context.
pub fn diff(old: &str, new: &str, label: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut out = format!("--- {label}\n+++ {label} (after setup)\n");
    if a == b {
        return out;
    }
    // Ops: (' ' | '-' | '+', line).
    let ops: Vec<(char, &str)> = if a.len().saturating_mul(b.len()) > 4_000_000 {
        a.iter()
            .map(|l| ('-', *l))
            .chain(b.iter().map(|l| ('+', *l)))
            .collect()
    } else {
        let (n, m) = (a.len(), b.len());
        let mut lcs = vec![vec![0u32; m + 1]; n + 1];
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                lcs[i][j] = if a[i] == b[j] {
                    lcs[i + 1][j + 1] + 1
                } else {
                    lcs[i + 1][j].max(lcs[i][j + 1])
                };
            }
        }
        let (mut i, mut j, mut ops) = (0, 0, Vec::new());
        while i < n || j < m {
            if i < n && j < m && a[i] == b[j] {
                ops.push((' ', a[i]));
                i += 1;
                j += 1;
            } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
                ops.push(('-', a[i]));
                i += 1;
            } else {
                ops.push(('+', b[j]));
                j += 1;
            }
        }
        ops
    };
    const CONTEXT: usize = 2;
    let changed: Vec<bool> = ops.iter().map(|(k, _)| *k != ' ').collect();
    let mut show = vec![false; ops.len()];
    for (idx, _) in changed.iter().enumerate().filter(|(_, c)| **c) {
        let lo = idx.saturating_sub(CONTEXT);
        let hi = (idx + CONTEXT).min(ops.len() - 1);
        show[lo..=hi].iter_mut().for_each(|s| *s = true);
    }
    let (mut old_line, mut new_line) = (1usize, 1usize);
    let mut in_hunk = false;
    for (idx, (kind, line)) in ops.iter().enumerate() {
        if show[idx] {
            if !in_hunk {
                out.push_str(&format!("@@ -{old_line} +{new_line} @@\n"));
                in_hunk = true;
            }
            out.push(*kind);
            out.push_str(line);
            out.push('\n');
        } else {
            in_hunk = false;
        }
        match kind {
            ' ' => {
                old_line += 1;
                new_line += 1;
            }
            '-' => old_line += 1,
            _ => new_line += 1,
        }
    }
    out
}

/// Read the config (missing = empty).
pub fn read_config(path: &Path) -> Result<String, SetupError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(SetupError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Replace the file atomically, keeping its permissions (and following a symlink to its target,
/// so dotfile managers keep working).
///
/// Durable, unlike the token cache: this is the user's own config, which nothing can rebuild. One fsync
/// of the new file before the rename (so the rename never exposes an empty file after a crash) and one
/// of the directory after it (so the rename itself survives).
pub fn write_config(path: &Path, content: &str) -> Result<(), SetupError> {
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let err = |source| SetupError::Write {
        path: target.clone(),
        source,
    };
    if let Some(dir) = target.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    let mode = std::fs::metadata(&target)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o600);
    let (tmp_path, mut tmp) = crate::cache::create_temp_beside(&target).map_err(err)?;
    let result = (|| {
        tmp.write_all(content.as_bytes())?;
        tmp.set_permissions(std::fs::Permissions::from_mode(mode))?;
        tmp.sync_all()?;
        drop(tmp);
        std::fs::rename(&tmp_path, &target)?;
        if let Some(dir) = target.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp_path);
    }
    result.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> SetupPlan {
        SetupPlan {
            provider_id: "tollgate".into(),
            broker: "https://b.example".into(),
            command: "/usr/local/bin/tollgate-token".into(),
            args: vec!["--broker".into(), "https://b.example".into()],
            set_default: false,
            model: None,
            oauth: None,
        }
    }

    #[test]
    fn oauth_writes_gateway_oauth_keeps_the_rest_and_switches_back() {
        let p = SetupPlan {
            oauth: Some(GatewayOAuth {
                authorization_url: "https://b.example/oauth/authorize".into(),
                token_url: "https://b.example/oauth/token".into(),
                device_authorization_url: Some(
                    "https://b.example/oauth/device_authorization".into(),
                ),
                client_id: "codex".into(),
                scopes: vec!["models".into(), "offline_access".into()],
                resource: "https://b.example".into(),
                credentials_store: None,
            }),
            ..plan()
        };
        let (with_auth, _) = apply(HAND_WRITTEN, Path::new("c.toml"), &plan()).expect("apply");
        let (out, notes) = apply(&with_auth, Path::new("c.toml"), &p).expect("apply");
        assert_eq!(
            notes,
            [
                "removed [model_providers.tollgate.auth]: Codex signs in itself with gateway_oauth now"
            ]
        );
        let doc: toml::Table = toml::from_str(&out).expect("valid");
        let prov = &doc["model_providers"]["tollgate"];
        assert!(prov.get("auth").is_none());
        let g = &prov["gateway_oauth"];
        assert_eq!(
            g["authorization_url"].as_str(),
            Some("https://b.example/oauth/authorize")
        );
        assert_eq!(
            g["token_url"].as_str(),
            Some("https://b.example/oauth/token")
        );
        assert_eq!(
            g["device_authorization_url"].as_str(),
            Some("https://b.example/oauth/device_authorization")
        );
        assert_eq!(g["client_id"].as_str(), Some("codex"));
        assert_eq!(g["resource"].as_str(), Some("https://b.example"));
        assert_eq!(prov["base_url"].as_str(), Some("https://b.example/v1"));
        // The user's own lines are still there, byte for byte.
        assert!(
            out.starts_with("# My Codex config\nmodel = \"o3\"   # keep me\n"),
            "{out}"
        );
        // Idempotent.
        let (again, notes) = apply(&out, Path::new("c.toml"), &p).expect("apply");
        assert_eq!((again.as_str(), notes.len()), (out.as_str(), 0));
        // Back to the helper as the auth command.
        let (back, notes) = apply(&out, Path::new("c.toml"), &plan()).expect("apply");
        assert_eq!(
            notes,
            [
                "removed [model_providers.tollgate.gateway_oauth]: the helper is Codex's auth command now"
            ]
        );
        let doc: toml::Table = toml::from_str(&back).expect("valid");
        assert!(
            doc["model_providers"]["tollgate"]
                .get("gateway_oauth")
                .is_none()
        );
        assert!(doc["model_providers"]["tollgate"].get("auth").is_some());
    }

    const HAND_WRITTEN: &str = r#"# My Codex config
model = "o3"   # keep me
approval_policy = "on-request"

# Other providers
[model_providers.ollama]
name = "Ollama"
base_url = "http://localhost:11434/v1"

[model_providers.tollgate]
# comment inside our block
base_url = "https://old.example/v1"  # old
env_key = "OLD_KEY"
http_headers = { "X-Team" = "a" }

[profiles.fast]
model = "gpt-5-mini"  # trailing
"#;

    #[test]
    fn fresh_file() {
        let (out, notes) = apply("", Path::new("c.toml"), &plan()).expect("apply");
        assert!(notes.is_empty());
        let doc: toml::Table = toml::from_str(&out).expect("valid");
        let p = &doc["model_providers"]["tollgate"];
        assert_eq!(p["base_url"].as_str(), Some("https://b.example/v1"));
        assert_eq!(p["wire_api"].as_str(), Some("responses"));
        assert_eq!(
            p["auth"]["command"].as_str(),
            Some("/usr/local/bin/tollgate-token")
        );
        assert_eq!(p["auth"]["timeout_ms"].as_integer(), Some(5000));
        assert_eq!(p["auth"]["refresh_interval_ms"].as_integer(), Some(240_000));
        assert!(doc.get("model_provider").is_none());
        let (again, _) = apply(&out, Path::new("c.toml"), &plan()).expect("apply");
        assert_eq!(again, out);
    }

    #[test]
    fn keeps_everything_else_and_is_idempotent() {
        let (out, notes) = apply(HAND_WRITTEN, Path::new("c.toml"), &plan()).expect("apply");
        assert_eq!(notes.len(), 1, "{notes:?}");
        for keep in [
            "# My Codex config\n",
            "model = \"o3\"   # keep me\n",
            "# Other providers\n[model_providers.ollama]\nname = \"Ollama\"\nbase_url = \"http://localhost:11434/v1\"\n",
            "# comment inside our block\n",
            "base_url = \"https://b.example/v1\"  # old\n",
            "http_headers = { \"X-Team\" = \"a\" }\n",
            "[profiles.fast]\nmodel = \"gpt-5-mini\"  # trailing\n",
        ] {
            assert!(out.contains(keep), "lost {keep:?} in:\n{out}");
        }
        assert!(!out.contains("env_key"));
        let (again, notes) = apply(&out, Path::new("c.toml"), &plan()).expect("apply");
        assert_eq!(again, out);
        assert!(notes.is_empty());
    }

    #[test]
    fn set_default_and_model() {
        let p = SetupPlan {
            set_default: true,
            model: Some("gpt-5.5".into()),
            ..plan()
        };
        let (out, _) = apply(HAND_WRITTEN, Path::new("c.toml"), &p).expect("apply");
        let doc: toml::Table = toml::from_str(&out).expect("valid");
        assert_eq!(doc["model_provider"].as_str(), Some("tollgate"));
        assert_eq!(doc["model"].as_str(), Some("gpt-5.5"));
        assert!(out.contains("model = \"gpt-5.5\"   # keep me\n"), "{out}");
    }

    #[test]
    fn inline_provider_is_converted() {
        let src = "[model_providers]\ntollgate = { name = \"T\", base_url = \"x\" }\n";
        let (out, _) = apply(src, Path::new("c.toml"), &plan()).expect("apply");
        let doc: toml::Table = toml::from_str(&out).expect("valid");
        assert_eq!(
            doc["model_providers"]["tollgate"]["name"].as_str(),
            Some("T")
        );
        assert!(doc["model_providers"]["tollgate"]["auth"].is_table());
    }

    #[test]
    fn bad_toml_and_bad_shape() {
        let e = apply("a = \n", Path::new("c.toml"), &plan()).expect_err("parse");
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = apply("model_providers = 3\n", Path::new("c.toml"), &plan()).expect_err("shape");
        assert!(matches!(e, SetupError::Shape { .. }));
    }

    #[test]
    fn diff_shows_changes_only() {
        let d = diff("a\nb\nc\nd\ne\nf\ng\n", "a\nb\nc\nX\ne\nf\ng\n", "f");
        assert_eq!(
            d,
            "--- f\n+++ f (after setup)\n@@ -2 +2 @@\n b\n c\n-d\n+X\n e\n f\n"
        );
        assert_eq!(diff("a\n", "a\n", "f"), "--- f\n+++ f (after setup)\n");
    }
}
