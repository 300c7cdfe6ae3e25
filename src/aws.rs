//! The AWS identity proof: a SigV4-signed `sts:GetCallerIdentity` request that the helper signs but never
//! sends, and the broker replays to an allow-listed STS endpoint (the Vault `iam` auth method's design).
//!
//! On the wire (`subject_token` with `subject_token_type` =
//! [`TOKEN_TYPE_AWS_SIGV4`](crate::exchange::TOKEN_TYPE_AWS_SIGV4)) it is the base64url (no padding) of
//! the JSON form of [`SignedCallerIdentity`].

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The only body the broker accepts.
pub const GET_CALLER_IDENTITY_BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";

/// The header that binds a signed request to one broker (anti confused-deputy). It must be covered by
/// the signature (`SignedHeaders`), and its value must be the broker's configured server ID.
pub const SERVER_ID_HEADER: &str = "x-tollgate-server-id";

/// A signed per-request nonce: two proofs made in the same second with the same credentials would
/// otherwise be byte-identical, and the broker's replay cache would refuse the second.
pub const NONCE_HEADER: &str = "x-tollgate-nonce";

/// The content type the helper signs.
pub const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";

/// A signed, unsent `sts:GetCallerIdentity` request.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedCallerIdentity {
    /// Always `POST`.
    pub method: String,
    /// The STS URL the request was signed for, e.g. `https://sts.eu-west-1.amazonaws.com/`.
    pub url: String,
    /// Header name → values (Go `http.Header` shape, as Vault's `iam_request_headers`). `Host` may be
    /// left out: it is the URL's authority.
    pub headers: BTreeMap<String, Vec<String>>,
    /// Always [`GET_CALLER_IDENTITY_BODY`].
    pub body: String,
}

impl std::fmt::Debug for SignedCallerIdentity {
    /// The signed request is a bearer credential for ~15 minutes: show only where it points.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedCallerIdentity")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Why a subject token is not a [`SignedCallerIdentity`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not base64url")]
    Base64,
    #[error("not a signed caller identity document")]
    Json,
}

impl SignedCallerIdentity {
    /// The `subject_token` form: base64url (no padding) of the JSON.
    pub fn encode(&self) -> String {
        // Serialising a struct of strings cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(json)
    }

    pub fn decode(token: &str) -> Result<Self, DecodeError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(token.trim_end_matches('=').as_bytes())
            .map_err(|_| DecodeError::Base64)?;
        serde_json::from_slice(&bytes).map_err(|_| DecodeError::Json)
    }

    /// The single value of a header, looked up case-insensitively. `None` if absent; `Some(Err(()))` if
    /// present more than once or with several values (ambiguous, so refused).
    pub fn header(&self, name: &str) -> Option<Result<&str, ()>> {
        let mut found: Option<Result<&str, ()>> = None;
        for (k, vs) in &self.headers {
            if k.eq_ignore_ascii_case(name) {
                found = Some(match (found, vs.as_slice()) {
                    (None, [v]) => Ok(v.as_str()),
                    _ => Err(()),
                });
            }
        }
        found
    }
}

/// AWS credentials to sign with.
#[cfg(feature = "aws-sign")]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

#[cfg(feature = "aws-sign")]
impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// How to sign: the server ID to bind, extra headers to sign, the signing time.
#[cfg(feature = "aws-sign")]
pub struct SignOptions<'a> {
    /// Value of [`SERVER_ID_HEADER`]; `None` leaves the header out (tests of the broker's refusal).
    pub server_id: Option<&'a str>,
    /// More headers to sign (the helper: [`NONCE_HEADER`]; tests: an extra `X-Amz-*` header).
    pub extra_headers: &'a [(&'a str, &'a str)],
    pub time: std::time::SystemTime,
}

/// Why signing failed.
#[cfg(feature = "aws-sign")]
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("invalid STS URL {0:?}")]
    Url(String),
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// Sign a `sts:GetCallerIdentity` POST to `url` (e.g. `https://sts.eu-west-1.amazonaws.com/`) for
/// `region`, binding it to a broker with the server-ID header. Pure: nothing is sent.
#[cfg(feature = "aws-sign")]
pub fn sign_get_caller_identity(
    creds: &AwsCredentials,
    region: &str,
    url: &str,
    opts: &SignOptions<'_>,
) -> Result<SignedCallerIdentity, SignError> {
    let mut extra: Vec<(&str, &str)> = Vec::new();
    if let Some(sid) = opts.server_id {
        extra.push((SERVER_ID_HEADER, sid));
    }
    extra.extend_from_slice(opts.extra_headers);
    let headers = sign_sts_post(
        creds,
        region,
        url,
        GET_CALLER_IDENTITY_BODY,
        &extra,
        opts.time,
    )?;
    Ok(SignedCallerIdentity {
        method: "POST".into(),
        url: url.to_string(),
        headers,
        body: GET_CALLER_IDENTITY_BODY.into(),
    })
}

/// SigV4-sign a form POST of `body` to an STS `url`; returns every header to send (Go `http.Header`
/// shape). Also used by the helper for `AssumeRole`.
#[cfg(feature = "aws-sign")]
pub fn sign_sts_post(
    creds: &AwsCredentials,
    region: &str,
    url: &str,
    body: &str,
    extra_headers: &[(&str, &str)],
    time: std::time::SystemTime,
) -> Result<BTreeMap<String, Vec<String>>, SignError> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    use aws_sigv4::sign::v4;

    let identity = aws_credential_types::Credentials::new(
        &creds.access_key_id,
        &creds.secret_access_key,
        creds.session_token.clone(),
        None,
        "tollgate",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("sts")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| SignError::Sign(e.to_string()))?
        .into();
    let mut builder = http::Request::builder()
        .method("POST")
        .uri(url)
        .header("content-type", FORM_CONTENT_TYPE);
    for (k, v) in extra_headers {
        builder = builder.header(*k, *v);
    }
    let mut req = builder
        .body(body.to_string())
        .map_err(|_| SignError::Url(url.to_string()))?;
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let signable = SignableRequest::new(
        "POST",
        url,
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(body.as_bytes()),
    )
    .map_err(|e| SignError::Sign(e.to_string()))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| SignError::Sign(e.to_string()))?
        .into_parts();
    instructions.apply_to_request_http1x(&mut req);
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        map.entry(k.as_str().to_string()).or_default().push(
            v.to_str()
                .map_err(|e| SignError::Sign(e.to_string()))?
                .to_string(),
        );
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_debug_hides_signature() {
        let s = SignedCallerIdentity {
            method: "POST".into(),
            url: "https://sts.amazonaws.com/".into(),
            headers: [(
                "Authorization".to_string(),
                vec!["AWS4-HMAC-SHA256 Signature=deadbeef".to_string()],
            )]
            .into(),
            body: GET_CALLER_IDENTITY_BODY.into(),
        };
        let t = s.encode();
        assert!(!t.contains('='));
        assert_eq!(SignedCallerIdentity::decode(&t).expect("decode"), s);
        assert!(!format!("{s:?}").contains("deadbeef"));
        assert_eq!(s.header("authorization").map(|r| r.is_ok()), Some(true));
        assert!(s.header("x-amz-date").is_none());
        assert!(SignedCallerIdentity::decode("!!").is_err());
        assert!(SignedCallerIdentity::decode(&URL_SAFE_NO_PAD.encode("{}")).is_err());
    }
}
