//! `azure`: an Entra access token for the broker's application ID URI, from workload identity
//! (`AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_AUTHORITY_HOST`), App
//! Service managed identity (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`), or — opted in with
//! `TOLLGATE_AZURE_IMDS=1` — the VM instance metadata service. These are the same wire protocols
//! `azure_identity`'s `WorkloadIdentityCredential` and `ManagedIdentityCredential` speak; spoken directly
//! so the helper carries no Azure SDK (and its authority is not forced to https, which the tests need).

use super::{Identity, Proof, ProveContext, ProveFuture};
use crate::error::IdentityError;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

const NAME: &str = "azure";

#[derive(Debug, Clone)]
pub struct AzureSettings {
    /// The broker's application ID URI (the token's audience).
    pub resource: Option<String>,
    pub client_id: Option<String>,
    pub tenant_id: Option<String>,
    pub federated_token_file: Option<PathBuf>,
    pub authority_host: String,
    pub identity_endpoint: Option<String>,
    pub identity_header: Option<SecretString>,
    /// `Some` only when IMDS is opted in.
    pub imds_endpoint: Option<String>,
}

enum Source {
    Workload {
        tenant: String,
        client_id: String,
        file: PathBuf,
    },
    AppService {
        endpoint: String,
        header: SecretString,
    },
    Imds(String),
}

pub struct AzureIdentity {
    resource: String,
    s: AzureSettings,
    source: Source,
}

impl AzureIdentity {
    pub fn load(s: &AzureSettings) -> Result<Self, IdentityError> {
        let resource = s.resource.clone().ok_or(IdentityError::NotConfigured {
            source_name: NAME,
            hint: "set TOLLGATE_AZURE_RESOURCE or `[azure] resource` (the broker's application ID URI)".into(),
        })?;
        let source = match (
            &s.federated_token_file,
            &s.tenant_id,
            &s.client_id,
            &s.identity_endpoint,
            &s.identity_header,
        ) {
            (Some(f), Some(t), Some(c), _, _) => Source::Workload {
                tenant: t.clone(),
                client_id: c.clone(),
                file: f.clone(),
            },
            (_, _, _, Some(e), Some(h)) => Source::AppService {
                endpoint: e.clone(),
                header: h.clone(),
            },
            _ => match &s.imds_endpoint {
                Some(ep) => Source::Imds(ep.clone()),
                None => {
                    return Err(IdentityError::NotConfigured {
                        source_name: NAME,
                        hint: "no managed or workload identity here (IDENTITY_ENDPOINT/IDENTITY_HEADER, AZURE_FEDERATED_TOKEN_FILE; TOLLGATE_AZURE_IMDS=1 for VMs)".into(),
                    });
                }
            },
        };
        Ok(AzureIdentity {
            resource,
            s: s.clone(),
            source,
        })
    }
}

fn unavailable(reason: String) -> IdentityError {
    IdentityError::Unavailable {
        source_name: NAME,
        reason,
    }
}

async fn token_from(
    resp: Result<reqwest::Response, reqwest::Error>,
    what: &str,
) -> Result<String, IdentityError> {
    let resp = resp
        .map_err(|e| unavailable(format!("{what}: {}", crate::exchange::transport_reason(&e))))?;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let msg = v["error_description"]
            .as_str()
            .or_else(|| v["message"].as_str())
            .or_else(|| v["error"].as_str())
            .unwrap_or("")
            .chars()
            .take(200)
            .collect::<String>();
        let reason = format!("{what}: HTTP {status} {msg}");
        return Err(if status.is_server_error() {
            unavailable(reason)
        } else {
            IdentityError::Invalid {
                source_name: NAME,
                reason,
            }
        });
    }
    v["access_token"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| unavailable(format!("{what}: no access_token in the answer")))
}

impl Identity for AzureIdentity {
    fn name(&self) -> &'static str {
        NAME
    }

    fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"tollgate-token azure fingerprint v1\0");
        h.update(self.resource.as_bytes());
        h.update(b"\0");
        h.update(self.s.client_id.as_deref().unwrap_or("").as_bytes());
        h.update(b"\0");
        match &self.source {
            Source::Workload { tenant, file, .. } => {
                h.update(format!("workload\0{tenant}\0{}", file.display()).as_bytes())
            }
            Source::AppService { endpoint, .. } => {
                h.update(format!("app-service\0{endpoint}").as_bytes())
            }
            Source::Imds(ep) => h.update(format!("imds\0{ep}").as_bytes()),
        }
        hex::encode(h.finalize())
    }

    fn prove<'a>(&'a self, ctx: &'a ProveContext<'a>) -> ProveFuture<'a> {
        Box::pin(async move {
            let resource = self.resource.as_str();
            let token = match &self.source {
                Source::Workload {
                    tenant,
                    client_id,
                    file,
                } => {
                    let assertion = std::fs::read_to_string(file).map_err(|source| {
                        IdentityError::ReadFile {
                            source_name: NAME,
                            path: file.clone(),
                            source,
                        }
                    })?;
                    let scope = format!("{}/.default", resource.trim_end_matches('/'));
                    let url = format!(
                        "{}/{tenant}/oauth2/v2.0/token",
                        self.s.authority_host.trim_end_matches('/')
                    );
                    let form = [
                        ("client_id", client_id.as_str()),
                        (
                            "client_assertion_type",
                            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                        ),
                        ("client_assertion", assertion.trim()),
                        ("grant_type", "client_credentials"),
                        ("scope", scope.as_str()),
                    ];
                    token_from(
                        ctx.http.post(url).form(&form).send().await,
                        "workload identity token endpoint",
                    )
                    .await?
                }
                Source::AppService { endpoint, header } => {
                    let mut q = vec![("api-version", "2019-08-01"), ("resource", resource)];
                    if let Some(c) = &self.s.client_id {
                        q.push(("client_id", c.as_str()));
                    }
                    let url = format!(
                        "{endpoint}?{}",
                        serde_urlencoded::to_string(&q).unwrap_or_default()
                    );
                    token_from(
                        ctx.http
                            .get(url)
                            .header("x-identity-header", header.expose_secret())
                            .send()
                            .await,
                        "App Service managed identity endpoint",
                    )
                    .await?
                }
                Source::Imds(ep) => {
                    let mut q = vec![("api-version", "2018-02-01"), ("resource", resource)];
                    if let Some(c) = &self.s.client_id {
                        q.push(("client_id", c.as_str()));
                    }
                    let url = format!(
                        "{}/metadata/identity/oauth2/token?{}",
                        ep.trim_end_matches('/'),
                        serde_urlencoded::to_string(&q).unwrap_or_default()
                    );
                    token_from(
                        ctx.http.get(url).header("metadata", "true").send().await,
                        "instance metadata identity endpoint",
                    )
                    .await?
                }
            };
            Ok(Proof {
                subject_token: SecretString::from(token),
                subject_token_type: tollgate::exchange::TOKEN_TYPE_JWT,
            })
        })
    }

    fn secrets(&self) -> Vec<SecretString> {
        match &self.source {
            Source::AppService { header, .. } => vec![header.clone()],
            _ => Vec::new(),
        }
    }
}
