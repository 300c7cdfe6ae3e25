//! `azure`: an Entra access token for the broker's application ID URI, from workload identity
//! (`AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_AUTHORITY_HOST`), App
//! Service managed identity (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`), or — opted in with
//! `TOLLGATE_AZURE_IMDS=1` — the VM instance metadata service.
//!
//! Workload identity and App Service managed identity go through `azure_identity`
//! (`WorkloadIdentityCredential`, `ManagedIdentityCredential`), built only on a mint and sending through
//! the helper's own HTTP client (no redirects, the run's deadline). `ManagedIdentityCredential` falls back
//! to the VM IMDS at the constant address 169.254.169.254 whenever `IDENTITY_ENDPOINT` is unset, and the
//! crate does not expose its App Service credential on its own, so it is constructed only after checking
//! that the process environment selects App Service ([`app_service_env_ok`]). The VM IMDS request stays
//! hand-written here: opt-in, with an overridable endpoint.

use super::{Identity, Proof, ProveContext, ProveFuture};
use crate::error::IdentityError;
use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, RetryOptions, Transport};
use azure_identity::{
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;

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
    let resp =
        resp.map_err(|e| unavailable(format!("{what}: {}", crate::error::transport_reason(&e))))?;
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

fn invalid(reason: String) -> IdentityError {
    IdentityError::Invalid {
        source_name: NAME,
        reason,
    }
}

/// The pipeline options for `azure_identity`: the helper's own client as the transport (no redirects,
/// bounded by the run's deadline) and no retries (a failed mint is reported, the cache serves meanwhile).
fn client_options(ctx: &ProveContext<'_>) -> ClientOptions {
    ClientOptions {
        transport: Some(Transport::new(Arc::new(ctx.http.clone()))),
        retry: RetryOptions::none(),
        ..Default::default()
    }
}

/// `ManagedIdentityCredential` reads the process environment itself and, when `IDENTITY_ENDPOINT` is
/// absent, silently targets the VM IMDS at 169.254.169.254. Construct it only when the process
/// environment selects App Service — the same endpoint and header this source was loaded with — and not
/// Service Fabric (which the crate refuses anyway).
pub fn app_service_env_ok(endpoint: &str, header: &SecretString) -> Result<(), IdentityError> {
    let ep = std::env::var("IDENTITY_ENDPOINT").ok();
    let hd = std::env::var("IDENTITY_HEADER").ok();
    if ep.as_deref() != Some(endpoint) || hd.as_deref() != Some(header.expose_secret()) {
        return Err(invalid(
            "App Service managed identity: IDENTITY_ENDPOINT/IDENTITY_HEADER are not set in this process's environment".into(),
        ));
    }
    if std::env::var_os("IDENTITY_SERVER_THUMBPRINT").is_some() {
        return Err(invalid(
            "Service Fabric managed identity (IDENTITY_SERVER_THUMBPRINT) is not supported".into(),
        ));
    }
    Ok(())
}

/// An `azure_core` error, on one line and bounded (it may quote an error body).
fn short(e: &azure_core::Error) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("To troubleshoot"))
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(300)
        .collect()
}

/// Map a failed `get_token`: the identity provider answered 4xx → the identity is refused (`Invalid`);
/// anything else (connection, TLS, timeout, 5xx, a malformed answer) → `Unavailable`.
fn from_azure(what: &str, e: &azure_core::Error) -> IdentityError {
    let mut status = None;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(az) = err.downcast_ref::<azure_core::Error>()
            && let azure_core::error::ErrorKind::HttpResponse { status: s, .. } = az.kind()
        {
            status = Some(*s);
            break;
        }
        cur = err.source();
    }
    let reason = match status {
        Some(s) => format!("{what}: HTTP {} {}", u16::from(s), short(e)),
        None => format!("{what}: {}", short(e)),
    };
    match status {
        Some(s) if s.is_client_error() => invalid(reason),
        _ => unavailable(reason),
    }
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
                    // Read here first so an unreadable file is the same typed error as elsewhere.
                    std::fs::metadata(file)
                        .and_then(|_| std::fs::File::open(file).map(drop))
                        .map_err(|source| IdentityError::ReadFile {
                            source_name: NAME,
                            path: file.clone(),
                            source,
                        })?;
                    let authority = &self.s.authority_host;
                    if !authority.starts_with("https://") {
                        return Err(IdentityError::Invalid {
                            source_name: NAME,
                            reason: format!(
                                "AZURE_AUTHORITY_HOST must be an https URL (got {authority:?})"
                            ),
                        });
                    }
                    let mut cloud = azure_core::cloud::CustomConfiguration::default();
                    cloud.authority_host = authority.trim_end_matches('/').to_owned();
                    let mut client_options = client_options(ctx);
                    client_options.cloud = Some(Arc::new(cloud.into()));
                    let mut options = WorkloadIdentityCredentialOptions::default();
                    options.credential_options.client_options = client_options;
                    options.client_id = Some(client_id.clone());
                    options.tenant_id = Some(tenant.clone());
                    options.token_file_path = Some(file.clone());
                    let cred = WorkloadIdentityCredential::new(Some(options))
                        .map_err(|e| invalid(format!("workload identity: {}", short(&e))))?;
                    let scope = format!("{}/.default", resource.trim_end_matches('/'));
                    cred.get_token(&[scope.as_str()], None)
                        .await
                        .map_err(|e| from_azure("workload identity token endpoint", &e))?
                        .token
                        .secret()
                        .to_owned()
                }
                Source::AppService { endpoint, header } => {
                    app_service_env_ok(endpoint, header)?;
                    let options = ManagedIdentityCredentialOptions {
                        user_assigned_id: self.s.client_id.clone().map(UserAssignedId::ClientId),
                        client_options: client_options(ctx),
                    };
                    let cred = ManagedIdentityCredential::new(Some(options)).map_err(|e| {
                        invalid(format!("App Service managed identity: {}", short(&e)))
                    })?;
                    let scope = format!("{}/.default", resource.trim_end_matches('/'));
                    cred.get_token(&[scope.as_str()], None)
                        .await
                        .map_err(|e| from_azure("App Service managed identity endpoint", &e))?
                        .token
                        .secret()
                        .to_owned()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_service_credential_is_not_built_unless_the_process_env_selects_app_service() {
        // The test process has no IDENTITY_ENDPOINT: `ManagedIdentityCredential` would pick the VM IMDS
        // (169.254.169.254), so the guard must refuse before it is constructed.
        assert!(std::env::var_os("IDENTITY_ENDPOINT").is_none());
        let e = app_service_env_ok(
            "http://127.0.0.1:9/msi/token",
            &SecretString::from("hdr-secret"),
        )
        .expect_err("refused");
        assert!(matches!(e, IdentityError::Invalid { .. }), "{e}");
        assert!(!e.to_string().contains("hdr-secret"));
    }
}
