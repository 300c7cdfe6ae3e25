//! Model patterns: `gpt-5*`, `claude-?-sonnet`, `*`. A tiny glob over model names.
//!
//! `*` matches any run of characters (including none), `?` exactly one character; everything else matches
//! itself, case-sensitively (provider model ids are case-sensitive).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A validated model glob.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ModelPattern(String);

/// Why a pattern was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    #[error("model pattern is empty")]
    Empty,
    #[error("model pattern {0:?} contains whitespace or control characters")]
    BadChar(String),
    #[error("model pattern {0:?} is longer than 200 characters")]
    TooLong(String),
}

impl ModelPattern {
    /// Parse and validate a pattern.
    pub fn new(pattern: impl Into<String>) -> Result<Self, PatternError> {
        let p = pattern.into();
        if p.is_empty() {
            return Err(PatternError::Empty);
        }
        if p.len() > 200 {
            return Err(PatternError::TooLong(p));
        }
        if p.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(PatternError::BadChar(p));
        }
        Ok(Self(p))
    }

    /// The pattern text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when the pattern has no wildcard, i.e. names exactly one model.
    pub fn is_literal(&self) -> bool {
        !self.0.contains(['*', '?'])
    }

    /// Does `name` match this pattern?
    pub fn matches(&self, name: &str) -> bool {
        glob_match(self.0.as_bytes(), name.as_bytes())
    }
}

/// Iterative glob matcher with single-star backtracking: O(len(p) * len(s)) worst case, no recursion.
pub fn glob_match(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

impl TryFrom<String> for ModelPattern {
    type Error = PatternError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<ModelPattern> for String {
    fn from(p: ModelPattern) -> Self {
        p.0
    }
}

impl fmt::Debug for ModelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for ModelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(p: &str, s: &str) -> bool {
        ModelPattern::new(p).expect("valid").matches(s)
    }

    #[test]
    fn globs() {
        assert!(m("gpt-5*", "gpt-5"));
        assert!(m("gpt-5*", "gpt-5.5-codex"));
        assert!(!m("gpt-5*", "gpt-4o"));
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("claude-?-sonnet", "claude-4-sonnet"));
        assert!(!m("claude-?-sonnet", "claude-45-sonnet"));
        assert!(m("*mini*", "gpt-4o-mini-2024"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
        assert!(!m("GPT-5*", "gpt-5"));
        assert!(m("exact", "exact"));
        assert!(!m("exact", "exact2"));
    }

    #[test]
    fn rejects_bad_patterns() {
        assert_eq!(ModelPattern::new(""), Err(PatternError::Empty));
        assert!(matches!(
            ModelPattern::new("a b"),
            Err(PatternError::BadChar(_))
        ));
        assert!(matches!(
            ModelPattern::new("x".repeat(201)),
            Err(PatternError::TooLong(_))
        ));
    }

    proptest! {
        #[test]
        fn literal_matches_only_itself(a in "[a-z0-9.-]{1,20}", b in "[a-z0-9.-]{1,20}") {
            let p = ModelPattern::new(a.clone()).expect("valid");
            prop_assert!(p.matches(&a));
            prop_assert_eq!(p.matches(&b), a == b);
        }

        #[test]
        fn prefix_star_is_starts_with(a in "[a-z0-9.-]{0,10}", s in "[a-z0-9.-]{0,20}") {
            let p = ModelPattern::new(format!("{a}*")).expect("valid");
            prop_assert_eq!(p.matches(&s), s.starts_with(&a));
        }
    }
}
