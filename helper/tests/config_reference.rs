//! `docs/config.md` documents every setting of `tollgate-token`, and nothing that is not one.
//!
//! - Config-file keys are read from the real parser, not from a list kept by hand: every raw struct is
//!   `#[serde(deny_unknown_fields)]`, so a table given an unknown key fails with serde's "unknown field
//!   `x`, expected one of `a`, `b`, …". Each table is probed that way, and each field again as a table,
//!   an array of tables and a map of tables, recursively.
//! - Flags come from the clap definition (`Cli::command()`), every global one.
//! - Environment variables are the upper-case string literals in `helper/src` outside the test modules
//!   (`env.var("TOLLGATE_BROKER")`, `env_bool(env, "TOLLGATE_NO_CACHE")`, …).
//!
//! Each must appear as a code span in a table row of the helper part of `docs/config.md`; each
//! `profiles.…` path, `--flag` and `TOLLGATE_*` variable the helper part names must exist.

use clap::CommandFactory;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use tollgate_token::config::RawConfig;

/// A key no config table accepts.
const PROBE: &str = "zz_config_reference_probe";
/// The helper's part of `docs/config.md` runs from this heading to the end.
const HELPER_HEADING: &str = "## Helper (`tollgate-token`)";

#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    Array(String),
    Map(String),
}

fn element_path(segs: &[Seg]) -> String {
    segs.iter()
        .map(|s| match s {
            Seg::Key(k) => k.clone(),
            Seg::Array(k) => format!("{k}[]"),
            Seg::Map(k) => format!("{k}.<name>"),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// A config document that puts the probe key into the table `segs` leads to.
fn probe_doc(segs: &[Seg]) -> String {
    let mut doc = String::new();
    let mut dotted: Vec<String> = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        match s {
            Seg::Key(k) => dotted.push(k.clone()),
            Seg::Map(k) => {
                dotted.push(k.clone());
                dotted.push("probe-name".into());
            }
            Seg::Array(k) => {
                dotted.push(k.clone());
                doc.push_str(&format!("[[{}]]\n", dotted.join(".")));
            }
        }
        if i + 1 == segs.len() && !matches!(s, Seg::Array(_)) {
            doc.push_str(&format!("[{}]\n", dotted.join(".")));
        }
    }
    doc.push_str(&format!("{PROBE} = 1\n"));
    doc
}

/// The fields serde lists when the probe key is refused; `None` when the table at `segs` is not a
/// strict struct.
fn fields_at(segs: &[Seg]) -> Option<Vec<String>> {
    let msg = RawConfig::parse(&probe_doc(segs), Path::new("config.toml"))
        .err()?
        .to_string();
    let rest = msg.split_once(&format!("unknown field `{PROBE}`"))?.1;
    if rest.contains("there are no fields") {
        return Some(Vec::new());
    }
    let listed = rest.split_once("expected")?.1;
    Some(
        listed
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect(),
    )
}

/// Path of every key of the config file, at any depth.
fn explore(segs: &[Seg], keys: &mut BTreeSet<String>) {
    let here = element_path(segs);
    let fields = fields_at(segs)
        .unwrap_or_else(|| panic!("{here:?}: the probe was not refused as an unknown field"));
    assert!(!fields.is_empty(), "{here:?} lists no fields");
    for f in fields {
        keys.insert(if here.is_empty() {
            f.clone()
        } else {
            format!("{here}.{f}")
        });
        let nested = [Seg::Key(f.clone()), Seg::Array(f.clone()), Seg::Map(f)]
            .into_iter()
            .map(|s| {
                let mut p = segs.to_vec();
                p.push(s);
                p
            })
            .find(|p| fields_at(p).is_some());
        if let Some(p) = nested {
            explore(&p, keys);
        }
    }
}

fn file_keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    explore(&[], &mut keys);
    keys
}

/// Long names of the global flags (`--broker`, …), without `--help`/`--version`.
fn global_flags() -> BTreeSet<String> {
    tollgate_token::Cli::command()
        .get_arguments()
        .filter(|a| a.is_global_set())
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect()
}

/// Every long flag of the command and its subcommands.
fn all_flags() -> BTreeSet<String> {
    fn walk(c: &clap::Command, out: &mut BTreeSet<String>) {
        out.extend(
            c.get_arguments()
                .filter_map(|a| a.get_long().map(|l| format!("--{l}"))),
        );
        for s in c.get_subcommands() {
            walk(s, out);
        }
    }
    let mut out = BTreeSet::new();
    walk(&tollgate_token::Cli::command(), &mut out);
    // Added by clap when the command is built.
    out.extend(["--help".to_string(), "--version".to_string()]);
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Environment variables the helper reads: `"HOME"` and every upper-case string literal with an
/// underscore in `helper/src`, outside `#[cfg(test)]` modules (which come last in each file).
fn env_vars() -> BTreeSet<String> {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let mut out = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read source");
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for lit in code.split('"').skip(1).step_by(2) {
            let env_like = lit.contains('_')
                && lit
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                && lit.starts_with(|c: char| c.is_ascii_uppercase());
            if (env_like || lit == "HOME") && lit != "CARGO_PKG_VERSION" {
                out.insert(lit.to_string());
            }
        }
    }
    out
}

fn helper_part() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/config.md"))
        .expect("docs/config.md");
    let start = doc
        .find(&format!("\n{HELPER_HEADING}"))
        .unwrap_or_else(|| panic!("docs/config.md has no heading {HELPER_HEADING:?}"));
    doc[start..].to_string()
}

fn code_spans(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

/// The code spans of every table row in the helper part.
fn row_spans(part: &str) -> BTreeSet<&str> {
    part.lines()
        .map(str::trim)
        .filter(|l| l.starts_with('|'))
        .flat_map(code_spans)
        .collect()
}

/// `--flag` names in the code spans (`--ttl SECS` → `--ttl`).
fn flags_in<'a>(spans: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    spans
        .into_iter()
        .flat_map(|s| s.split_whitespace())
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_string)
        .collect()
}

#[test]
fn the_probe_finds_profile_keys_at_every_depth() {
    let keys = file_keys();
    for known in [
        "profiles",
        "profiles.<name>.broker",
        "profiles.<name>.rerun_window_secs",
        "profiles.<name>.chain",
        "profiles.<name>.aws.role_arn",
        "profiles.<name>.vault.jwt_file",
        "profiles.<name>.azure.imds",
    ] {
        assert!(keys.contains(known), "{known} not found in {keys:#?}");
    }
    assert!(global_flags().contains("--broker"));
    assert!(global_flags().contains("--no-cache"));
    let env = env_vars();
    assert!(env.contains("TOLLGATE_BROKER") && env.contains("AWS_REGION"));
    assert!(
        !env.contains("OLD_KEY"),
        "test modules are skipped: {env:#?}"
    );
}

#[test]
fn every_helper_setting_is_documented() {
    let part = helper_part();
    let spans = row_spans(&part);
    let missing_keys: Vec<String> = file_keys()
        .into_iter()
        .filter(|k| k != "profiles")
        .filter(|k| !spans.contains(k.as_str()))
        .collect();
    assert!(
        missing_keys.is_empty(),
        "no table row in the helper part of docs/config.md names these config-file keys: {missing_keys:#?}"
    );
    let documented_flags = flags_in(spans.iter().copied());
    let missing_flags: Vec<String> = global_flags()
        .into_iter()
        .filter(|f| !documented_flags.contains(f))
        .collect();
    assert!(
        missing_flags.is_empty(),
        "no table row in the helper part of docs/config.md names these flags: {missing_flags:#?}"
    );
    let words: BTreeSet<&str> = spans
        .iter()
        .flat_map(|s| s.split([' ', ',', '(', ')', '=']))
        .collect();
    let missing_env: Vec<String> = env_vars()
        .into_iter()
        .filter(|v| !words.contains(v.as_str()))
        .collect();
    assert!(
        missing_env.is_empty(),
        "no table row in the helper part of docs/config.md names these environment variables: {missing_env:#?}"
    );
}

#[test]
fn every_documented_helper_setting_exists() {
    let part = helper_part();
    let all = code_spans(&part);
    let keys = file_keys();
    let stale_keys: BTreeSet<&str> = all
        .iter()
        .copied()
        .filter(|s| s.starts_with("profiles.") && !s.contains([' ', '"', '=']))
        .filter(|s| !keys.contains(*s))
        .collect();
    assert!(
        stale_keys.is_empty(),
        "docs/config.md names config-file keys that do not exist: {stale_keys:#?}"
    );
    let flags = all_flags();
    let stale_flags: Vec<String> = flags_in(all.iter().copied())
        .into_iter()
        .filter(|f| !flags.contains(f))
        .collect();
    assert!(
        stale_flags.is_empty(),
        "docs/config.md names flags tollgate-token does not have: {stale_flags:#?}"
    );
    let env = env_vars();
    let stale_env: BTreeSet<&str> = all
        .iter()
        .flat_map(|s| s.split([' ', ',', '(', ')', '=']))
        .filter(|w| {
            w.starts_with("TOLLGATE_")
                && w.len() > "TOLLGATE_".len()
                && w.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .filter(|w| !env.contains(*w))
        .collect();
    assert!(
        stale_env.is_empty(),
        "docs/config.md names TOLLGATE_* variables the helper does not read: {stale_env:#?}"
    );
}
