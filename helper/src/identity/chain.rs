//! `chain`: try identity sources in order. "Not configured here" moves on to the next; a real failure
//! stops the chain. When nothing works, the error lists every attempt. A developer sign-in that has run
//! out (`SignInNeeded`) stops the chain with that error alone, so the person reads what to run.

use super::{Identity, Proof, ProveContext, ProveFuture};
use crate::error::IdentityError;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

/// A chain member's name and what loading it gave.
pub type Loaded = (String, Result<Box<dyn Identity>, IdentityError>);

pub struct ChainIdentity {
    members: Vec<Box<dyn Identity>>,
    /// Sources skipped at load time, with why.
    skipped: Vec<String>,
}

impl ChainIdentity {
    /// `loaded`: each source's load result, in order.
    pub fn new(loaded: Vec<Loaded>) -> Result<Self, IdentityError> {
        let mut members = Vec::new();
        let mut skipped = Vec::new();
        for (name, r) in loaded {
            match r {
                Ok(i) => members.push(i),
                Err(e @ IdentityError::NotConfigured { .. }) => {
                    skipped.push(format!("{name}: {e}"))
                }
                // A source that is configured but broken stops the chain: silently falling through to a
                // weaker identity would hide the problem.
                Err(e) => return Err(e),
            }
        }
        if members.is_empty() {
            return Err(IdentityError::Chain { attempts: skipped });
        }
        Ok(ChainIdentity { members, skipped })
    }
}

impl Identity for ChainIdentity {
    fn name(&self) -> &'static str {
        "chain"
    }

    fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"tollgate-token chain fingerprint v1\0");
        for m in &self.members {
            h.update(m.name().as_bytes());
            h.update(b"\0");
            h.update(m.fingerprint().as_bytes());
            h.update(b"\0");
        }
        hex::encode(h.finalize())
    }

    fn prove<'a>(&'a self, ctx: &'a ProveContext<'a>) -> ProveFuture<'a> {
        Box::pin(async move {
            let mut attempts = self.skipped.clone();
            for m in &self.members {
                match m.prove(ctx).await {
                    Ok(p) => return Ok::<Proof, IdentityError>(p),
                    Err(e @ IdentityError::NotConfigured { .. }) => {
                        attempts.push(format!("{}: {e}", m.name()));
                    }
                    // The source applies but its sign-in ran out: what the person must run is the whole
                    // message, and the exit code (67) must say so.
                    Err(e @ IdentityError::SignInNeeded { .. }) => return Err(e),
                    Err(e) => {
                        attempts.push(format!("{}: {e}", m.name()));
                        return Err(IdentityError::ChainStopped { attempts });
                    }
                }
            }
            Err(IdentityError::Chain { attempts })
        })
    }

    fn secrets(&self) -> Vec<SecretString> {
        self.members.iter().flat_map(|m| m.secrets()).collect()
    }
}
