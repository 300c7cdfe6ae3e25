//! `vault`: log in to Vault/OpenBao with what the machine has (a token, AppRole, Kubernetes or JWT auth),
//! then read a Vault identity token (`identity/oidc/token/<role>`), a JWT the broker verifies against
//! Vault's discovery and JWKS. The Vault token itself never leaves the machine.
//!
//! Plain HTTP calls through the helper's shared client (four endpoints) rather than `vaultrs`: same
//! reqwest underneath, fewer crates in a binary that must start fast.

use super::{Identity, Proof, ProveContext, ProveFuture};
use crate::error::IdentityError;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

const NAME: &str = "vault";
/// Where Kubernetes projects the service-account token.
pub const K8S_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

#[derive(Debug, Clone)]
pub enum VaultAuth {
    /// `VAULT_TOKEN`, else the token file (`~/.vault-token`).
    Token {
        token: Option<SecretString>,
        token_file: Option<PathBuf>,
    },
    AppRole {
        role_id: Option<String>,
        secret_id: Option<SecretString>,
        secret_id_file: Option<PathBuf>,
    },
    Kubernetes {
        role: Option<String>,
        jwt_file: PathBuf,
    },
    Jwt {
        role: Option<String>,
        jwt_file: Option<PathBuf>,
    },
}

#[derive(Debug, Clone)]
pub struct VaultSettings {
    pub addr: Option<String>,
    pub namespace: Option<String>,
    /// The identity-token role (`identity/oidc/token/<role>`).
    pub identity_role: Option<String>,
    pub auth: VaultAuth,
    /// Auth mount; default the method's name.
    pub mount: Option<String>,
}

pub struct VaultIdentity {
    addr: String,
    role: String,
    s: VaultSettings,
    /// A token known at load time (method `token`).
    token: Option<SecretString>,
    secrets: Vec<SecretString>,
}

fn not_configured(hint: &str) -> IdentityError {
    IdentityError::NotConfigured {
        source_name: NAME,
        hint: hint.into(),
    }
}

fn read_secret(path: &PathBuf) -> Result<SecretString, IdentityError> {
    let t = std::fs::read_to_string(path).map_err(|source| IdentityError::ReadFile {
        source_name: NAME,
        path: path.clone(),
        source,
    })?;
    Ok(SecretString::from(t.trim()))
}

impl VaultIdentity {
    pub fn load(s: &VaultSettings) -> Result<Self, IdentityError> {
        let addr = s
            .addr
            .clone()
            .ok_or_else(|| not_configured("set VAULT_ADDR (or BAO_ADDR) or `[vault] addr`"))?;
        let role = s.identity_role.clone().ok_or_else(|| {
            not_configured("set TOLLGATE_VAULT_ROLE or `[vault] role` (the identity token role)")
        })?;
        let mut secrets = Vec::new();
        let token = match &s.auth {
            VaultAuth::Token { token, token_file } => {
                let t = match (token, token_file) {
                    (Some(t), _) => t.clone(),
                    (None, Some(f)) if f.exists() => read_secret(f)?,
                    _ => {
                        return Err(not_configured(
                            "no Vault token (VAULT_TOKEN or ~/.vault-token)",
                        ));
                    }
                };
                secrets.push(t.clone());
                Some(t)
            }
            VaultAuth::AppRole {
                role_id,
                secret_id,
                secret_id_file,
            } => {
                if role_id.is_none() || (secret_id.is_none() && secret_id_file.is_none()) {
                    return Err(not_configured(
                        "AppRole needs TOLLGATE_VAULT_ROLE_ID and TOLLGATE_VAULT_SECRET_ID (or a secret_id_file)",
                    ));
                }
                secrets.extend(secret_id.clone());
                None
            }
            VaultAuth::Kubernetes { role, .. } | VaultAuth::Jwt { role, .. } if role.is_none() => {
                return Err(not_configured(
                    "set TOLLGATE_VAULT_LOGIN_ROLE (the auth method's role)",
                ));
            }
            VaultAuth::Jwt { jwt_file: None, .. } => {
                return Err(not_configured("set TOLLGATE_VAULT_JWT_FILE"));
            }
            _ => None,
        };
        Ok(VaultIdentity {
            addr: addr.trim_end_matches('/').to_string(),
            role,
            s: s.clone(),
            token,
            secrets,
        })
    }

    async fn call(
        &self,
        http: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
        token: Option<&SecretString>,
        body: Option<Value>,
    ) -> Result<Value, IdentityError> {
        let url = format!("{}/v1/{path}", self.addr);
        let mut req = http.request(method, &url);
        if let Some(t) = token {
            req = req.header("x-vault-token", t.expose_secret());
        }
        if let Some(ns) = &self.s.namespace {
            req = req.header("x-vault-namespace", ns);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| IdentityError::Unavailable {
            source_name: NAME,
            reason: format!("{url}: {}", crate::exchange::transport_reason(&e)),
        })?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let errors = v["errors"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default();
            let reason = format!("{path}: HTTP {status}: {errors}");
            return Err(if status.is_server_error() {
                IdentityError::Unavailable {
                    source_name: NAME,
                    reason,
                }
            } else {
                IdentityError::Invalid {
                    source_name: NAME,
                    reason,
                }
            });
        }
        Ok(v)
    }

    async fn login(&self, http: &reqwest::Client) -> Result<SecretString, IdentityError> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let (method, body) = match &self.s.auth {
            // `load` keeps the token of method `token`, so this is only reached without one.
            VaultAuth::Token { .. } => {
                return Err(not_configured(
                    "no Vault token (VAULT_TOKEN or ~/.vault-token)",
                ));
            }
            VaultAuth::AppRole {
                role_id,
                secret_id,
                secret_id_file,
            } => {
                let sid = match (secret_id, secret_id_file) {
                    (Some(s), _) => s.clone(),
                    (None, Some(f)) => read_secret(f)?,
                    (None, None) => return Err(not_configured("no AppRole secret_id")),
                };
                (
                    "approle",
                    json!({"role_id": role_id, "secret_id": sid.expose_secret()}),
                )
            }
            VaultAuth::Kubernetes { role, jwt_file } => (
                "kubernetes",
                json!({"role": role, "jwt": read_secret(jwt_file)?.expose_secret()}),
            ),
            VaultAuth::Jwt { role, jwt_file } => {
                let f = jwt_file
                    .as_ref()
                    .ok_or_else(|| not_configured("no JWT file"))?;
                (
                    "jwt",
                    json!({"role": role, "jwt": read_secret(f)?.expose_secret()}),
                )
            }
        };
        let mount = self.s.mount.as_deref().unwrap_or(method);
        let v = self
            .call(
                http,
                reqwest::Method::POST,
                &format!("auth/{mount}/login"),
                None,
                Some(body),
            )
            .await?;
        v["auth"]["client_token"]
            .as_str()
            .map(SecretString::from)
            .ok_or(IdentityError::Invalid {
                source_name: NAME,
                reason: format!("auth/{mount}/login answered without a client token"),
            })
    }
}

impl Identity for VaultIdentity {
    fn name(&self) -> &'static str {
        NAME
    }

    fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"tollgate-token vault fingerprint v1\0");
        for p in [
            self.addr.as_str(),
            self.role.as_str(),
            self.s.namespace.as_deref().unwrap_or(""),
            self.s.mount.as_deref().unwrap_or(""),
        ] {
            h.update(p.as_bytes());
            h.update(b"\0");
        }
        match &self.s.auth {
            VaultAuth::Token { .. } => {
                // A digest of the token, so another login mints anew (never the token itself).
                let t = self
                    .token
                    .as_ref()
                    .map(|t| t.expose_secret().to_string())
                    .unwrap_or_default();
                h.update(b"token\0");
                h.update(Sha256::digest(t.as_bytes()));
            }
            VaultAuth::AppRole { role_id, .. } => {
                h.update(format!("approle\0{}", role_id.as_deref().unwrap_or("")).as_bytes())
            }
            VaultAuth::Kubernetes { role, jwt_file } => h.update(
                format!(
                    "kubernetes\0{}\0{}",
                    role.as_deref().unwrap_or(""),
                    jwt_file.display()
                )
                .as_bytes(),
            ),
            VaultAuth::Jwt { role, jwt_file } => h.update(
                format!(
                    "jwt\0{}\0{}",
                    role.as_deref().unwrap_or(""),
                    jwt_file
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                )
                .as_bytes(),
            ),
        }
        hex::encode(h.finalize())
    }

    fn prove<'a>(&'a self, ctx: &'a ProveContext<'a>) -> ProveFuture<'a> {
        Box::pin(async move {
            let token = self.login(ctx.http).await?;
            let v = self
                .call(
                    ctx.http,
                    reqwest::Method::GET,
                    &format!("identity/oidc/token/{}", self.role),
                    Some(&token),
                    None,
                )
                .await?;
            let jwt = v["data"]["token"].as_str().ok_or(IdentityError::Invalid {
                source_name: NAME,
                reason: "identity/oidc/token answered without a token".into(),
            })?;
            Ok(Proof {
                subject_token: SecretString::from(jwt),
                subject_token_type: tollgate::exchange::TOKEN_TYPE_JWT,
            })
        })
    }

    fn secrets(&self) -> Vec<SecretString> {
        self.secrets.clone()
    }
}
