//! `vault`: log in to Vault/OpenBao with what the machine has (a token, AppRole, Kubernetes or JWT auth),
//! then read a Vault identity token (`identity/oidc/token/<role>`), a JWT the broker verifies against
//! Vault's discovery and JWKS. The Vault token itself never leaves the machine.
//!
//! The logins and the identity-token read go through `vaultrs` (same reqwest 0.13 + rustls underneath as
//! the helper's own client, so it adds little; it brings `VAULT_CACERT`/`VAULT_CAPATH`,
//! `VAULT_SKIP_VERIFY` and `VAULT_CLIENT_CERT`/`_KEY` handling). Its client is built in `prove`, i.e. only
//! when the cache says a mint is needed; the cache-hit path never touches it. `vaultrs` has no endpoint
//! for `identity/oidc/token/:name`, so that one is a small `rustify::Endpoint` here.

use super::{Identity, Proof, ProveContext, ProveFuture};
use crate::error::IdentityError;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

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

    /// A Vault client for `addr` with `token` (empty for a login). Built per mint, never on a cache hit.
    fn client(&self, token: &str) -> Result<VaultClient, IdentityError> {
        // `vaultrs`' address setter panics on a bad URL: check it first.
        reqwest::Url::parse(&self.addr).map_err(|_| IdentityError::Invalid {
            source_name: NAME,
            reason: format!("VAULT_ADDR {:?} is not a URL", self.addr),
        })?;
        let mut b = VaultClientSettingsBuilder::default();
        b.address(&self.addr).token(token);
        if let Some(ns) = &self.s.namespace {
            b.set_namespace(ns.clone());
        }
        let settings = b.build().map_err(|e| IdentityError::Invalid {
            source_name: NAME,
            reason: format!("Vault client settings: {e}"),
        })?;
        VaultClient::new(settings).map_err(|e| IdentityError::Invalid {
            source_name: NAME,
            reason: format!("Vault client: {e}"),
        })
    }

    async fn login(&self) -> Result<SecretString, IdentityError> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let client = self.client("")?;
        let method = match &self.s.auth {
            VaultAuth::Token { .. } => "token",
            VaultAuth::AppRole { .. } => "approle",
            VaultAuth::Kubernetes { .. } => "kubernetes",
            VaultAuth::Jwt { .. } => "jwt",
        };
        let mount = self.s.mount.as_deref().unwrap_or(method);
        let path = format!("auth/{mount}/login");
        let auth = match &self.s.auth {
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
                vaultrs::auth::approle::login(
                    &client,
                    mount,
                    role_id.as_deref().unwrap_or_default(),
                    sid.expose_secret(),
                )
                .await
            }
            VaultAuth::Kubernetes { role, jwt_file } => {
                vaultrs::auth::kubernetes::login(
                    &client,
                    mount,
                    role.as_deref().unwrap_or_default(),
                    read_secret(jwt_file)?.expose_secret(),
                )
                .await
            }
            VaultAuth::Jwt { role, jwt_file } => {
                let f = jwt_file
                    .as_ref()
                    .ok_or_else(|| not_configured("no JWT file"))?;
                vaultrs::auth::oidc::login(
                    &client,
                    mount,
                    read_secret(f)?.expose_secret(),
                    role.clone(),
                )
                .await
            }
        }
        .map_err(|e| vault_error(&path, e))?;
        if auth.client_token.is_empty() {
            return Err(IdentityError::Invalid {
                source_name: NAME,
                reason: format!("{path} answered without a client token"),
            });
        }
        Ok(SecretString::from(auth.client_token))
    }
}

/// Map a `vaultrs` error to ours: Vault's own error list for an API answer (4xx = invalid, 5xx =
/// unavailable), the transport reason otherwise. `vaultrs` errors carry no request body, so no secret.
fn vault_error(path: &str, e: ClientError) -> IdentityError {
    match e {
        ClientError::APIError { code, errors } => {
            let reason = format!("{path}: HTTP {code}: {}", errors.join("; "));
            if code >= 500 {
                IdentityError::Unavailable {
                    source_name: NAME,
                    reason,
                }
            } else {
                IdentityError::Invalid {
                    source_name: NAME,
                    reason,
                }
            }
        }
        ClientError::RestClientError { source } => IdentityError::Unavailable {
            source_name: NAME,
            reason: format!("{path}: {}", transport_reason(&source)),
        },
        other => IdentityError::Invalid {
            source_name: NAME,
            reason: format!("{path}: {other}"),
        },
    }
}

/// The innermost cause of a transport failure (connection refused, TLS…), without any URL query.
fn transport_reason(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// `GET identity/oidc/token/:name` (not in `vaultrs`): the identity token of the calling entity.
struct ReadIdentityToken {
    name: String,
}

#[derive(serde::Deserialize)]
struct IdentityTokenResponse {
    token: String,
}

impl rustify::Endpoint for ReadIdentityToken {
    type Response = IdentityTokenResponse;
    const REQUEST_BODY_TYPE: rustify::enums::RequestType = rustify::enums::RequestType::JSON;
    const RESPONSE_BODY_TYPE: rustify::enums::ResponseType = rustify::enums::ResponseType::JSON;

    fn path(&self) -> String {
        format!("identity/oidc/token/{}", self.name)
    }

    fn method(&self) -> rustify::enums::RequestMethod {
        rustify::enums::RequestMethod::GET
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

    fn prove<'a>(&'a self, _ctx: &'a ProveContext<'a>) -> ProveFuture<'a> {
        Box::pin(async move {
            let token = self.login().await?;
            let client = self.client(token.expose_secret())?;
            let path = format!("identity/oidc/token/{}", self.role);
            let r = vaultrs::api::exec_with_result(
                &client,
                ReadIdentityToken {
                    name: self.role.clone(),
                },
            )
            .await
            .map_err(|e| vault_error(&path, e))?;
            Ok(Proof {
                subject_token: SecretString::from(r.token),
                subject_token_type: tollgate::exchange::TOKEN_TYPE_JWT,
            })
        })
    }

    fn secrets(&self) -> Vec<SecretString> {
        self.secrets.clone()
    }
}
