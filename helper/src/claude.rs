//! `tollgate-token setup --agent claude-code`: point Claude Code at the broker through its own settings
//! file (`~/.claude/settings.json`, or a project's `.claude/settings.json`).
//!
//! Three settings: `apiKeyHelper` (the command whose output Claude Code sends as its key, in both
//! `x-api-key` and `Authorization: Bearer`), `env.ANTHROPIC_BASE_URL` (the broker; Claude Code appends
//! `/v1/messages`) and `env.CLAUDE_CODE_API_KEY_HELPER_TTL_MS` (how long Claude Code reuses the helper's
//! output before running it again). The file is edited as text: only those values' bytes change (or are
//! inserted, indented like their neighbours), so every other setting, its order and formatting survive.
//! A second run changes nothing.

use crate::config::Settings;
use crate::error::{ConfigError, Exit, HelperError, SetupError};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

/// `setup --agent claude-code [--project [DIR]] [--dry-run]`: write (or show) the three settings.
pub fn run(
    settings: &Settings,
    args: Vec<String>,
    env: &dyn crate::sys::Env,
    project: Option<&Path>,
    dry_run: bool,
    out: &mut dyn Write,
) -> Result<Exit, HelperError> {
    let path = settings_path(env, project).ok_or(ConfigError::NoHome {
        what: "Claude Code's settings.json",
        vars: "CLAUDE_CONFIG_DIR",
    })?;
    let exe = std::env::current_exe().map_err(SetupError::CurrentExe)?;
    let command: Vec<String> = std::iter::once(exe.to_string_lossy().into_owned())
        .chain(args)
        .map(|w| shell_word(&w))
        .collect();
    let plan = ClaudePlan {
        api_key_helper: command.join(" "),
        base_url: settings.broker.clone(),
        ttl_ms: helper_ttl_ms(settings.refresh_margin_secs, settings.ttl_secs),
    };
    let old = crate::setup::read_config(&path)?;
    let new = apply(&old, &path, &plan)?;
    let io_err = HelperError::Stdout;
    let label = path.display().to_string();
    if dry_run {
        if old == new {
            writeln!(out, "{label} is already up to date; nothing would change").map_err(io_err)?;
        } else {
            out.write_all(crate::setup::diff(&old, &new, &label).as_bytes())
                .map_err(io_err)?;
            writeln!(out, "(dry run: nothing written)").map_err(io_err)?;
        }
        return Ok(Exit::Ok);
    }
    if old == new {
        writeln!(out, "{label} is already up to date").map_err(io_err)?;
        return Ok(Exit::Ok);
    }
    crate::setup::write_config(&path, &new)?;
    writeln!(
        out,
        "updated {label}: Claude Code -> {} (apiKeyHelper {}, reused for {} s)",
        plan.base_url,
        plan.api_key_helper,
        plan.ttl_ms / 1000
    )
    .map_err(io_err)?;
    Ok(Exit::Ok)
}

/// What to write.
#[derive(Debug, Clone)]
pub struct ClaudePlan {
    /// The `apiKeyHelper` command line (the helper's absolute path and its pinned arguments, shell-quoted:
    /// Claude Code runs it through a shell).
    pub api_key_helper: String,
    /// The broker root (Claude Code appends `/v1/messages`).
    pub base_url: String,
    /// `CLAUDE_CODE_API_KEY_HELPER_TTL_MS`.
    pub ttl_ms: u64,
}

/// How long Claude Code may reuse a token the helper printed. The helper serves a cached token only
/// while more than `refresh_margin_secs` of its life is left (and a token never lives longer than its
/// TTL), so reusing it for four fifths of the smaller of the two never sends an expired token.
pub fn helper_ttl_ms(refresh_margin_secs: u64, token_ttl_secs: Option<u64>) -> u64 {
    let life = token_ttl_secs.map_or(refresh_margin_secs, |t| t.min(refresh_margin_secs));
    (life.max(5) * 1000 * 4 / 5).max(1000)
}

/// `~/.claude/settings.json` (or `$CLAUDE_CONFIG_DIR/settings.json`, where Claude Code reads it then),
/// or with `project`, `<project>/.claude/settings.json`.
pub fn settings_path(env: &dyn crate::sys::Env, project: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = project {
        return Some(p.join(".claude").join("settings.json"));
    }
    env.path("CLAUDE_CONFIG_DIR")
        .or_else(|| env.path("HOME").map(|h| h.join(".claude")))
        .map(|d| d.join("settings.json"))
}

/// Quote one word for a POSIX shell (Claude Code runs `apiKeyHelper` through one).
pub fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-=:,+@%".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Apply the plan to the settings file's text (empty: no file yet). Returns the new text.
pub fn apply(src: &str, path: &Path, plan: &ClaudePlan) -> Result<String, SetupError> {
    let parse_err = |e: serde_json::Error| SetupError::JsonParse {
        path: path.to_owned(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    };
    let shape = |key: &str| SetupError::JsonShape {
        path: path.to_owned(),
        key: key.to_owned(),
    };
    if src.trim().is_empty() {
        let v = serde_json::json!({
            "apiKeyHelper": plan.api_key_helper,
            "env": {
                "ANTHROPIC_BASE_URL": plan.base_url,
                "CLAUDE_CODE_API_KEY_HELPER_TTL_MS": plan.ttl_ms.to_string(),
            }
        });
        let mut out = serde_json::to_string_pretty(&v).map_err(parse_err)?;
        out.push('\n');
        return Ok(out);
    }
    let doc: Value = serde_json::from_str(src).map_err(parse_err)?;
    if !doc.is_object() {
        return Err(shape("(top level)"));
    }
    let helper = Value::String(plan.api_key_helper.clone()).to_string();
    let mut text = src.to_string();
    text = set_member(&text, &[], "apiKeyHelper", &helper).ok_or_else(|| shape("apiKeyHelper"))?;
    match doc.get("env") {
        None => {
            let env = format!(
                "{{\n{i}{i}\"ANTHROPIC_BASE_URL\": {},\n{i}{i}\"CLAUDE_CODE_API_KEY_HELPER_TTL_MS\": \"{}\"\n{i}}}",
                Value::String(plan.base_url.clone()),
                plan.ttl_ms,
                i = indent_of(&text).unwrap_or("  ")
            );
            text = set_member(&text, &[], "env", &env).ok_or_else(|| shape("env"))?;
        }
        Some(Value::Object(_)) => {
            for (k, v) in [
                ("ANTHROPIC_BASE_URL", plan.base_url.clone()),
                ("CLAUDE_CODE_API_KEY_HELPER_TTL_MS", plan.ttl_ms.to_string()),
            ] {
                text = set_member(&text, &["env"], k, &Value::String(v).to_string())
                    .ok_or_else(|| shape(&format!("env.{k}")))?;
            }
        }
        Some(_) => return Err(shape("env")),
    }
    // What we wrote must read back as what we meant, with everything else as it was.
    let back: Value = serde_json::from_str(&text).map_err(parse_err)?;
    let mut want = doc;
    want["apiKeyHelper"] = Value::String(plan.api_key_helper.clone());
    want["env"]["ANTHROPIC_BASE_URL"] = Value::String(plan.base_url.clone());
    want["env"]["CLAUDE_CODE_API_KEY_HELPER_TTL_MS"] = Value::String(plan.ttl_ms.to_string());
    if back != want {
        return Err(shape("(edit did not read back)"));
    }
    Ok(text)
}

/// One member of a JSON object in the text: where its key starts and where its value lies.
struct Member {
    key: String,
    key_start: usize,
    value: (usize, usize),
}

/// The members of the object whose `{` is at `open`, and the index of its `}`.
fn members(t: &[u8], open: usize) -> Option<(Vec<Member>, usize)> {
    let mut out = Vec::new();
    let mut i = skip_ws(t, open + 1);
    if t.get(i) == Some(&b'}') {
        return Some((out, i));
    }
    loop {
        let key_start = i;
        let key_end = value_end(t, i)?;
        let key: String = serde_json::from_slice(&t[key_start..key_end]).ok()?;
        i = skip_ws(t, key_end);
        if t.get(i) != Some(&b':') {
            return None;
        }
        let vs = skip_ws(t, i + 1);
        let ve = value_end(t, vs)?;
        out.push(Member {
            key,
            key_start,
            value: (vs, ve),
        });
        i = skip_ws(t, ve);
        match t.get(i) {
            Some(b',') => i = skip_ws(t, i + 1),
            Some(b'}') => return Some((out, i)),
            _ => return None,
        }
    }
}

fn skip_ws(t: &[u8], mut i: usize) -> usize {
    while t.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// The end (exclusive) of the JSON value starting at `i`.
fn value_end(t: &[u8], i: usize) -> Option<usize> {
    match t.get(i)? {
        b'"' => {
            let mut j = i + 1;
            loop {
                match t.get(j)? {
                    b'\\' => j += 2,
                    b'"' => return Some(j + 1),
                    _ => j += 1,
                }
            }
        }
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match t.get(j)? {
                    b'"' => {
                        j = value_end(t, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while t
                .get(j)
                .is_some_and(|b| !b.is_ascii_whitespace() && !b",}]".contains(b))
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// The indentation of the top-level object's first member, if it is on its own line.
fn indent_of(text: &str) -> Option<&str> {
    let t = text.as_bytes();
    let open = skip_ws(t, 0);
    let (m, _) = members(t, open)?;
    let first = m.first()?;
    let line_start = text[..first.key_start].rfind('\n')? + 1;
    let ind = &text[line_start..first.key_start];
    ind.bytes().all(|b| b == b' ' || b == b'\t').then_some(ind)
}

/// Set `key` to the JSON `value` in the object at `path` (keys from the top level): the value's bytes
/// replaced when the key exists (untouched when already equal), else a member added after the last one,
/// on its own line when the object's members are.
fn set_member(text: &str, path: &[&str], key: &str, value: &str) -> Option<String> {
    let t = text.as_bytes();
    let mut open = skip_ws(t, 0);
    let mut depth = 1usize;
    for p in path {
        let (ms, _) = members(t, open)?;
        let m = ms.iter().find(|m| m.key == *p)?;
        if t.get(m.value.0) != Some(&b'{') {
            return None;
        }
        open = m.value.0;
        depth += 1;
    }
    let (ms, close) = members(t, open)?;
    if let Some(m) = ms.iter().rev().find(|m| m.key == key) {
        let cur: Value = serde_json::from_slice(&t[m.value.0..m.value.1]).ok()?;
        let new: Value = serde_json::from_str(value).ok()?;
        if cur == new {
            return Some(text.to_string());
        }
        return Some(format!(
            "{}{value}{}",
            &text[..m.value.0],
            &text[m.value.1..]
        ));
    }
    let key_json = Value::String(key.to_string()).to_string();
    match ms.last() {
        None => {
            // An empty object: put the member on its own line, indented one step in.
            let outer = line_indent(text, open);
            let step = indent_of(text).unwrap_or("  ");
            let inner = format!("{outer}{step}");
            let _ = depth;
            Some(format!(
                "{}{{\n{inner}{key_json}: {value}\n{outer}}}{}",
                &text[..open],
                &text[close + 1..]
            ))
        }
        Some(last) => {
            let own_line = text[..last.key_start]
                .rfind('\n')
                .is_some_and(|nl| nl > open);
            let sep = if own_line {
                let line_start = text[..last.key_start].rfind('\n').map_or(0, |n| n + 1);
                format!(",\n{}", &text[line_start..last.key_start])
            } else {
                ", ".to_string()
            };
            Some(format!(
                "{}{sep}{key_json}: {value}{}",
                &text[..last.value.1],
                &text[last.value.1..]
            ))
        }
    }
}

/// The whitespace that starts the line holding byte `i`.
fn line_indent(text: &str, i: usize) -> &str {
    let start = text[..i].rfind('\n').map_or(0, |n| n + 1);
    let line = &text[start..i];
    let n = line.len() - line.trim_start_matches([' ', '\t']).len();
    &line[..n]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> ClaudePlan {
        ClaudePlan {
            api_key_helper: "/opt/tollgate/bin/tollgate-token --broker https://broker.example"
                .into(),
            base_url: "https://broker.example".into(),
            ttl_ms: 240_000,
        }
    }

    fn p() -> &'static Path {
        Path::new("/home/u/.claude/settings.json")
    }

    #[test]
    fn a_new_file_gets_the_three_settings() {
        let out = apply("", p(), &plan()).expect("apply");
        let v: Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v["apiKeyHelper"], plan().api_key_helper);
        assert_eq!(v["env"]["ANTHROPIC_BASE_URL"], "https://broker.example");
        assert_eq!(v["env"]["CLAUDE_CODE_API_KEY_HELPER_TTL_MS"], "240000");
        assert_eq!(apply(&out, p(), &plan()).expect("again"), out, "idempotent");
    }

    #[test]
    fn every_other_byte_survives_and_a_second_run_changes_nothing() {
        let src = "{\n    \"model\": \"opus\",\n    \"permissions\": {\"allow\": [\"Bash(npm run test:*)\"], \"deny\": []},\n    \"env\": {\n        \"DISABLE_TELEMETRY\": \"1\",\n        \"ANTHROPIC_BASE_URL\": \"https://old.example\"\n    },\n    \"apiKeyHelper\": \"~/bin/old-helper\",\n    \"hooks\": {}\n}\n";
        let out = apply(src, p(), &plan()).expect("apply");
        let want = "{\n    \"model\": \"opus\",\n    \"permissions\": {\"allow\": [\"Bash(npm run test:*)\"], \"deny\": []},\n    \"env\": {\n        \"DISABLE_TELEMETRY\": \"1\",\n        \"ANTHROPIC_BASE_URL\": \"https://broker.example\",\n        \"CLAUDE_CODE_API_KEY_HELPER_TTL_MS\": \"240000\"\n    },\n    \"apiKeyHelper\": \"/opt/tollgate/bin/tollgate-token --broker https://broker.example\",\n    \"hooks\": {}\n}\n";
        assert_eq!(out, want);
        assert_eq!(apply(&out, p(), &plan()).expect("again"), out);
    }

    #[test]
    fn members_are_added_where_missing_in_any_layout() {
        for src in [
            "{}",
            "{ }\n",
            "{\"theme\":\"dark\"}",
            "{\n  \"theme\": \"dark\",\n  \"env\": {}\n}\n",
            "{\n\t\"a\": [1, {\"b\": \"}\\\"\"}]\n}",
        ] {
            let out = apply(src, p(), &plan()).unwrap_or_else(|e| panic!("{src}: {e}"));
            let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"));
            let old: Value = serde_json::from_str(src).expect("src");
            for (k, val) in old.as_object().expect("obj") {
                if k != "env" {
                    assert_eq!(&v[k], val, "{src}");
                }
            }
            assert_eq!(
                v["env"]["CLAUDE_CODE_API_KEY_HELPER_TTL_MS"], "240000",
                "{out}"
            );
            assert_eq!(apply(&out, p(), &plan()).expect("again"), out, "{src}");
        }
    }

    #[test]
    fn refuses_what_it_cannot_edit_safely() {
        assert!(matches!(
            apply("{\"a\":", p(), &plan()),
            Err(SetupError::JsonParse { .. })
        ));
        assert!(matches!(
            apply("[]", p(), &plan()),
            Err(SetupError::JsonShape { .. })
        ));
        assert!(matches!(
            apply("{\"env\": \"x\"}", p(), &plan()),
            Err(SetupError::JsonShape { key, .. }) if key == "env"
        ));
    }

    #[test]
    fn ttl_and_quoting() {
        assert_eq!(helper_ttl_ms(300, None), 240_000);
        assert_eq!(helper_ttl_ms(300, Some(120)), 96_000);
        assert_eq!(
            shell_word("/usr/bin/tollgate-token"),
            "/usr/bin/tollgate-token"
        );
        assert_eq!(shell_word("/a b/it's"), r"'/a b/it'\''s'");
    }
}
