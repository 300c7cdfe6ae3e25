//! `docs/config.md` documents every field of the broker config, and nothing that is not one.
//!
//! The fields are read from the real loader, not from a list kept by hand: every raw config struct is
//! `#[serde(deny_unknown_fields)]`, so a table given an unknown key fails with serde's "unknown field
//! `x`, expected one of `a`, `b`, …", which names every field the table accepts. Each table is probed
//! that way, and each of its fields is probed again as a table, an array of tables and a map of tables to
//! find the nested ones, recursively. A field added to any section without a row in `docs/config.md`
//! fails `every_broker_field_has_a_row`; a row (or any path-like code span) naming a field that no longer
//! exists fails `every_documented_path_exists`.
//!
//! Path notation (as in the doc): `a.b` is key `b` of table `[a]`; `a[].b` is key `b` of every `[[a]]`
//! table; `a.<name>.b` is key `b` of every `[a.<name>]` table, whose names the operator chooses.

use clap::CommandFactory;
use std::collections::{BTreeMap, BTreeSet};
use tollgate_broker::config::{Config, Source};

/// A key no config table accepts.
const PROBE: &str = "zz_config_reference_probe";

/// The part of `docs/config.md` about the broker config file runs from this heading to the next `## `.
const BROKER_FILE_HEADING: &str = "## Broker config file";
/// The broker's command line and environment.
const BROKER_CLI_HEADING: &str = "## Broker command line and environment";

/// One step from a table to a nested table.
#[derive(Clone, Debug)]
enum Seg {
    /// `[a.key]`
    Key(String),
    /// `[[a.key]]`
    Array(String),
    /// `[a.key.<name>]`
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

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
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
    // The unknown key is the only key of its table, so serde reports it before anything else.
    doc.push_str(&format!("{PROBE} = 1\n"));
    doc
}

/// The loader's error for the probe document of `segs`, if any.
fn load_error(segs: &[Seg]) -> Option<String> {
    let env: BTreeMap<String, String> = BTreeMap::new();
    Config::from_source(
        Source {
            path: "/nonexistent/config-reference/broker.toml".into(),
            text: probe_doc(segs),
        },
        &env,
    )
    .err()
    .map(|e| e.to_string())
}

/// The fields serde lists when the probe key is refused; `None` when the table at `segs` is not a
/// strict struct (a scalar, a list of scalars, a free-form table…).
fn fields_at(segs: &[Seg]) -> Option<Vec<String>> {
    let msg = load_error(segs)?;
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

/// Every field of the broker config.
#[derive(Default, Debug)]
struct Fields {
    /// Path of every key, at any depth (`server.listen`, `routes[].targets`, `routes[].targets[].model`).
    keys: BTreeSet<String>,
    /// Top-level keys that are tables, arrays of tables or maps of tables, with their TOML header
    /// (`[server]`, `[[routes]]`, `[providers.<name>]`).
    sections: BTreeMap<String, String>,
    /// Element paths of nested tables (`routes[]`, `providers.<name>`, `routes[].targets[]`).
    elements: BTreeSet<String>,
}

fn explore(segs: &[Seg], out: &mut Fields) {
    let here = element_path(segs);
    let fields = fields_at(segs).unwrap_or_else(|| {
        panic!(
            "{here:?}: the probe was not refused as an unknown field: {:?}",
            load_error(segs)
        )
    });
    assert!(!fields.is_empty(), "{here:?} lists no fields");
    for f in fields {
        let key = join(&here, &f);
        out.keys.insert(key.clone());
        let nested = [
            Seg::Key(f.clone()),
            Seg::Array(f.clone()),
            Seg::Map(f.clone()),
        ]
        .into_iter()
        .map(|s| {
            let mut p = segs.to_vec();
            p.push(s);
            p
        })
        .find(|p| fields_at(p).is_some());
        if let Some(p) = nested {
            if segs.is_empty() {
                let header = match p.last() {
                    Some(Seg::Array(k)) => format!("[[{k}]]"),
                    Some(Seg::Map(k)) => format!("[{k}.<name>]"),
                    _ => format!("[{f}]"),
                };
                out.sections.insert(f.clone(), header);
            }
            out.elements.insert(element_path(&p));
            explore(&p, out);
        }
    }
}

fn broker_fields() -> Fields {
    let mut out = Fields::default();
    explore(&[], &mut out);
    out
}

fn doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/config.md"))
        .expect("docs/config.md")
}

/// The text from `heading` to the next heading of the same level.
fn part<'a>(doc: &'a str, heading: &str) -> &'a str {
    let start = doc
        .find(&format!("\n{heading}"))
        .unwrap_or_else(|| panic!("docs/config.md has no heading {heading:?}"))
        + 1;
    let level = heading.split(' ').next().unwrap_or("##");
    let body = &doc[start + heading.len()..];
    let end = body
        .find(&format!("\n{level} "))
        .map_or(doc.len(), |e| start + heading.len() + e);
    &doc[start..end]
}

fn code_spans(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

/// The cells of every table row (not the separator rows).
fn rows(part: &str) -> Vec<Vec<&str>> {
    part.lines()
        .map(str::trim)
        .filter(|l| l.starts_with('|') && !l.starts_with("|---") && !l.starts_with("| ---"))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect()
}

/// Code spans that look like a path into the config: the first segment is a top-level key and the rest
/// is keys, `[]` and `<name>`.
fn path_like<'a>(span: &'a str, top: &BTreeSet<&str>) -> Option<&'a str> {
    let first = span.split(['.', '[']).next()?;
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.[]<>".contains(c);
    (top.contains(first) && span.chars().all(allowed)).then_some(span)
}

#[test]
fn the_probe_finds_known_fields_at_every_depth() {
    let f = broker_fields();
    for known in [
        "policy_file",
        "server.listen",
        "server.tls.reload_interval_secs",
        "credentials[].sha256",
        "providers.<name>.api_key_vault.field",
        "routes[].targets[].first_byte_timeout_ms",
        "models.<name>.codex",
        "identity.aws.endpoints[].url",
        "identity.oidc[].bound_claims",
        "identity.azure[].tenants",
        "pricing.unpriced_price.cached_input",
        "pricing.models.<name>.output",
        "budgets[].match",
        "metrics.per_principal",
        "telemetry.otlp_endpoint",
        "audit.checkpoint_interval_secs",
    ] {
        assert!(f.keys.contains(known), "{known} not found in {:#?}", f.keys);
    }
    // Leaves are not taken for tables: a free-form table and a map of strings-or-lists stay leaves.
    assert!(!f.elements.contains("models.<name>.codex"));
    assert!(!f.elements.iter().any(|e| e.contains("bound_claims")));
    assert_eq!(
        f.sections.get("routes").map(String::as_str),
        Some("[[routes]]")
    );
    assert_eq!(
        f.sections.get("providers").map(String::as_str),
        Some("[providers.<name>]")
    );
}

#[test]
fn every_broker_field_has_a_row() {
    let fields = broker_fields();
    let doc = doc();
    let part = part(&doc, BROKER_FILE_HEADING);
    let documented: BTreeSet<&str> = rows(part)
        .iter()
        .filter_map(|r| r.first().and_then(|c| code_spans(c).into_iter().next()))
        .collect();
    // Every key has a row, except the top-level sections, which have a heading.
    let missing: Vec<&String> = fields
        .keys
        .iter()
        .filter(|k| !fields.sections.contains_key(k.as_str()))
        .filter(|k| !documented.contains(k.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/config.md has no row (first cell `path`) under {BROKER_FILE_HEADING:?} for: {missing:#?}"
    );
    let headings: Vec<&str> = part.lines().filter(|l| l.starts_with('#')).collect();
    let no_heading: Vec<&String> = fields
        .sections
        .values()
        .filter(|h| !headings.iter().any(|l| code_spans(l).contains(&h.as_str())))
        .collect();
    assert!(
        no_heading.is_empty(),
        "docs/config.md has no heading with these sections as a code span: {no_heading:#?}"
    );
}

#[test]
fn every_documented_path_exists() {
    let fields = broker_fields();
    let doc = doc();
    let part = part(&doc, BROKER_FILE_HEADING);
    let top: BTreeSet<&str> = fields
        .keys
        .iter()
        .filter(|k| !k.contains(['.', '[']))
        .map(String::as_str)
        .collect();
    let known = |p: &str| fields.keys.contains(p) || fields.elements.contains(p);
    let stale: BTreeSet<&str> = code_spans(part)
        .into_iter()
        .filter_map(|s| path_like(s, &top))
        .filter(|p| !known(p))
        .collect();
    assert!(
        stale.is_empty(),
        "docs/config.md names config paths that do not exist: {stale:#?}"
    );
    // Headings name real sections too.
    for l in part.lines().filter(|l| l.starts_with('#')) {
        for span in code_spans(l) {
            if !span.starts_with('[') {
                continue;
            }
            let inner = span.trim_start_matches('[').trim_end_matches(']');
            let ok = fields.keys.contains(inner)
                || fields.elements.iter().any(|e| e.replace("[]", "") == inner);
            assert!(
                ok,
                "heading {l:?} names {span}, which is not a config table"
            );
        }
    }
}

/// `--flag` names in code spans (`--ttl SECS` → `--ttl`).
fn flags_in<'a>(spans: impl IntoIterator<Item = &'a str>) -> BTreeSet<&'a str> {
    spans
        .into_iter()
        .flat_map(str::split_whitespace)
        .map(|w| w.trim_matches(|c| c == '[' || c == ']'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .collect()
}

#[test]
fn every_broker_flag_is_documented() {
    let doc = doc();
    let part = part(&doc, BROKER_CLI_HEADING);
    let row_spans: Vec<&str> = rows(part)
        .into_iter()
        .flatten()
        .flat_map(code_spans)
        .collect();
    let documented = flags_in(row_spans.iter().copied());
    let cmd = tollgate_broker::cli::Cli::command();
    let mut flags = BTreeSet::new();
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        let flag = format!("--{long}");
        assert!(
            documented.contains(flag.as_str()),
            "{flag} has no table row under {BROKER_CLI_HEADING:?}"
        );
        if let Some(env) = arg.get_env() {
            let env = env.to_string_lossy();
            assert!(
                row_spans.contains(&env.as_ref()),
                "{env} (of {flag}) has no table row under {BROKER_CLI_HEADING:?}"
            );
        }
        flags.insert(flag);
    }
    // And nothing stale: every flag named in this part is one of the broker's (or of a subcommand).
    fn walk(c: &clap::Command, out: &mut BTreeSet<String>) {
        out.extend(
            c.get_arguments()
                .filter_map(|a| a.get_long().map(|l| format!("--{l}"))),
        );
        for s in c.get_subcommands() {
            walk(s, out);
        }
    }
    walk(&cmd, &mut flags);
    flags.extend(["--help".to_string(), "--version".to_string()]);
    let stale: Vec<&str> = flags_in(code_spans(part))
        .into_iter()
        .filter(|f| !flags.contains(*f))
        .collect();
    assert!(
        stale.is_empty(),
        "{BROKER_CLI_HEADING:?} names flags tollgate-broker does not have: {stale:?}"
    );
}
