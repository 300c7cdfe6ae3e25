//! `[models.<name>]`: per-model Codex metadata served by `GET /v1/models` (opt-in, see codex-models.md).

use super::source::{ConfigError, Source};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModelMeta {
    /// Codex `ModelInfo` entry, passed through verbatim in `GET /v1/models` → `models`.
    codex: Option<toml::Table>,
}

/// The Codex `ModelInfo` entries by model name, each with its `slug` (the name unless given).
pub(super) fn validate(
    s: &Source,
    raw: &BTreeMap<String, RawModelMeta>,
) -> Result<BTreeMap<String, serde_json::Value>, ConfigError> {
    let mut codex_models = BTreeMap::new();
    for (name, meta) in raw {
        if let Some(codex) = &meta.codex {
            let mut v = serde_json::to_value(codex)
                .map_err(|e| s.error_at(0..0, &format!("models.{name}.codex"), e))?;
            if let Some(obj) = v.as_object_mut() {
                obj.entry("slug")
                    .or_insert_with(|| serde_json::Value::String(name.clone()));
            }
            codex_models.insert(name.clone(), v);
        }
    }
    Ok(codex_models)
}
