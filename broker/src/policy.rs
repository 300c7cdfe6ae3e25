//! The policy: which verified identity gets which grant.
//!
//! Rules are evaluated top to bottom and the **first matching rule decides**, allow or deny. An identity no
//! rule matches is denied. This is the firewall order operators already know, so putting a `deny` above a
//! broader `allow` carves out an exception.

use crate::config::{ConfigError, Source};
use crate::identity::VerifiedIdentity;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use tollgate::grant::{IdentityKind, Provenance, RateLimits};
use tollgate::{Grant, ModelPattern};
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(default)]
    effect: Effect,
    #[serde(rename = "match")]
    matcher: RawMatch,
    /// Principal name template: `{subject}`, `{attr.NAME}`. Default `{subject}`.
    principal: Option<String>,
    team: Option<String>,
    org: Option<String>,
    #[serde(default)]
    models: Vec<String>,
    #[serde(default)]
    budgets: Vec<String>,
    max_ttl_secs: Option<u64>,
    requests_per_minute: Option<u32>,
    tokens_per_minute: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    kind: IdentityKind,
    /// Glob on the verified subject. Default `*`.
    subject: Option<String>,
    /// Glob on the issuer (OIDC `iss`, STS endpoint). Default: any.
    issuer: Option<String>,
    /// Attribute name → glob or list of globs; every listed attribute must have a value matching one glob.
    #[serde(default)]
    attributes: BTreeMap<String, OneOrMany>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    #[default]
    Allow,
    Deny,
}

/// A validated rule.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub effect: Effect,
    pub kind: IdentityKind,
    pub subject: ModelPattern,
    pub issuer: Option<ModelPattern>,
    pub attributes: BTreeMap<String, Vec<ModelPattern>>,
    pub principal: Template,
    pub team: Option<Template>,
    pub org: Option<Template>,
    pub models: Vec<ModelPattern>,
    pub budgets: Vec<String>,
    pub max_ttl_secs: Option<u64>,
    pub rate: RateLimits,
    /// 1-based line of the rule in its file, for `policy explain`.
    pub line: usize,
}

/// A validated policy.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub rules: Vec<Rule>,
    /// Per rule: the version of the decision it makes — a digest of its own text and of every rule before
    /// it. With first-match rules, an identity's grant can only change if one of those changed, so a token
    /// carries the version of the rule that decided it (`pv`) and is outdated exactly when that changed.
    versions: std::collections::HashMap<String, String>,
}

/// What the policy decided for an identity.
#[derive(Clone, Debug)]
pub enum Decision {
    Allow {
        grant: Box<Grant>,
        max_ttl_secs: Option<u64>,
        rule: String,
    },
    /// An explicit deny rule matched.
    Deny { rule: String },
    /// No rule matched: deny by default.
    NoMatch,
}

/// One rule's part in an explanation.
#[derive(Clone, Debug)]
pub struct Step {
    pub rule: String,
    pub line: usize,
    pub effect: Effect,
    pub outcome: StepOutcome,
}

#[derive(Clone, Debug)]
pub enum StepOutcome {
    /// The rule did not apply, and why.
    Skipped(String),
    /// The rule matched and decided.
    Decided,
}

/// A `{subject}` / `{attr.NAME}` template, validated at load.
#[derive(Clone, Debug)]
pub struct Template(String);

impl Template {
    fn parse(t: &str) -> Result<Self, String> {
        let mut rest = t;
        while let Some(open) = rest.find('{') {
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed '{{' in template {t:?}"))?
                + open;
            let var = &rest[open + 1..close];
            if var != "subject"
                && var != "issuer"
                && var.strip_prefix("attr.").is_none_or(str::is_empty)
            {
                return Err(format!(
                    "unknown variable {{{var}}} in template {t:?} (use {{subject}}, {{issuer}} or {{attr.NAME}})"
                ));
            }
            rest = &rest[close + 1..];
        }
        if t.trim().is_empty() {
            return Err("template must not be empty".into());
        }
        Ok(Template(t.to_string()))
    }

    /// Render against an identity; `None` if a referenced attribute is missing.
    pub fn render(&self, id: &VerifiedIdentity) -> Option<String> {
        let mut out = String::new();
        let mut rest = self.0.as_str();
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let close = rest[open..].find('}')? + open;
            let var = &rest[open + 1..close];
            match var {
                "subject" => out.push_str(&id.subject),
                "issuer" => out.push_str(id.issuer.as_deref()?),
                _ => out.push_str(id.attributes.get(var.strip_prefix("attr.")?)?.first()?),
            }
            rest = &rest[close + 1..];
        }
        out.push_str(rest);
        Some(out)
    }
}

impl Policy {
    /// The version of the decisions `rule` makes (see [`Policy::versions`]); `None` if there is no such rule.
    pub fn rule_version(&self, rule: &str) -> Option<&str> {
        self.versions.get(rule).map(String::as_str)
    }

    /// Whether any rule's decisions differ between this policy and `other`.
    pub fn versions_differ(&self, other: &Policy) -> bool {
        self.versions != other.versions
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::from_source(&Source::read(path)?)
    }

    pub fn from_source(s: &Source) -> Result<Self, ConfigError> {
        let raw: RawPolicy = s.parse()?;
        let mut rules = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        let mut versions = std::collections::HashMap::new();
        let mut prefix = <sha2::Sha256 as sha2::Digest>::new();
        // A rule's text runs from its `[[rule]]` header to the next one's (or the end of the file).
        let starts: Vec<usize> = raw.rule.iter().map(|r| r.span().start).collect();
        for (i, r) in raw.rule.into_iter().enumerate() {
            let span = r.span();
            {
                use sha2::Digest;
                let end = starts.get(i + 1).copied().unwrap_or(s.text.len());
                prefix.update(s.text.get(span.start..end).unwrap_or_default().as_bytes());
                prefix.update([0u8]);
                versions.insert(
                    r.get_ref().name.clone(),
                    hex::encode(&prefix.clone().finalize()[..8]),
                );
            }
            let line = s.line_col(span.start).0;
            let r = r.into_inner();
            let err = |field: &str, m: String| {
                s.error_at(span.clone(), &format!("rule[{}].{field}", r.name), m)
            };
            if !names.insert(r.name.clone()) {
                return Err(err("name", "duplicate rule name".into()));
            }
            let glob =
                |field: &str, g: &str| ModelPattern::new(g).map_err(|e| err(field, e.to_string()));
            let mut attributes = BTreeMap::new();
            for (k, v) in &r.matcher.attributes {
                let globs = match v {
                    OneOrMany::One(g) => vec![glob("match.attributes", g)?],
                    OneOrMany::Many(gs) if gs.is_empty() => {
                        return Err(err("match.attributes", format!("{k}: empty list")));
                    }
                    OneOrMany::Many(gs) => gs
                        .iter()
                        .map(|g| glob("match.attributes", g))
                        .collect::<Result<_, _>>()?,
                };
                attributes.insert(k.clone(), globs);
            }
            let tpl = |field: &str, t: &str| Template::parse(t).map_err(|m| err(field, m));
            if r.effect == Effect::Allow && r.models.is_empty() {
                return Err(err(
                    "models",
                    "an allow rule must list at least one model pattern".into(),
                ));
            }
            if let Some(t) = r.max_ttl_secs
                && (t == 0 || t > crate::config::TTL_CEILING_SECS)
            {
                return Err(err(
                    "max_ttl_secs",
                    format!("must be between 1 and {}", crate::config::TTL_CEILING_SECS),
                ));
            }
            if r.requests_per_minute == Some(0) || r.tokens_per_minute == Some(0) {
                return Err(err(
                    "requests_per_minute",
                    "a rate of 0 would refuse everything; use effect = \"deny\"".into(),
                ));
            }
            rules.push(Rule {
                effect: r.effect,
                kind: r.matcher.kind,
                subject: glob("match.subject", r.matcher.subject.as_deref().unwrap_or("*"))?,
                issuer: r
                    .matcher
                    .issuer
                    .as_deref()
                    .map(|i| glob("match.issuer", i))
                    .transpose()?,
                attributes,
                principal: tpl("principal", r.principal.as_deref().unwrap_or("{subject}"))?,
                team: r.team.as_deref().map(|t| tpl("team", t)).transpose()?,
                org: r.org.as_deref().map(|t| tpl("org", t)).transpose()?,
                models: r
                    .models
                    .iter()
                    .map(|m| glob("models", m))
                    .collect::<Result<_, _>>()?,
                budgets: r.budgets,
                max_ttl_secs: r.max_ttl_secs,
                rate: RateLimits {
                    requests_per_minute: r.requests_per_minute,
                    tokens_per_minute: r.tokens_per_minute,
                },
                line,
                name: r.name,
            });
        }
        Ok(Policy { rules, versions })
    }

    /// Does `rule` match `id`? Returns the reason it does not, for `policy explain`.
    pub fn check_rule(rule: &Rule, id: &VerifiedIdentity) -> Result<(), String> {
        if rule.kind != id.kind {
            return Err(format!("kind is {}, rule wants {}", id.kind, rule.kind));
        }
        if !rule.subject.matches(&id.subject) {
            return Err(format!(
                "subject {:?} does not match {}",
                id.subject, rule.subject
            ));
        }
        if let Some(iss) = &rule.issuer
            && !id.issuer.as_deref().is_some_and(|i| iss.matches(i))
        {
            return Err(format!("issuer {:?} does not match {iss}", id.issuer));
        }
        for (name, globs) in &rule.attributes {
            let values = id
                .attributes
                .get(name)
                .map(Vec::as_slice)
                .unwrap_or_default();
            if !values.iter().any(|v| globs.iter().any(|g| g.matches(v))) {
                return Err(format!(
                    "attribute {name} = {values:?} matches none of {globs:?}"
                ));
            }
        }
        Ok(())
    }

    /// Walk the rules as [`decide`](Self::decide) does and say, for each rule up to the deciding one,
    /// why it did or did not apply (`tollgate-broker policy explain`).
    pub fn explain(&self, id: &VerifiedIdentity) -> (Vec<Step>, Decision) {
        let mut steps = Vec::new();
        for rule in &self.rules {
            let outcome = match Self::check_rule(rule, id) {
                Err(why) => StepOutcome::Skipped(why),
                Ok(()) if rule.effect == Effect::Deny => StepOutcome::Decided,
                Ok(()) => match rule.principal.render(id) {
                    None => StepOutcome::Skipped(format!(
                        "matched, but principal template {:?} names an attribute the identity lacks",
                        rule.principal.0
                    )),
                    Some(_) => StepOutcome::Decided,
                },
            };
            let decided = matches!(outcome, StepOutcome::Decided);
            steps.push(Step {
                rule: rule.name.clone(),
                line: rule.line,
                effect: rule.effect,
                outcome,
            });
            if decided {
                break;
            }
        }
        (steps, self.decide(id))
    }

    /// Decide for a verified identity.
    pub fn decide(&self, id: &VerifiedIdentity) -> Decision {
        for rule in &self.rules {
            if Self::check_rule(rule, id).is_err() {
                continue;
            }
            if rule.effect == Effect::Deny {
                return Decision::Deny {
                    rule: rule.name.clone(),
                };
            }
            let render = |t: &Template| t.render(id);
            let Some(principal) = render(&rule.principal) else {
                // A template referencing a missing attribute cannot name anyone: treat as no match.
                continue;
            };
            let grant = Grant {
                principal,
                team: rule.team.as_ref().and_then(render),
                org: rule.org.as_ref().and_then(render),
                models: rule.models.clone(),
                budgets: rule.budgets.clone(),
                rate: rule.rate.clone(),
                identity: Provenance {
                    kind: id.kind,
                    subject: id.subject.clone(),
                    issuer: id.issuer.clone(),
                    rule: rule.name.clone(),
                },
                attributes: BTreeMap::new(),
            };
            return Decision::Allow {
                grant: Box::new(grant),
                max_ttl_secs: rule.max_ttl_secs,
                rule: rule.name.clone(),
            };
        }
        Decision::NoMatch
    }
}

/// `policy explain` output.
pub struct Explained {
    pub text: String,
    pub allowed: bool,
}

/// Render an explanation for humans.
pub fn explain_text(policy: &Policy, path: &Path, id: &VerifiedIdentity) -> Explained {
    use std::fmt::Write;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "policy {} ({} rule(s)); identity kind={} subject={:?} issuer={} attributes={:?}",
        path.display(),
        policy.rules.len(),
        id.kind,
        id.subject,
        id.issuer.as_deref().unwrap_or("-"),
        id.attributes
    );
    let (steps, decision) = policy.explain(id);
    for s in &steps {
        let effect = match s.effect {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        };
        match &s.outcome {
            StepOutcome::Skipped(why) => {
                let _ = writeln!(
                    t,
                    "  rule {:?} (line {}, {effect}): skipped: {why}",
                    s.rule, s.line
                );
            }
            StepOutcome::Decided => {
                let _ = writeln!(
                    t,
                    "  rule {:?} (line {}, {effect}): MATCHES",
                    s.rule, s.line
                );
            }
        }
    }
    let allowed = match decision {
        Decision::Allow {
            grant,
            max_ttl_secs,
            rule,
        } => {
            let models: Vec<&str> = grant.models.iter().map(ModelPattern::as_str).collect();
            let _ = writeln!(
                t,
                "decision: ALLOW by rule {rule:?}: principal {:?}, team {}, org {}, models [{}], budgets [{}], max_ttl_secs {}",
                grant.principal,
                grant.team.as_deref().unwrap_or("-"),
                grant.org.as_deref().unwrap_or("-"),
                models.join(", "),
                grant.budgets.join(", "),
                max_ttl_secs.map_or("-".to_string(), |v| v.to_string()),
            );
            true
        }
        Decision::Deny { rule } => {
            let _ = writeln!(t, "decision: DENY by rule {rule:?}");
            false
        }
        Decision::NoMatch => {
            let _ = writeln!(t, "decision: DENY: no rule matched (deny by default)");
            false
        }
    };
    Explained { text: t, allowed }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Result<Policy, ConfigError> {
        Policy::from_source(&Source {
            path: "policy.toml".into(),
            text: text.into(),
        })
    }

    fn id(kind: IdentityKind, subject: &str, attrs: &[(&str, &str)]) -> VerifiedIdentity {
        let mut attributes: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in attrs {
            attributes
                .entry((*k).to_string())
                .or_default()
                .push((*v).to_string());
        }
        VerifiedIdentity {
            kind,
            subject: subject.into(),
            issuer: None,
            attributes,
        }
    }

    const P: &str = r#"
[[rule]]
name = "block-intern"
effect = "deny"
match = { kind = "static", subject = "intern-*" }

[[rule]]
name = "devs"
match = { kind = "static", subject = "*", attributes = { group = ["eng-*", "ops"] } }
principal = "dev:{subject}"
team = "{attr.group}"
models = ["gpt-5*"]
max_ttl_secs = 600
requests_per_minute = 30
"#;

    #[test]
    fn first_match_decides_and_deny_by_default() {
        let p = policy(P).expect("valid");
        assert!(matches!(
            p.decide(&id(
                IdentityKind::Static,
                "intern-bob",
                &[("group", "eng-a")]
            )),
            Decision::Deny { .. }
        ));
        match p.decide(&id(IdentityKind::Static, "alice", &[("group", "eng-core")])) {
            Decision::Allow {
                grant,
                max_ttl_secs,
                rule,
            } => {
                assert_eq!(grant.principal, "dev:alice");
                assert_eq!(grant.team.as_deref(), Some("eng-core"));
                assert_eq!(max_ttl_secs, Some(600));
                assert_eq!(rule, "devs");
                assert_eq!(grant.rate.requests_per_minute, Some(30));
            }
            d => panic!("unexpected {d:?}"),
        }
        assert!(matches!(
            p.decide(&id(IdentityKind::Static, "carol", &[("group", "sales")])),
            Decision::NoMatch
        ));
        assert!(matches!(
            p.decide(&id(IdentityKind::Aws, "alice", &[("group", "ops")])),
            Decision::NoMatch
        ));
    }

    #[test]
    fn explain_says_why_each_earlier_rule_did_not_apply() {
        let p = policy(P).expect("valid");
        let (steps, d) = p.explain(&id(IdentityKind::Static, "alice", &[("group", "eng-core")]));
        assert_eq!(steps.len(), 2);
        match &steps[0].outcome {
            StepOutcome::Skipped(why) => assert!(why.contains("intern-*"), "{why}"),
            o => panic!("{o:?}"),
        }
        assert_eq!(steps[0].line, 2);
        assert!(matches!(steps[1].outcome, StepOutcome::Decided));
        assert!(matches!(d, Decision::Allow { .. }));
        let (steps, d) = p.explain(&id(IdentityKind::Static, "carol", &[("group", "sales")]));
        assert!(matches!(d, Decision::NoMatch));
        match &steps[1].outcome {
            StepOutcome::Skipped(why) => assert!(why.contains("attribute group"), "{why}"),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn invalid_policies_name_field_and_line() {
        let e = policy("[[rule]]\nname = \"a\"\nmatch = { kind = \"static\" }\n")
            .expect_err("no models");
        assert!(
            e.to_string().contains("policy.toml:1:") && e.to_string().contains("rule[a].models"),
            "{e}"
        );
        let e =
            policy("\n[[rule]]\nname = \"a\"\nmatch = { kind = \"kerberos\" }\nmodels=[\"*\"]\n")
                .expect_err("kind");
        assert!(e.to_string().contains("kerberos"), "{e}");
        let e = policy("[[rule]]\nname = \"a\"\nmatch = { kind = \"static\" }\nmodels=[\"*\"]\nprincipal = \"{nope}\"\n").expect_err("tpl");
        assert!(e.to_string().contains("unknown variable {nope}"), "{e}");
        let e = policy(
            "[[rule]]\nname = \"a\"\nmatch = { kind = \"static\" }\nmodels=[\"*\"]\nbogus = 1\n",
        )
        .expect_err("unknown");
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
