//! Upstream API keys from Vault (or OpenBao) KV v2, read at start-up and refreshed periodically.
//!
//! The Vault token and the keys are secrets: they are held in `SecretString`, never logged, never put in an
//! error message (errors name the provider, mount and path only).

use crate::config::{VaultConfig, VaultKeyRef};
use crate::proxy::upstream::KeyCell;
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::time::Duration;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("vault client: {0}")]
    Client(String),
    #[error("vault read {mount}/{path}: {reason}")]
    Read {
        mount: String,
        path: String,
        reason: String,
    },
    #[error("vault secret {mount}/{path} has no string field {field:?}")]
    MissingField {
        mount: String,
        path: String,
        field: String,
    },
}

/// Reads provider keys from KV v2 into their key cells.
pub struct KeyRefresher {
    client: VaultClient,
    keys: Vec<(String, VaultKeyRef, KeyCell)>,
    refresh: Duration,
}

impl KeyRefresher {
    pub fn new(
        cfg: &VaultConfig,
        keys: Vec<(String, VaultKeyRef, KeyCell)>,
    ) -> Result<Self, VaultError> {
        let settings = VaultClientSettingsBuilder::default()
            .address(cfg.address.as_str())
            .token(cfg.token.expose_secret())
            .build()
            .map_err(|e| VaultError::Client(e.to_string()))?;
        let client = VaultClient::new(settings).map_err(|e| VaultError::Client(e.to_string()))?;
        Ok(KeyRefresher {
            client,
            keys,
            refresh: Duration::from_secs(cfg.refresh_secs),
        })
    }

    /// Read one key.
    pub async fn read(&self, key: &VaultKeyRef) -> Result<SecretString, VaultError> {
        let data: HashMap<String, serde_json::Value> =
            vaultrs::kv2::read(&self.client, &key.mount, &key.path)
                .await
                .map_err(|e| VaultError::Read {
                    mount: key.mount.clone(),
                    path: key.path.clone(),
                    // vaultrs errors carry status and Vault's error list, never the secret data.
                    reason: short_reason(&e),
                })?;
        match data.get(&key.field).and_then(serde_json::Value::as_str) {
            Some(s) if !s.is_empty() => Ok(SecretString::from(s.to_string())),
            _ => Err(VaultError::MissingField {
                mount: key.mount.clone(),
                path: key.path.clone(),
                field: key.field.clone(),
            }),
        }
    }

    /// Read every key once; a failure keeps the previous key (if any) and is logged.
    pub async fn refresh_all(&self) -> usize {
        let mut ok = 0;
        for (provider, key, cell) in &self.keys {
            match self.read(key).await {
                Ok(secret) => {
                    *cell
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(secret);
                    ok += 1;
                    tracing::debug!(provider = %provider, "upstream key loaded from vault");
                }
                Err(e) => {
                    tracing::warn!(provider = %provider, error = %e, "cannot load upstream key from vault; keeping the previous one")
                }
            }
        }
        ok
    }

    /// Refresh forever (spawn it).
    pub async fn run(self) {
        loop {
            tokio::time::sleep(self.refresh).await;
            self.refresh_all().await;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn short_reason(e: &vaultrs::error::ClientError) -> String {
    match e {
        vaultrs::error::ClientError::APIError { code, .. } => format!("status {code}"),
        other => {
            let s = other.to_string();
            s.chars().take(200).collect()
        }
    }
}
