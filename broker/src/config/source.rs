//! Where config text comes from and how its errors point into it: the file (`Source`, with line and column
//! for any span), the error type, and the injected environment (`Env`: variables and the files the config
//! names). A leaf: every section's validator uses it, and it uses no section.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A configuration error, located in its file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{col}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        col: usize,
        message: String,
    },
}

/// Where a value sits in a source file, for error messages.
#[derive(Clone, Debug)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            // The path as resolved (absolute): a relative one says nothing about where it was looked for.
            path: std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
            source,
        })?;
        Ok(Source {
            path: path.to_path_buf(),
            text,
        })
    }

    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
        let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
        (line, col)
    }

    /// An error at a span, naming the field.
    pub fn error_at(
        &self,
        span: std::ops::Range<usize>,
        field: &str,
        message: impl std::fmt::Display,
    ) -> ConfigError {
        let (line, col) = self.line_col(span.start);
        ConfigError::Invalid {
            path: self.path.clone(),
            line,
            col,
            message: format!("{field}: {message}"),
        }
    }

    /// A number in `1..=max`, or an error at its line naming the field and the range.
    pub fn in_range<T>(&self, v: &toml::Spanned<T>, field: &str, max: T) -> Result<T, ConfigError>
    where
        T: Copy + PartialOrd + From<u8> + std::fmt::Display,
    {
        let n = *v.get_ref();
        if n < T::from(1) || n > max {
            return Err(self.error_at(
                v.span(),
                field,
                format_args!("must be between 1 and {max}"),
            ));
        }
        Ok(n)
    }

    /// Parse the whole file into `T`, mapping TOML/serde errors to file:line:col.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(&self.text).map_err(|e| {
            let (line, col) = e.span().map_or((1, 1), |s| self.line_col(s.start));
            ConfigError::Invalid {
                path: self.path.clone(),
                line,
                col,
                message: e.message().trim().to_string(),
            }
        })
    }

    /// Resolve a path from this file against the file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }
}

/// A number written as a decimal string (exact) or a TOML number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawDecimal {
    Text(String),
    Int(i64),
    Float(f64),
}

impl RawDecimal {
    pub(crate) fn text(&self) -> String {
        match self {
            RawDecimal::Text(s) => s.clone(),
            RawDecimal::Int(i) => i.to_string(),
            RawDecimal::Float(f) => format!("{f}"),
        }
    }
}

/// The environment as the config loader sees it: variables, and the files the config names for secrets
/// (upstream API keys, the Vault token, alert sink URLs and secrets). Injected, so tests never touch the
/// process environment and can serve those files from memory.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;

    /// Read a file the config names (a secret: its text is never put in an error). Default: the real
    /// filesystem.
    fn read_file(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}
