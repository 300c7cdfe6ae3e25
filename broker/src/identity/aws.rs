//! AWS IAM identities: a SigV4-signed `sts:GetCallerIdentity` request (signed by the helper, never sent by
//! it), replayed by the broker to an allow-listed STS endpoint, the way Vault's `iam` auth method works.
//!
//! Everything that can be checked locally is checked before the replay, so the proof can never make the
//! broker connect anywhere but a configured endpoint:
//! - method `POST`, body exactly `Action=GetCallerIdentity&Version=2011-06-15`, URL with no query;
//! - the credential scope's region picks the endpoint; the signed host must be that endpoint's;
//! - our server-ID header present, equal to the configured value, **and** listed in `SignedHeaders`
//!   (a request signed for another service cannot be replayed here);
//! - only SigV4's own `X-Amz-*` headers (plus configured extras), and no other unexpected header;
//! - `X-Amz-Date` within ±`max_skew_secs` (≤ 15 min) of the broker's clock (STS and moto do not bound
//!   replays of a signed request for you);
//! - each signature is accepted once, across every replica sharing the governance store (a claim on
//!   the signature's SHA-256 in the store's `replay_guard` table, with a per-process moka front so a
//!   replay to the same replica is refused without a store round-trip). If the store cannot be asked, the
//!   exchange is refused as `temporarily_unavailable` (fail closed: a replay check that cannot be made
//!   is not skipped);
//!
//! and after it: no redirects followed; only a `200` with `Content-Type: text/xml` is parsed. The ARN is
//! canonicalised (`assumed-role/R/S` → `role/R`, paths dropped), the session kept as an attribute.

use super::config::{AwsConfig, StsEndpoint};
use super::{VerifiedIdentity, Verifier, VerifyError};
use crate::clock::SharedClock;
use crate::governance::store::Store;
use async_trait::async_trait;
use sha2::Digest;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tollgate::IdentityKind;
use tollgate::aws::{
    GET_CALLER_IDENTITY_BODY, NONCE_HEADER, SERVER_ID_HEADER, SignedCallerIdentity,
};
use tollgate::exchange::TOKEN_TYPE_AWS_SIGV4;

/// `X-Amz-*` headers SigV4 itself uses (Vault's default `allowed_sts_header_values`).
const SIGV4_AMZ_HEADERS: &[&str] = &[
    "x-amz-algorithm",
    "x-amz-content-sha256",
    "x-amz-credential",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-signature",
    "x-amz-signedheaders",
];

/// Other headers a signed GetCallerIdentity may carry.
const OTHER_HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "host",
    SERVER_ID_HEADER,
    NONCE_HEADER,
];

/// Largest STS answer we read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

pub struct AwsVerifier {
    cfg: AwsConfig,
    http: reqwest::Client,
    /// Local front of the replay guard: signature digests this process has claimed. Kept for twice the
    /// skew window.
    seen: moka::future::Cache<String, ()>,
    /// The replay guard every replica shares (the governance store).
    store: Arc<dyn Store>,
    clock: SharedClock,
}

/// How long past its `X-Amz-Date` a claimed signature is kept in the store, beyond the skew window: room
/// for replicas whose clocks disagree a little.
const CLAIM_MARGIN_SECS: i64 = 300;

/// The parts of a SigV4 `Authorization` header we check.
#[derive(Debug, PartialEq, Eq)]
struct Authorization<'a> {
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(v: &str) -> Option<Authorization<'_>> {
    let rest = v.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let (mut cred, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let (k, val) = part.trim().split_once('=')?;
        let slot = match k {
            "Credential" => &mut cred,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut sig,
            _ => return None,
        };
        if slot.replace(val).is_some() {
            return None;
        }
    }
    let mut scope = cred?.split('/');
    let (_key_id, date, region, service, term) = (
        scope.next()?,
        scope.next()?,
        scope.next()?,
        scope.next()?,
        scope.next()?,
    );
    if scope.next().is_some() || term != "aws4_request" {
        return None;
    }
    let signature = sig?;
    if signature.len() != 64
        || !signature
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    Some(Authorization {
        date,
        region,
        service,
        signed_headers: signed?.split(';').collect(),
        signature,
    })
}

/// `20261125T132034Z` → Unix seconds.
fn parse_amz_date(s: &str) -> Option<i64> {
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::PrimitiveDateTime::parse(s, fmt)
        .ok()
        .map(|t| t.assume_utc().unix_timestamp())
}

/// The text of `<tag>…</tag>` inside `xml`, if it is plain (no markup or entities).
fn xml_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    let v = xml[start..end].trim();
    (!v.is_empty() && !v.contains(['<', '&'])).then_some(v)
}

/// A caller identity as STS reported it, canonicalised.
#[derive(Debug, PartialEq, Eq)]
struct Caller {
    canonical_arn: String,
    attributes: BTreeMap<String, Vec<String>>,
}

/// Canonicalise an ARN from GetCallerIdentity: `arn:P:sts::A:assumed-role/R/S` → `arn:P:iam::A:role/R`
/// (session kept as an attribute), `arn:P:iam::A:user/path/N` → `arn:P:iam::A:user/N` (path kept as an
/// attribute), the way Vault binds principals.
fn canonicalise(arn: &str, user_id: &str, account: &str) -> Option<Caller> {
    let mut parts = arn.splitn(6, ':');
    let (prefix, partition, service, _region, acct, resource) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if prefix != "arn"
        || !matches!(service, "iam" | "sts")
        || acct != account
        || acct.len() != 12
        || !acct.bytes().all(|b| b.is_ascii_digit())
        || partition.is_empty()
    {
        return None;
    }
    let segs: Vec<&str> = resource.split('/').collect();
    let mut attrs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        attrs.insert(k.to_string(), vec![v.to_string()]);
    };
    let canonical = match segs.as_slice() {
        ["root"] => {
            put("type", "root");
            format!("arn:{partition}:iam::{acct}:root")
        }
        ["assumed-role", role, session] if !role.is_empty() && !session.is_empty() => {
            put("type", "assumed-role");
            put("role", role);
            put("session", session);
            format!("arn:{partition}:iam::{acct}:role/{role}")
        }
        [ty @ ("user" | "role"), path @ .., name] if !name.is_empty() => {
            put("type", ty);
            put(ty, name);
            if !path.is_empty() {
                put("path", &format!("/{}/", path.join("/")));
            }
            format!("arn:{partition}:iam::{acct}:{ty}/{name}")
        }
        _ => return None,
    };
    put("account", acct);
    put("partition", partition);
    put("arn", arn);
    put("user_id", user_id);
    put(
        "principal_id",
        user_id.split_once(':').map_or(user_id, |(p, _)| p),
    );
    Some(Caller {
        canonical_arn: canonical,
        attributes: attrs,
    })
}

impl AwsVerifier {
    pub fn new(
        cfg: AwsConfig,
        clock: SharedClock,
        store: Arc<dyn Store>,
    ) -> Result<Self, VerifyError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // Environment proxies could send the replay elsewhere; STS is reached directly.
            .no_proxy()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .build()
            .map_err(|e| VerifyError::Unavailable(format!("http client: {e}")))?;
        Ok(AwsVerifier {
            seen: moka::future::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(Duration::from_secs(2 * cfg.max_skew_secs + 60))
                .build(),
            cfg,
            http,
            store,
            clock,
        })
    }

    /// Every local check. Returns the endpoint to replay to, the signature and the signed time.
    fn check<'a>(
        &'a self,
        p: &'a SignedCallerIdentity,
    ) -> Result<(&'a StsEndpoint, &'a str, i64), VerifyError> {
        let rej = VerifyError::Rejected;
        if p.method != "POST" || p.body != GET_CALLER_IDENTITY_BODY {
            return Err(rej("not_get_caller_identity"));
        }
        let url = reqwest::Url::parse(&p.url).map_err(|_| rej("bad_url"))?;
        if !matches!(url.scheme(), "https" | "http")
            || url.query().is_some()
            || url.fragment().is_some()
            || !url.username().is_empty()
            || url.password().is_some()
            || url.path() != "/"
        {
            return Err(rej("bad_url"));
        }
        let authority = match (url.host_str(), url.port()) {
            (Some(h), Some(port)) => format!("{h}:{port}"),
            (Some(h), None) => h.to_string(),
            (None, _) => return Err(rej("bad_url")),
        }
        .to_ascii_lowercase();

        // Header allowlist, one value each.
        for (name, values) in &p.headers {
            let n = name.to_ascii_lowercase();
            let allowed = OTHER_HEADERS.contains(&n.as_str())
                || SIGV4_AMZ_HEADERS.contains(&n.as_str())
                || self.cfg.allowed_amz_headers.contains(&n);
            if !allowed {
                return Err(rej("header_not_allowed"));
            }
            // One value each, printable ASCII only (a CR/LF would otherwise fail later, at send time).
            if values.len() != 1
                || !values[0].bytes().all(|b| (0x20..0x7f).contains(&b))
                || name.is_empty()
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(rej("malformed_proof"));
            }
        }
        let header = |n: &str| match p.header(n) {
            None => Ok(None),
            Some(Ok(v)) => Ok(Some(v)),
            Some(Err(())) => Err(rej("malformed_proof")),
        };
        let auth = header("authorization")?.ok_or(rej("unsigned"))?;
        let auth = parse_authorization(auth).ok_or(rej("bad_authorization"))?;
        if auth.service != "sts" {
            return Err(rej("bad_authorization"));
        }
        // The region picks the endpoint; the signed host must be that endpoint's.
        let endpoint = self
            .cfg
            .endpoints
            .iter()
            .find(|e| e.region == auth.region)
            .ok_or(rej("endpoint_not_allowed"))?;
        if endpoint.host != authority {
            return Err(rej("endpoint_not_allowed"));
        }
        if let Some(h) = header("host")?
            && !h.eq_ignore_ascii_case(&authority)
        {
            return Err(rej("endpoint_not_allowed"));
        }
        // Server ID: present, ours, and covered by the signature.
        let sid = header(SERVER_ID_HEADER)?.ok_or(rej("server_id_missing"))?;
        if !bool::from(sid.as_bytes().ct_eq(self.cfg.server_id.as_bytes())) {
            return Err(rej("server_id_mismatch"));
        }
        for must in ["host", "x-amz-date", SERVER_ID_HEADER] {
            if !auth.signed_headers.contains(&must) {
                return Err(rej(if must == SERVER_ID_HEADER {
                    "server_id_unsigned"
                } else {
                    "bad_authorization"
                }));
            }
        }
        for signed in &auth.signed_headers {
            if *signed != "host" && header(signed)?.is_none() {
                return Err(rej("bad_authorization"));
            }
        }
        // Freshness against the broker's clock.
        let date = header("x-amz-date")?.ok_or(rej("bad_date"))?;
        let t = parse_amz_date(date).ok_or(rej("bad_date"))?;
        if !date.starts_with(auth.date) || auth.date.len() != 8 {
            return Err(rej("bad_date"));
        }
        let now = i64::try_from(self.clock.now_secs()).unwrap_or(i64::MAX);
        if now.abs_diff(t) > self.cfg.max_skew_secs {
            return Err(rej("stale_date"));
        }
        Ok((endpoint, auth.signature, t))
    }

    /// Claim the signature: locally first (a replay to this replica costs no store round-trip), then in
    /// the shared store. `Ok(key)` = first use; the key is needed to give the claim back.
    async fn claim(&self, signature: &str, signed_at: i64) -> Result<String, VerifyError> {
        let key = hex::encode(sha2::Sha256::digest(signature.as_bytes()));
        if !self.seen.entry(key.clone()).or_insert(()).await.is_fresh() {
            return Err(VerifyError::Rejected("replayed"));
        }
        let now = i64::try_from(self.clock.now_secs()).unwrap_or(i64::MAX);
        let skew = i64::try_from(self.cfg.max_skew_secs).unwrap_or(900);
        let until = signed_at
            .saturating_add(skew)
            .saturating_add(CLAIM_MARGIN_SECS);
        match self
            .store
            .claim_once(&format!("aws:{key}"), now, until)
            .await
        {
            Ok(true) => Ok(key),
            // Another replica took it; keep the local entry so the next replay here is refused early.
            Ok(false) => Err(VerifyError::Rejected("replayed")),
            Err(e) => {
                self.seen.invalidate(&key).await;
                Err(VerifyError::Unavailable(format!("replay guard: {e}")))
            }
        }
    }

    /// Give a claim back: the proof was not spent (STS refused it or could not be reached).
    async fn release(&self, key: &str) {
        self.seen.invalidate(key).await;
        if let Err(e) = self.store.release_claim(&format!("aws:{key}")).await {
            // The signature stays claimed until it would be stale anyway: safe, only less forgiving.
            tracing::warn!(error = %e, "could not release a replay claim");
        }
    }

    async fn replay(
        &self,
        endpoint: &StsEndpoint,
        p: &SignedCallerIdentity,
    ) -> Result<(String, String, String), VerifyError> {
        let mut req = self.http.post(format!("{}/", endpoint.url));
        for (name, values) in &p.headers {
            if name.eq_ignore_ascii_case("host") {
                continue; // reqwest sets it from the endpoint URL, which is the signed host.
            }
            for v in values {
                req = req.header(name.as_str(), v.as_str());
            }
        }
        let mut resp = req
            .body(p.body.clone())
            .send()
            .await
            .map_err(|e| VerifyError::Unavailable(format!("sts {}: {e}", endpoint.url)))?;
        let status = resp.status();
        if status.is_server_error() {
            return Err(VerifyError::Unavailable(format!(
                "sts {} answered {status}",
                endpoint.url
            )));
        }
        if status != reqwest::StatusCode::OK {
            tracing::debug!(%status, endpoint = %endpoint.url, "sts refused the signed request");
            return Err(VerifyError::Rejected(if status.is_client_error() {
                "sts_rejected"
            } else {
                "sts_unexpected"
            }));
        }
        let ct = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if ct.split(';').next().map(str::trim) != Some("text/xml") {
            return Err(VerifyError::Rejected("sts_unexpected"));
        }
        let mut body = Vec::new();
        while let Some(c) = resp
            .chunk()
            .await
            .map_err(|e| VerifyError::Unavailable(format!("sts read: {e}")))?
        {
            body.extend_from_slice(&c);
            if body.len() > MAX_RESPONSE_BYTES {
                return Err(VerifyError::Rejected("sts_unexpected"));
            }
        }
        let xml =
            std::str::from_utf8(&body).map_err(|_| VerifyError::Rejected("sts_unexpected"))?;
        let head = xml.trim_start();
        if !(head.starts_with("<?xml") || head.starts_with("<GetCallerIdentityResponse")) {
            return Err(VerifyError::Rejected("sts_unexpected"));
        }
        let result = xml_text_block(xml, "GetCallerIdentityResult")
            .ok_or(VerifyError::Rejected("sts_unexpected"))?;
        let get = |t| xml_text(result, t).ok_or(VerifyError::Rejected("sts_unexpected"));
        Ok((
            get("Arn")?.to_string(),
            get("UserId")?.to_string(),
            get("Account")?.to_string(),
        ))
    }
}

/// The raw inside of `<tag>…</tag>` (may contain markup).
fn xml_text_block<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(&xml[start..end])
}

#[async_trait]
impl Verifier for AwsVerifier {
    fn token_types(&self) -> &[&'static str] {
        &[TOKEN_TYPE_AWS_SIGV4]
    }

    async fn verify(
        &self,
        _token_type: &str,
        subject_token: &str,
    ) -> Result<VerifiedIdentity, VerifyError> {
        let proof = SignedCallerIdentity::decode(subject_token)
            .map_err(|_| VerifyError::Rejected("malformed_proof"))?;
        let (endpoint, signature, signed_at) = self.check(&proof)?;
        // Claim the signature before the replay so two concurrent uses (here or on another replica)
        // cannot both pass. Only signatures STS accepted stay claimed, so garbage cannot crowd out real
        // entries.
        let key = self.claim(signature, signed_at).await?;
        let (arn, user_id, account) = match self.replay(endpoint, &proof).await {
            Ok(r) => r,
            Err(e) => {
                self.release(&key).await;
                return Err(e);
            }
        };
        let caller = canonicalise(&arn, &user_id, &account)
            .ok_or(VerifyError::Rejected("unsupported_principal"))?;
        let mut attributes = caller.attributes;
        attributes.insert("region".into(), vec![endpoint.region.clone()]);
        Ok(VerifiedIdentity {
            kind: IdentityKind::Aws,
            subject: caller.canonical_arn,
            issuer: Some(endpoint.url.clone()),
            attributes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_header() {
        let sig = "a".repeat(64);
        let header = format!(
            "AWS4-HMAC-SHA256 Credential=AKID/20261125/eu-west-1/sts/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-tollgate-server-id, Signature={sig}"
        );
        let a = parse_authorization(&header).expect("parse");
        assert_eq!(a.region, "eu-west-1");
        assert_eq!(a.date, "20261125");
        assert_eq!(a.signed_headers.len(), 4);
        assert!(parse_authorization("AWS4-HMAC-SHA256 Credential=A/1/r/sts/aws4_request, SignedHeaders=host, Signature=zz").is_none());
        assert!(parse_authorization(&format!("AWS4-HMAC-SHA256 Credential=A/1/r/sts/aws4_request, Credential=B/1/r/sts/aws4_request, SignedHeaders=host, Signature={sig}")).is_none());
        assert!(parse_authorization(&format!("AWS4-ECDSA-P256-SHA256 Credential=A/1/r/sts/aws4_request, SignedHeaders=host, Signature={sig}")).is_none());
    }

    #[test]
    fn amz_date() {
        assert_eq!(parse_amz_date("19700101T000100Z"), Some(60));
        assert!(parse_amz_date("2026-11-25T13:20:34Z").is_none());
    }

    #[test]
    fn arn_canonicalisation() {
        let c = canonicalise(
            "arn:aws:sts::123456789012:assumed-role/workload/sess1",
            "AROAXYZ:sess1",
            "123456789012",
        )
        .expect("assumed");
        assert_eq!(c.canonical_arn, "arn:aws:iam::123456789012:role/workload");
        assert_eq!(c.attributes["session"], vec!["sess1"]);
        assert_eq!(c.attributes["principal_id"], vec!["AROAXYZ"]);
        assert_eq!(c.attributes["account"], vec!["123456789012"]);
        let u = canonicalise(
            "arn:aws:iam::123456789012:user/team/a/builder",
            "AIDA1",
            "123456789012",
        )
        .expect("user");
        assert_eq!(u.canonical_arn, "arn:aws:iam::123456789012:user/builder");
        assert_eq!(u.attributes["path"], vec!["/team/a/"]);
        assert!(canonicalise("arn:aws:s3:::bucket", "x", "123456789012").is_none());
        assert!(
            canonicalise("arn:aws:iam::123456789012:user/x", "AIDA1", "999999999999").is_none(),
            "account must agree with the ARN"
        );
        assert!(
            canonicalise(
                "arn:aws:sts::123456789012:assumed-role/r",
                "A",
                "123456789012"
            )
            .is_none()
        );
    }

    #[test]
    fn xml_fields() {
        let x = "<GetCallerIdentityResponse><GetCallerIdentityResult><Arn>arn:aws:iam::1:user/a</Arn><UserId>AIDA</UserId><Account>1</Account></GetCallerIdentityResult></GetCallerIdentityResponse>";
        let r = xml_text_block(x, "GetCallerIdentityResult").expect("block");
        assert_eq!(xml_text(r, "Arn"), Some("arn:aws:iam::1:user/a"));
        assert_eq!(xml_text("<Arn>a&amp;b</Arn>", "Arn"), None);
    }
}
