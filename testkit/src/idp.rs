//! A fake identity provider on loopback: nothing on the registries emulates Entra or the Azure
//! managed-identity endpoints, and an OIDC issuer whose tokens we can shape freely is the only way to
//! produce the negative cases (expired, future `nbf`, wrong `aud`, unknown `kid`, `alg: none`,
//! HS256-with-the-public-key…).
//!
//! Routes (all on `http://127.0.0.1:PORT`, and the same routes over TLS on `https://127.0.0.1:TLS_PORT`
//! with a certificate from a CA generated at start — [`IdpHandle::https_base_url`],
//! [`IdpHandle::ca_pem`]; `azure_identity` only accepts an https authority for workload identity):
//! - `GET /.well-known/openid-configuration`, `GET /jwks` — a generic OIDC issuer (issuer = base URL);
//! - `POST /mint` — a JWT with chosen claims and defects ([`MintRequest`]), as text;
//! - `GET /{tenant}/v2.0/.well-known/openid-configuration`, `GET /{tenant}/discovery/v2.0/keys` —
//!   per-tenant Entra discovery (issuer `{base}/{tenant}/v2.0`);
//! - `GET /msi/token` — the App Service managed-identity endpoint (`IDENTITY_ENDPOINT` =
//!   `{base}/msi/token`, header `X-IDENTITY-HEADER` = `IDENTITY_HEADER`), which `azure_identity`'s
//!   `ManagedIdentityCredential` uses when those two variables are set;
//! - `GET /metadata/identity/oauth2/token` — the VM IMDS shape (header `Metadata: true`);
//! - `POST /{tenant}/oauth2/v2.0/token` — Entra's client-credentials grant with a federated
//!   `client_assertion` (workload identity): the assertion must be one of our own JWTs with
//!   `aud = api://AzureADTokenExchange`; the answer is a v2 token (issuer `{base}/{tenant}/v2.0`);
//! - `POST /apis/authentication.k8s.io/v1/tokenreviews` — the Kubernetes TokenReview API (what Vault's
//!   and OpenBao's `kubernetes` auth method calls at `kubernetes_host`): a token this IdP signed (valid
//!   signature, not expired) is `authenticated`, its user `sub` with uid
//!   `kubernetes.io.serviceaccount.uid`; anything else is not;
//! - `GET /aws/container-credentials` — the ECS/EKS container credentials endpoint
//!   (`AWS_CONTAINER_CREDENTIALS_FULL_URI`), answering with the keys set by
//!   [`IdpHandle::set_container_credentials`] when `Authorization` carries the configured token;
//! - `POST /_idp/rotate` — publish a new signing key and make it the active one;
//! - `GET /_idp/stats` — how many times discovery and JWKS were fetched.
//!
//! Keys are RS256, generated at start with aws-lc-rs.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// The managed identity the fake Azure endpoints hand out.
#[derive(Clone, Debug)]
pub struct ManagedIdentity {
    pub tenant: String,
    /// Object (principal) ID: the identity the broker binds.
    pub oid: String,
    /// Client (application) ID.
    pub appid: String,
}

#[derive(Clone, Debug)]
pub struct IdpConfig {
    /// Value `X-IDENTITY-HEADER` must carry on `/msi/token`.
    pub identity_header: String,
    pub managed_identity: ManagedIdentity,
}

impl Default for IdpConfig {
    fn default() -> Self {
        IdpConfig {
            identity_header: "fake-identity-header-secret".into(),
            managed_identity: ManagedIdentity {
                tenant: "11111111-2222-3333-4444-555555555555".into(),
                oid: "aaaaaaaa-0000-0000-0000-000000000001".into(),
                appid: "bbbbbbbb-0000-0000-0000-000000000002".into(),
            },
        }
    }
}

struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Jwk,
    /// SubjectPublicKeyInfo PEM, for the HS256-with-the-public-key attack.
    public_pem: String,
}

impl SigningKey {
    fn generate(kid: &str) -> anyhow::Result<Self> {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::signature::KeyPair as _;
        let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .map_err(|_| anyhow::anyhow!("RSA key generation failed"))?;
        let pkcs8 = kp
            .as_der()
            .map_err(|_| anyhow::anyhow!("PKCS#8 export failed"))?;
        let private_pem = pem("PRIVATE KEY", pkcs8.as_ref());
        let encoding = EncodingKey::from_rsa_pem(private_pem.as_bytes())?;
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256)?;
        jwk.common.key_id = Some(kid.to_string());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk.common.key_algorithm = Some(KeyAlgorithm::RS256);
        let spki = kp
            .public_key()
            .as_der()
            .map_err(|_| anyhow::anyhow!("public key export failed"))?;
        Ok(SigningKey {
            kid: kid.to_string(),
            encoding,
            jwk,
            public_pem: pem("PUBLIC KEY", spki.as_ref()),
        })
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// What `/mint` makes. Every field is optional; defaults give a valid token from the generic issuer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MintRequest {
    /// Default: the base URL (the generic issuer).
    pub iss: Option<String>,
    pub sub: Option<String>,
    /// String or array.
    pub aud: Option<Value>,
    /// Lifetime, seconds. Default 600.
    pub ttl_secs: Option<i64>,
    /// Shift `iat` (and so `exp`) by this many seconds; negative = in the past.
    pub iat_offset_secs: i64,
    /// Set `nbf` = now + this.
    pub nbf_offset_secs: Option<i64>,
    /// Extra claims (override the standard ones).
    pub claims: Map<String, Value>,
    /// `signed` (default), `unpublished-key` (a key not in the JWKS, own kid), `none` (`alg: none`),
    /// `hs256-public-key` (HS256 keyed with the RSA public key PEM), `no-kid`, `tampered`.
    pub defect: Option<String>,
}

struct IdpState {
    base: String,
    cfg: IdpConfig,
    keys: Mutex<Vec<Arc<SigningKey>>>,
    unpublished: Arc<SigningKey>,
    discovery_fetches: AtomicU64,
    jwks_fetches: AtomicU64,
    mi_tokens: AtomicU64,
    token_reviews: AtomicU64,
    container_credentials: Mutex<Option<ContainerCredentials>>,
    container_fetches: AtomicU64,
}

/// What the container credentials endpoint hands out, and the token it wants in `Authorization`.
#[derive(Clone, Debug)]
pub struct ContainerCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    pub authorization: String,
}

impl IdpState {
    fn active(&self) -> Arc<SigningKey> {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys[keys.len() - 1].clone()
    }
}

/// A running fake IdP. Dropping it stops the server.
pub struct IdpHandle {
    pub addr: SocketAddr,
    /// The TLS listener (same routes).
    pub tls_addr: SocketAddr,
    ca_pem: String,
    state: Arc<IdpState>,
    shutdown: Option<oneshot::Sender<()>>,
    tls_shutdown: Option<oneshot::Sender<()>>,
}

impl Drop for IdpHandle {
    fn drop(&mut self) {
        for tx in [self.shutdown.take(), self.tls_shutdown.take()]
            .into_iter()
            .flatten()
        {
            let _ = tx.send(());
        }
    }
}

/// A TCP listener that completes a TLS handshake before handing the connection to axum. A failed
/// handshake drops that connection and waits for the next one.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, peer)) = self.tcp.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, peer);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A throw-away CA and a leaf for `127.0.0.1` / `localhost` signed by it: (CA PEM, server config).
fn test_tls() -> anyhow::Result<(String, rustls::ServerConfig)> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "tollgate fake IdP test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    leaf.distinguished_name
        .push(DnType::CommonName, "tollgate fake IdP");
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &ca)?;
    let chain = vec![cert.der().clone(), ca.der().clone()];
    let key = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| anyhow::anyhow!("leaf key: {e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    Ok((ca.pem(), config))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl IdpHandle {
    /// `http://127.0.0.1:PORT` — also the generic issuer.
    pub fn base_url(&self) -> String {
        self.state.base.clone()
    }

    /// `https://127.0.0.1:TLS_PORT`: the same routes over TLS, trusted through [`IdpHandle::ca_pem`].
    pub fn https_base_url(&self) -> String {
        format!("https://{}", self.tls_addr)
    }

    /// The PEM of the CA that signed the TLS listener's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The Entra authority to configure the broker with (tenants live under it).
    pub fn authority(&self) -> String {
        self.state.base.clone()
    }

    /// The v2 issuer of a tenant.
    pub fn tenant_issuer(&self, tenant: &str) -> String {
        format!("{}/{tenant}/v2.0", self.state.base)
    }

    /// `IDENTITY_ENDPOINT` for App Service managed identity.
    pub fn identity_endpoint(&self) -> String {
        format!("{}/msi/token", self.state.base)
    }

    pub fn identity_header(&self) -> &str {
        &self.state.cfg.identity_header
    }

    pub fn managed_identity(&self) -> &ManagedIdentity {
        &self.state.cfg.managed_identity
    }

    /// Mint a token in-process (same as `POST /mint`).
    pub fn mint(&self, req: &MintRequest) -> anyhow::Result<String> {
        mint(&self.state, req)
    }

    /// Publish a new key and sign with it from now on; returns its kid.
    pub fn rotate(&self) -> anyhow::Result<String> {
        rotate(&self.state)
    }

    pub fn jwks_fetches(&self) -> u64 {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    pub fn discovery_fetches(&self) -> u64 {
        self.state.discovery_fetches.load(Ordering::SeqCst)
    }

    /// How many managed-identity tokens were handed out.
    pub fn mi_tokens(&self) -> u64 {
        self.state.mi_tokens.load(Ordering::SeqCst)
    }

    /// How many TokenReviews were answered (authenticated or not).
    pub fn token_reviews(&self) -> u64 {
        self.state.token_reviews.load(Ordering::SeqCst)
    }

    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI` for the container credentials endpoint.
    pub fn container_credentials_uri(&self) -> String {
        format!("{}/aws/container-credentials", self.state.base)
    }

    /// Serve these keys at the container credentials endpoint.
    pub fn set_container_credentials(&self, c: ContainerCredentials) {
        *self
            .state
            .container_credentials
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(c);
    }

    /// How many times the container credentials endpoint answered with keys.
    pub fn container_fetches(&self) -> u64 {
        self.state.container_fetches.load(Ordering::SeqCst)
    }
}

fn rotate(state: &IdpState) -> anyhow::Result<String> {
    let mut keys = state.keys.lock().unwrap_or_else(|e| e.into_inner());
    let kid = format!("fake-idp-{}", keys.len() + 1);
    keys.push(Arc::new(SigningKey::generate(&kid)?));
    Ok(kid)
}

fn mint(state: &IdpState, req: &MintRequest) -> anyhow::Result<String> {
    let iat = now() + req.iat_offset_secs;
    let mut claims = Map::new();
    claims.insert(
        "iss".into(),
        json!(req.iss.clone().unwrap_or_else(|| state.base.clone())),
    );
    claims.insert(
        "sub".into(),
        json!(req.sub.clone().unwrap_or_else(|| "test-subject".into())),
    );
    claims.insert(
        "aud".into(),
        req.aud.clone().unwrap_or_else(|| json!("tollgate")),
    );
    claims.insert("iat".into(), json!(iat));
    claims.insert("exp".into(), json!(iat + req.ttl_secs.unwrap_or(600)));
    if let Some(n) = req.nbf_offset_secs {
        claims.insert("nbf".into(), json!(now() + n));
    }
    claims.insert("jti".into(), json!(uuid::Uuid::new_v4().to_string()));
    for (k, v) in &req.claims {
        claims.insert(k.clone(), v.clone());
    }
    let active = state.active();
    let sign = |key: &SigningKey, kid: Option<&str>| -> anyhow::Result<String> {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = kid.map(String::from);
        Ok(jsonwebtoken::encode(&h, &claims, &key.encoding)?)
    };
    Ok(match req.defect.as_deref().unwrap_or("signed") {
        "signed" => sign(&active, Some(&active.kid))?,
        "no-kid" => sign(&active, None)?,
        "unpublished-key" => sign(&state.unpublished, Some(&state.unpublished.kid))?,
        "tampered" => {
            let t = sign(&active, Some(&active.kid))?;
            let mut parts: Vec<String> = t.split('.').map(String::from).collect();
            let mut c = claims.clone();
            c.insert("sub".into(), json!("someone-else"));
            parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c)?);
            parts.join(".")
        }
        "none" => {
            let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
            let c = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?);
            format!("{h}.{c}.")
        }
        "hs256-public-key" => {
            let mut h = Header::new(Algorithm::HS256);
            h.kid = Some(active.kid.clone());
            let key = EncodingKey::from_secret(active.public_pem.as_bytes());
            jsonwebtoken::encode(&h, &claims, &key)?
        }
        other => anyhow::bail!("unknown defect {other:?}"),
    })
}

/// Start a fake IdP on `127.0.0.1:0`.
pub async fn spawn(cfg: IdpConfig) -> anyhow::Result<IdpHandle> {
    spawn_on(cfg, SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// Start on a given loopback address (the binary's `--port`).
pub async fn spawn_on(cfg: IdpConfig, addr: SocketAddr) -> anyhow::Result<IdpHandle> {
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "the fake IdP only listens on loopback"
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let tls_tcp = tokio::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0)).await?;
    let tls_addr = tls_tcp.local_addr()?;
    let (ca_pem, tls_config) = test_tls()?;
    let state = Arc::new(IdpState {
        base: format!("http://{addr}"),
        cfg,
        keys: Mutex::new(vec![Arc::new(SigningKey::generate("fake-idp-1")?)]),
        unpublished: Arc::new(SigningKey::generate("not-published")?),
        discovery_fetches: AtomicU64::new(0),
        jwks_fetches: AtomicU64::new(0),
        mi_tokens: AtomicU64::new(0),
        token_reviews: AtomicU64::new(0),
        container_credentials: Mutex::new(None),
        container_fetches: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/mint", post(mint_route))
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(tenant_discovery),
        )
        .route("/{tenant}/discovery/v2.0/keys", get(jwks))
        .route("/{tenant}/oauth2/v2.0/token", post(workload_token))
        .route("/msi/token", get(app_service_token))
        .route("/metadata/identity/oauth2/token", get(imds_token))
        .route(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            post(token_review),
        )
        .route("/aws/container-credentials", get(container_credentials))
        .route("/_idp/rotate", post(rotate_route))
        .route("/_idp/stats", get(stats))
        .with_state(state.clone());
    let (tx, rx) = oneshot::channel::<()>();
    let tls_app = app.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await;
    });
    let (tls_tx, tls_rx) = oneshot::channel::<()>();
    let tls_listener = TlsListener {
        tcp: tls_tcp,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(tls_config)),
    };
    tokio::spawn(async move {
        let _ = axum::serve(tls_listener, tls_app)
            .with_graceful_shutdown(async move {
                let _ = tls_rx.await;
            })
            .await;
    });
    Ok(IdpHandle {
        addr,
        tls_addr,
        ca_pem,
        state,
        shutdown: Some(tx),
        tls_shutdown: Some(tls_tx),
    })
}

type S = State<Arc<IdpState>>;

async fn discovery(State(s): S) -> Json<Value> {
    s.discovery_fetches.fetch_add(1, Ordering::SeqCst);
    Json(json!({
        "issuer": s.base,
        "jwks_uri": format!("{}/jwks", s.base),
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
    }))
}

async fn tenant_discovery(State(s): S, Path(tenant): Path<String>) -> Json<Value> {
    s.discovery_fetches.fetch_add(1, Ordering::SeqCst);
    Json(json!({
        "issuer": format!("{}/{tenant}/v2.0", s.base),
        "jwks_uri": format!("{}/{tenant}/discovery/v2.0/keys", s.base),
        "token_endpoint": format!("{}/{tenant}/oauth2/v2.0/token", s.base),
        "id_token_signing_alg_values_supported": ["RS256"],
    }))
}

async fn jwks(State(s): S) -> Json<JwkSet> {
    s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let keys = s.keys.lock().unwrap_or_else(|e| e.into_inner());
    Json(JwkSet {
        keys: keys.iter().map(|k| k.jwk.clone()).collect(),
    })
}

async fn mint_route(State(s): S, Json(req): Json<MintRequest>) -> Response {
    match mint(&s, &req) {
        Ok(t) => t.into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn rotate_route(State(s): S) -> Response {
    match rotate(&s) {
        Ok(kid) => Json(json!({ "kid": kid })).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn stats(State(s): S) -> Json<Value> {
    Json(json!({
        "discovery_fetches": s.discovery_fetches.load(Ordering::SeqCst),
        "jwks_fetches": s.jwks_fetches.load(Ordering::SeqCst),
        "mi_tokens": s.mi_tokens.load(Ordering::SeqCst),
        "token_reviews": s.token_reviews.load(Ordering::SeqCst),
    }))
}

/// Claims of a token this IdP signed with a published key and that has not expired (any audience).
fn verify_own(s: &IdpState, token: &str) -> Option<Map<String, Value>> {
    let header = jsonwebtoken::decode_header(token).ok()?;
    let jwk = {
        let keys = s.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.iter()
            .find(|k| Some(&k.kid) == header.kid.as_ref())
            .map(|k| k.jwk.clone())?
    };
    let dk = jsonwebtoken::DecodingKey::from_jwk(&jwk).ok()?;
    let mut v = jsonwebtoken::Validation::new(Algorithm::RS256);
    v.validate_aud = false;
    jsonwebtoken::decode::<Map<String, Value>>(token, &dk, &v)
        .ok()
        .map(|d| d.claims)
}

/// The Kubernetes TokenReview API, for tokens this IdP minted as service-account tokens.
async fn token_review(State(s): S, Json(review): Json<Value>) -> Response {
    s.token_reviews.fetch_add(1, Ordering::SeqCst);
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let wanted: Vec<Value> = review["spec"]["audiences"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let status = match verify_own(&s, token) {
        Some(c)
            if c.get("sub")
                .and_then(Value::as_str)
                .is_some_and(|u| u.starts_with("system:serviceaccount:")) =>
        {
            let auds = match c.get("aud") {
                Some(Value::Array(a)) => a.clone(),
                Some(v) => vec![v.clone()],
                None => Vec::new(),
            };
            json!({
                "authenticated": true,
                "user": {
                    "username": c["sub"],
                    "uid": c.get("kubernetes.io").map_or(Value::Null, |k| k["serviceaccount"]["uid"].clone()),
                    "groups": ["system:serviceaccounts", "system:authenticated"],
                },
                "audiences": if wanted.is_empty() { auds } else { wanted.into_iter().filter(|w| auds.contains(w)).collect() },
            })
        }
        _ => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    (
        StatusCode::CREATED,
        Json(json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": review["spec"],
            "status": status,
        })),
    )
        .into_response()
}

/// The container credentials endpoint (ECS task role / EKS Pod Identity shape).
async fn container_credentials(State(s): S, headers: HeaderMap) -> Response {
    let Some(c) = s
        .container_credentials
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
    else {
        return (StatusCode::NOT_FOUND, "no container credentials configured").into_response();
    };
    let ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == c.authorization);
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"code": "AccessDenied", "message": "bad authorization token"})),
        )
            .into_response();
    }
    s.container_fetches.fetch_add(1, Ordering::SeqCst);
    let expiration = time_rfc3339(now() + 3600);
    Json(json!({
        "AccessKeyId": c.access_key_id,
        "SecretAccessKey": c.secret_access_key,
        "Token": c.session_token,
        "Expiration": expiration,
        "RoleArn": "arn:aws:iam::123456789012:role/container",
    }))
    .into_response()
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time (civil-from-days; no date crate needed here). Fixtures that
/// carry AWS-style timestamps use it too.
pub fn time_rfc3339(t: i64) -> String {
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// A managed-identity access token for `resource`, shaped like Entra's v1 tokens.
fn mi_token(s: &IdpState, resource: &str) -> anyhow::Result<(String, i64)> {
    let mi = &s.cfg.managed_identity;
    let exp = now() + 3600;
    let mut claims = Map::new();
    for (k, v) in [
        ("tid", &mi.tenant),
        ("oid", &mi.oid),
        ("sub", &mi.oid),
        ("appid", &mi.appid),
    ] {
        claims.insert(k.into(), json!(v));
    }
    claims.insert("idtyp".into(), json!("app"));
    let token = mint(
        s,
        &MintRequest {
            iss: Some(format!("https://sts.windows.net/{}/", mi.tenant)),
            sub: Some(mi.oid.clone()),
            aud: Some(json!(resource.trim_end_matches("/.default"))),
            ttl_secs: Some(3600),
            claims,
            ..MintRequest::default()
        },
    )?;
    s.mi_tokens.fetch_add(1, Ordering::SeqCst);
    Ok((token, exp))
}

fn mi_answer(s: &IdpState, q: &BTreeMap<String, String>) -> Response {
    let Some(resource) = q.get("resource") else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_request", "error_description": "resource is required"})),
        )
            .into_response();
    };
    match mi_token(s, resource) {
        Ok((token, exp)) => Json(json!({
            "access_token": token,
            "expires_on": exp.to_string(),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": s.cfg.managed_identity.appid,
        }))
        .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[derive(Deserialize)]
struct ClientCredentials {
    grant_type: String,
    client_id: String,
    client_assertion_type: String,
    client_assertion: String,
    scope: String,
}

async fn workload_token(
    State(s): S,
    Path(tenant): Path<String>,
    axum::Form(f): axum::Form<ClientCredentials>,
) -> Response {
    let bad = |d: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_client", "error_description": d})),
        )
            .into_response()
    };
    if f.grant_type != "client_credentials"
        || f.client_assertion_type != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    {
        return bad("unsupported grant");
    }
    // The federated assertion must be ours, for the token-exchange audience.
    let key = {
        let keys = s.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.iter()
            .map(|k| (k.kid.clone(), k.jwk.clone()))
            .collect::<Vec<_>>()
    };
    let header = match jsonwebtoken::decode_header(&f.client_assertion) {
        Ok(h) => h,
        Err(_) => return bad("malformed assertion"),
    };
    let Some((_, jwk)) = key.iter().find(|(kid, _)| Some(kid) == header.kid.as_ref()) else {
        return bad("assertion signed by an unknown key");
    };
    let Ok(dk) = jsonwebtoken::DecodingKey::from_jwk(jwk) else {
        return bad("bad key");
    };
    let mut v = jsonwebtoken::Validation::new(Algorithm::RS256);
    v.set_audience(&["api://AzureADTokenExchange"]);
    if jsonwebtoken::decode::<Value>(&f.client_assertion, &dk, &v).is_err() {
        return bad("AADSTS700211: assertion rejected");
    }
    let resource = f.scope.trim_end_matches("/.default").to_string();
    let mi = &s.cfg.managed_identity;
    let claims = json!({"tid": tenant, "oid": mi.oid, "azp": f.client_id, "idtyp": "app"});
    match mint(
        &s,
        &MintRequest {
            iss: Some(format!("{}/{tenant}/v2.0", s.base)),
            sub: Some(mi.oid.clone()),
            aud: Some(json!(resource)),
            ttl_secs: Some(3600),
            claims: claims.as_object().cloned().unwrap_or_default(),
            ..MintRequest::default()
        },
    ) {
        Ok(t) => {
            s.mi_tokens.fetch_add(1, Ordering::SeqCst);
            Json(json!({"access_token": t, "token_type": "Bearer", "expires_in": 3600}))
                .into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn app_service_token(
    State(s): S,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let ok = headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == s.cfg.identity_header);
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"statusCode": 401, "message": "missing or wrong X-IDENTITY-HEADER"})),
        )
            .into_response();
    }
    mi_answer(&s, &q)
}

async fn imds_token(
    State(s): S,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    if headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_request", "error_description": "Required metadata header not specified"})),
        )
            .into_response();
    }
    mi_answer(&s, &q)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_from_unix() {
        assert_eq!(super::time_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::time_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::time_rfc3339(1_795_618_861), "2026-11-25T15:01:01Z");
    }
}
