//! Signed checkpoints of the audit chain (the certificate-transparency "signed tree head").
//!
//! A hash chain shows edits, deletions in the middle and reordering, but not the removal of its newest
//! records: what is left is still a valid chain. So the writer periodically signs `(seq, hash, ts)` of the
//! chain head with the broker's current signing key (an ES256 JWS with the key's `kid`, `typ`
//! [`TYP`]), appends it to the chain as a `checkpoint` record, and logs it (target [`LOG_TARGET`]) so a copy
//! leaves the database with the logs. `tollgate-broker audit verify --checkpoint` then proves the chain still
//! reaches every given checkpoint's `seq` with that exact hash; truncation below a checkpoint, or a chain
//! rewritten and re-hashed from some record on, is reported as such.
//!
//! What it cannot show: records appended after the newest checkpoint that left the database. Keep the
//! interval short enough for your tolerance (`[audit] checkpoint_every`, `checkpoint_interval_secs`).

use super::{AuditError, AuditSink, Verification};
use crate::token::KeyRing;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// JWS `typ` of a checkpoint (an access token is never accepted as one, nor the reverse: access tokens
/// require `aud` and `exp`, which a checkpoint does not carry).
pub const TYP: &str = "tollgate-audit-checkpoint+jwt";
/// `tracing` target of the checkpoint log line.
pub const LOG_TARGET: &str = "tollgate_audit_checkpoint";

/// When to checkpoint. `0` turns a trigger off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointConfig {
    /// After every record whose `seq` is a multiple of this (exactly one replica writes that record, so
    /// exactly one checkpoints it). Default 1000.
    pub every: u64,
    /// And when this many seconds passed since this process's last checkpoint and the chain grew. Default
    /// 60.
    pub interval_secs: u64,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            every: 1000,
            interval_secs: 60,
        }
    }
}

/// What a checkpoint attests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointClaims {
    /// The broker (`server.public_url`).
    pub iss: String,
    pub seq: i64,
    /// Hash of record `seq`.
    pub hash: String,
    /// Unix seconds of signing.
    pub ts: i64,
}

/// A signed checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Signed {
    pub kid: String,
    pub jws: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("no signing key is loaded")]
    NoKey,
    #[error("signing failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

pub trait CheckpointSigner: Send + Sync {
    fn sign(&self, seq: i64, hash: &str, ts: i64) -> Result<Signed, CheckpointError>;
}

/// Signs with the key that signs tokens at `ts`.
pub struct RingSigner {
    pub keys: Arc<KeyRing>,
    pub issuer: String,
}

impl CheckpointSigner for RingSigner {
    fn sign(&self, seq: i64, hash: &str, ts: i64) -> Result<Signed, CheckpointError> {
        let key = self
            .keys
            .active_at(u64::try_from(ts).unwrap_or(0))
            .ok_or(CheckpointError::NoKey)?;
        let enc = key.encoding().ok_or(CheckpointError::NoKey)?;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.kid.clone());
        header.typ = Some(TYP.into());
        let claims = CheckpointClaims {
            iss: self.issuer.clone(),
            seq,
            hash: hash.to_string(),
            ts,
        };
        Ok(Signed {
            kid: key.kid.clone(),
            jws: jsonwebtoken::encode(&header, &claims, enc)?,
        })
    }
}

/// Every checkpoint JWS in `text`: a JSON or plain log line, a JSONL export, one JWS per line, or a mix.
/// Anything that looks like a compact JWS is decoded and kept when its header's `typ` is [`TYP`].
pub fn extract(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for cand in text.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        if !cand.starts_with("eyJ") || cand.matches('.').count() != 2 {
            continue;
        }
        let ok = jsonwebtoken::decode_header(cand)
            .ok()
            .is_some_and(|h| h.typ.as_deref() == Some(TYP));
        if ok && !out.iter().any(|x| x == cand) {
            out.push(cand.to_string());
        }
    }
    out
}

/// The outcome for one checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckpointCheck {
    pub seq: Option<i64>,
    pub hash: Option<String>,
    pub ts: Option<i64>,
    pub kid: Option<String>,
    /// `None` when the chain reaches `seq` with exactly `hash` and the signature is valid.
    pub problem: Option<String>,
}

fn check_signature(jws: &str, keys: &KeyRing) -> Result<(String, CheckpointClaims), String> {
    let header = jsonwebtoken::decode_header(jws).map_err(|e| format!("not a JWS: {e}"))?;
    if header.typ.as_deref() != Some(TYP) {
        return Err(format!("not a checkpoint (typ {:?})", header.typ));
    }
    if header.alg != Algorithm::ES256 {
        return Err(format!("algorithm {:?} not allowed", header.alg));
    }
    let kid = header.kid.ok_or("no kid in the checkpoint header")?;
    let key = keys
        .find(&kid)
        .ok_or_else(|| format!("signed by unknown key {kid} (not among the verification keys)"))?;
    let mut v = Validation::new(Algorithm::ES256);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<CheckpointClaims>(jws, &key.decoding, &v)
        .map_err(|e| format!("signature or claims invalid (key {kid}): {e}"))?;
    Ok((kid, data.claims))
}

/// Walk the chain and check each checkpoint against it. The chain's own verdict is in the
/// [`Verification`]; each checkpoint gets its own.
pub async fn verify_checkpoints(
    sink: &dyn AuditSink,
    jws: &[String],
    keys: &KeyRing,
) -> Result<(Verification, Vec<CheckpointCheck>), AuditError> {
    let parsed: Vec<Result<(String, CheckpointClaims), String>> =
        jws.iter().map(|j| check_signature(j, keys)).collect();
    let wanted: BTreeSet<i64> = parsed
        .iter()
        .filter_map(|p| p.as_ref().ok().map(|(_, c)| c.seq))
        .collect();
    let (v, hashes) = super::verify_collect(sink, &wanted).await?;
    let last = i64::try_from(v.records).unwrap_or(i64::MAX);
    let out = parsed
        .into_iter()
        .map(|p| match p {
            Err(problem) => CheckpointCheck {
                seq: None,
                hash: None,
                ts: None,
                kid: None,
                problem: Some(problem),
            },
            Ok((kid, c)) => {
                let problem = judge(&v, last, &hashes, &kid, &c);
                CheckpointCheck {
                    seq: Some(c.seq),
                    hash: Some(c.hash),
                    ts: Some(c.ts),
                    kid: Some(kid),
                    problem,
                }
            }
        })
        .collect();
    Ok((v, out))
}

fn judge(
    v: &Verification,
    last: i64,
    hashes: &BTreeMap<i64, String>,
    kid: &str,
    c: &CheckpointClaims,
) -> Option<String> {
    if let Some(b) = &v.first_break
        && c.seq >= b.seq
    {
        return Some(format!(
            "cannot be checked: the chain breaks at seq {} before reaching seq {}",
            b.seq, c.seq
        ));
    }
    if c.seq > last {
        return Some(format!(
            "TRUNCATED: the chain ends at seq {last}, but a checkpoint signed at {} by key {kid} attests seq {} \
             (hash {}): at least {} record(s) at the end were deleted",
            c.ts,
            c.seq,
            c.hash,
            c.seq - last
        ));
    }
    match hashes.get(&c.seq) {
        Some(h) if *h == c.hash => None,
        Some(h) => Some(format!(
            "REWRITTEN: record {} has hash {h}, but a checkpoint signed at {} by key {kid} attests {}",
            c.seq, c.ts, c.hash
        )),
        None => Some(format!("record {} was not found", c.seq)),
    }
}
