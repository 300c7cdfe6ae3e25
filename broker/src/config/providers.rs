//! `[providers.<name>]`: upstream providers — their kind, URL, API key source (environment, file or Vault)
//! and time limits.

use super::source::{ConfigError, Env, Source};
use secrecy::SecretString;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvider {
    kind: ProviderKind,
    base_url: Option<String>,
    /// Environment variable holding the upstream API key.
    api_key_env: Option<String>,
    /// File holding the upstream API key (trimmed).
    api_key_file: Option<PathBuf>,
    /// Vault KV v2 secret holding the upstream API key (needs a top-level `[vault]`).
    api_key_vault: Option<RawVaultKey>,
    /// Azure OpenAI `api-version` query value (required for `azure_path = "deployments"`).
    api_version: Option<String>,
    /// Azure OpenAI URL style: `v1` (`{base}/openai/v1/...`, default) or `deployments`
    /// (`{base}/openai/deployments/{deployment}/...`; the target's `model` is the deployment).
    azure_path: Option<AzurePath>,
    /// `max_tokens` for Anthropic when the request sets none. Default 32000.
    max_tokens: Option<u64>,
    /// Total request timeout, milliseconds. Default 600000.
    timeout_ms: Option<u64>,
    /// Connect timeout, milliseconds. Default 5000.
    connect_timeout_ms: Option<u64>,
    /// Time to the first byte of the answer, milliseconds. Default 60000.
    first_byte_timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVaultKey {
    /// KV v2 mount. Default `secret`.
    mount: Option<String>,
    /// Secret path under the mount.
    path: String,
    /// Field of the secret holding the key. Default `api_key`.
    field: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// Canned, well-formed answers; for offline trials.
    Demo,
    /// OpenAI Responses API (pass-through) and Chat Completions.
    Openai,
    /// Azure OpenAI: deployment or v1 URLs, `api-version` query, `api-key` header.
    AzureOpenai,
    /// Any OpenAI-compatible Chat Completions endpoint; Responses requests are translated.
    OpenaiChat,
    /// Anthropic Messages; Responses requests are translated.
    Anthropic,
}

impl ProviderKind {
    /// Every kind (each has an adapter in `proxy/providers/`; its test walks this list).
    pub const ALL: [ProviderKind; 5] = [
        ProviderKind::Demo,
        ProviderKind::Openai,
        ProviderKind::AzureOpenai,
        ProviderKind::OpenaiChat,
        ProviderKind::Anthropic,
    ];

    /// The kind's name as written in the config (`openai-chat`): metric labels, spans, logs.
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Demo => "demo",
            ProviderKind::Openai => "openai",
            ProviderKind::AzureOpenai => "azure-openai",
            ProviderKind::OpenaiChat => "openai-chat",
            ProviderKind::Anthropic => "anthropic",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AzurePath {
    #[default]
    V1,
    Deployments,
}

#[derive(Clone, Debug)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    /// `None` when the provider needs no key (demo) or its key source is unset (then `enabled` is false).
    pub api_key: Option<SecretString>,
    /// Read from Vault KV v2 at start-up and refreshed periodically.
    pub api_key_vault: Option<VaultKeyRef>,
    pub api_version: Option<String>,
    pub azure_path: AzurePath,
    pub max_tokens: Option<u64>,
    pub enabled: bool,
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub first_byte_timeout_ms: u64,
}

/// Where in Vault KV v2 a provider's key lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaultKeyRef {
    pub mount: String,
    pub path: String,
    pub field: String,
}

/// Every provider; `has_vault`: the config has a top-level `[vault]` (needed by `api_key_vault`).
pub(super) fn validate(
    s: &Source,
    raw: &BTreeMap<String, Spanned<RawProvider>>,
    has_vault: bool,
    env: &dyn Env,
) -> Result<BTreeMap<String, ProviderConfig>, ConfigError> {
    let mut providers = BTreeMap::new();
    for (name, p) in raw {
        let span = p.span();
        let p = p.get_ref();
        let field = format!("providers.{name}");
        let base_url = match (p.kind, &p.base_url) {
            (ProviderKind::Demo, _) => String::new(),
            (_, Some(u)) if u.starts_with("http://") || u.starts_with("https://") => {
                u.trim_end_matches('/').to_string()
            }
            (_, Some(_)) => {
                return Err(s.error_at(
                    span,
                    &format!("{field}.base_url"),
                    "must start with http:// or https://",
                ));
            }
            (_, None) => {
                return Err(s.error_at(
                    span,
                    &format!("{field}.base_url"),
                    "is required for this provider kind",
                ));
            }
        };
        let sources = usize::from(p.api_key_env.is_some())
            + usize::from(p.api_key_file.is_some())
            + usize::from(p.api_key_vault.is_some());
        if sources > 1 {
            return Err(s.error_at(
                span,
                &field,
                "set only one of api_key_env, api_key_file and api_key_vault",
            ));
        }
        if p.api_key_vault.is_some() && !has_vault {
            return Err(s.error_at(
                span,
                &format!("{field}.api_key_vault"),
                "needs a top-level [vault] section",
            ));
        }
        if p.kind == ProviderKind::AzureOpenai
            && p.azure_path == Some(AzurePath::Deployments)
            && p.api_version.is_none()
        {
            return Err(s.error_at(
                span,
                &format!("{field}.api_version"),
                "is required with azure_path = \"deployments\"",
            ));
        }
        let api_key = match (&p.api_key_env, &p.api_key_file) {
            (Some(_), Some(_)) => None,
            (Some(var), None) => env.var(var).map(SecretString::from),
            (None, Some(file)) => {
                let path = s.resolve(file);
                match env.read_file(&path) {
                    Ok(k) => Some(SecretString::from(k.trim().to_string())),
                    Err(e) => {
                        return Err(s.error_at(
                            span,
                            &format!("{field}.api_key_file"),
                            format_args!("cannot read {}: {e}", path.display()),
                        ));
                    }
                }
            }
            (None, None) => None,
        };
        let api_key_vault = p.api_key_vault.as_ref().map(|v| VaultKeyRef {
            mount: v.mount.clone().unwrap_or_else(|| "secret".into()),
            path: v.path.clone(),
            field: v.field.clone().unwrap_or_else(|| "api_key".into()),
        });
        let needs_key = p.api_key_env.is_some() || p.api_key_file.is_some();
        let enabled = !needs_key || api_key.is_some();
        providers.insert(
            name.clone(),
            ProviderConfig {
                name: name.clone(),
                kind: p.kind,
                base_url,
                api_key,
                api_key_vault,
                api_version: p.api_version.clone(),
                azure_path: p.azure_path.unwrap_or_default(),
                max_tokens: p.max_tokens,
                enabled,
                timeout_ms: p.timeout_ms.unwrap_or(600_000),
                connect_timeout_ms: p.connect_timeout_ms.unwrap_or(5_000),
                first_byte_timeout_ms: p.first_byte_timeout_ms.unwrap_or(60_000),
            },
        );
    }
    Ok(providers)
}
