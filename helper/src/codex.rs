//! Reading back what `setup` wrote: the arguments Codex's config gives the helper.
//!
//! Codex runs `[model_providers.<id>.auth] command` with `args`, and those args (`--broker`,
//! `--credential-file`, `--profile`…) decide which cache slot its token lives in. `status` and `refresh`
//! run by hand, without them, so they read them from `$CODEX_HOME/config.toml` (else
//! `~/.codex/config.toml`): `tollgate-token status` then reports on the very token Codex uses, and
//! `refresh` replaces that one. Codex's config stays the one place these settings live; `setup` does
//! not write a second copy that could drift from it.

use crate::config::Flags;
use crate::error::{ConfigError, one_line};
use crate::sys::Env;
use clap::Parser;
use std::path::{Path, PathBuf};

/// The executable name `setup` writes (as an absolute path) into `auth.command`.
const HELPER_NAME: &str = "tollgate-token";

/// A provider in Codex's config whose auth command is this helper.
#[derive(Debug, Clone)]
pub struct CodexProvider {
    pub config_path: PathBuf,
    pub id: String,
    /// The helper flags in its `auth.args`.
    pub flags: Flags,
}

/// Just the helper's global flags, to parse `auth.args` exactly as the helper itself would.
#[derive(Debug, Parser)]
#[command(name = "tollgate-token", no_binary_name = true)]
struct ArgsOnly {
    #[command(flatten)]
    flags: Flags,
}

/// Find the provider to read: `wanted` if given (it must exist), else the top-level `model_provider` if it
/// runs this helper, else one named `tollgate` that does, else the only one that does. `Ok(None)` when
/// there is no Codex config or no such provider; `notes` get what the user should know (a config that does
/// not parse, several candidates).
pub fn find_provider(
    env: &dyn Env,
    wanted: Option<&str>,
    exe: Option<&Path>,
    notes: &mut Vec<String>,
) -> Result<Option<CodexProvider>, ConfigError> {
    let Some(path) = crate::setup::codex_config_path(env) else {
        return Ok(None);
    };
    let missing = |id: &str| ConfigError::NoCodexProvider {
        provider: id.to_owned(),
        path: path.clone(),
    };
    let src = match std::fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return match wanted {
                Some(id) => Err(missing(id)),
                None => Ok(None),
            };
        }
        Err(e) => {
            notes.push(format!(
                "cannot read Codex's config {}: {e}",
                path.display()
            ));
            return Ok(None);
        }
    };
    let doc: toml::Table = match toml::from_str(&src) {
        Ok(d) => d,
        Err(e) => {
            notes.push(format!(
                "ignoring Codex's config {}: {}",
                path.display(),
                one_line(e.message())
            ));
            return Ok(None);
        }
    };
    let providers = doc.get("model_providers").and_then(toml::Value::as_table);
    let auth_of = |id: &str| {
        providers
            .and_then(|p| p.get(id))
            .and_then(|p| p.get("auth"))
            .and_then(toml::Value::as_table)
    };
    let ours: Vec<&String> = providers
        .map(|p| {
            p.keys()
                .filter(|id| {
                    auth_of(id)
                        .and_then(|a| a.get("command"))
                        .and_then(toml::Value::as_str)
                        .is_some_and(|c| runs_this_helper(c, exe))
                })
                .collect()
        })
        .unwrap_or_default();
    let id = match wanted {
        Some(id) => {
            auth_of(id).ok_or_else(|| missing(id))?;
            id.to_owned()
        }
        None => {
            let default = doc.get("model_provider").and_then(toml::Value::as_str);
            match default.filter(|d| ours.iter().any(|o| o == d)).or_else(|| {
                ours.iter()
                    .find(|o| o.as_str() == "tollgate")
                    .map(|o| o.as_str())
            }) {
                Some(id) => id.to_owned(),
                None => match ours.as_slice() {
                    [] => return Ok(None),
                    [one] => (*one).clone(),
                    several => {
                        notes.push(format!(
                            "several providers in {} run tollgate-token ({}); pass --provider-id to pick one",
                            path.display(),
                            several
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                        return Ok(None);
                    }
                },
            }
        }
    };
    let args_error = |message: String| ConfigError::CodexArgs {
        provider: id.clone(),
        path: path.clone(),
        message,
    };
    let args: Vec<String> = match auth_of(&id).and_then(|a| a.get("args")) {
        None => Vec::new(),
        Some(toml::Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| args_error("`args` must be a list of strings".into()))?,
        Some(_) => return Err(args_error("`args` must be a list of strings".into())),
    };
    let parsed = ArgsOnly::try_parse_from(&args).map_err(|e| {
        let text = e.render().to_string();
        args_error(one_line(text.lines().next().unwrap_or_default()))
    })?;
    Ok(Some(CodexProvider {
        config_path: path,
        id,
        flags: parsed.flags,
    }))
}

/// `command` is this executable, or any executable named `tollgate-token`.
fn runs_this_helper(command: &str, exe: Option<&Path>) -> bool {
    let p = Path::new(command);
    p.file_name().is_some_and(|n| n == HELPER_NAME)
        || exe.is_some_and(|exe| std::fs::canonicalize(p).is_ok_and(|c| c == exe))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::MapEnv;

    fn with_config(body: &str) -> (tempfile::TempDir, MapEnv) {
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::write(tmp.path().join("config.toml"), body).expect("write");
        let env = MapEnv::new([("CODEX_HOME", tmp.path().to_str().expect("utf8"))]);
        (tmp, env)
    }

    const TWO: &str = r#"
model_provider = "corp"
[model_providers.ollama]
base_url = "http://localhost:11434/v1"
[model_providers.tollgate.auth]
command = "/opt/bin/tollgate-token"
args = ["--broker", "https://a.example"]
[model_providers.corp.auth]
command = "/usr/local/bin/tollgate-token"
args = ["--broker", "https://b.example", "--credential-file", "/c/cred", "--profile", "work"]
"#;

    #[test]
    fn picks_the_default_provider_then_tollgate_then_the_only_one() {
        let (_t, env) = with_config(TWO);
        let mut notes = vec![];
        let p = find_provider(&env, None, None, &mut notes)
            .expect("ok")
            .expect("found");
        assert_eq!(p.id, "corp", "the top-level model_provider runs the helper");
        assert_eq!(p.flags.broker.as_deref(), Some("https://b.example"));
        assert_eq!(p.flags.credential_file, Some(PathBuf::from("/c/cred")));
        assert_eq!(p.flags.profile.as_deref(), Some("work"));

        let p = find_provider(&env, Some("tollgate"), None, &mut notes)
            .expect("ok")
            .expect("found");
        assert_eq!(p.flags.broker.as_deref(), Some("https://a.example"));
        assert!(notes.is_empty(), "{notes:?}");

        let (_t, env) = with_config(&TWO.replace("model_provider = \"corp\"", ""));
        let p = find_provider(&env, None, None, &mut notes)
            .expect("ok")
            .expect("found");
        assert_eq!(p.id, "tollgate");

        let (_t, env) = with_config(
            "[model_providers.x.auth]\ncommand = \"/a/tollgate-token\"\n[model_providers.y.auth]\ncommand = \"/b/tollgate-token\"\n",
        );
        assert!(
            find_provider(&env, None, None, &mut notes)
                .expect("ok")
                .is_none()
        );
        assert!(notes[0].contains("several providers"), "{notes:?}");
    }

    #[test]
    fn absent_broken_or_foreign_configs() {
        let mut notes = vec![];
        let env = MapEnv::new([("CODEX_HOME", "/nonexistent-codex-home")]);
        assert!(
            find_provider(&env, None, None, &mut notes)
                .expect("ok")
                .is_none()
        );
        assert!(matches!(
            find_provider(&env, Some("tollgate"), None, &mut notes),
            Err(ConfigError::NoCodexProvider { .. })
        ));
        let (_t, env) = with_config("[model_providers.o]\nbase_url = \"x\"\n");
        assert!(
            find_provider(&env, None, None, &mut notes)
                .expect("ok")
                .is_none()
        );
        assert!(notes.is_empty());
        let (_t, env) = with_config("model = \n");
        assert!(
            find_provider(&env, None, None, &mut notes)
                .expect("ok")
                .is_none()
        );
        assert!(notes[0].starts_with("ignoring Codex's config"), "{notes:?}");
        let (_t, env) = with_config(
            "[model_providers.tollgate.auth]\ncommand = \"tollgate-token\"\nargs = [\"--nope\"]\n",
        );
        let e = find_provider(&env, None, None, &mut notes).expect_err("bad args");
        assert!(e.to_string().contains("--nope"), "{e}");
    }
}
