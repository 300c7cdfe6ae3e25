//! Session affinity: a session (Codex's `session-id`, else the body's `prompt_cache_key`) stays on the target
//! that served it while that target is healthy, so the encrypted reasoning it built there (`reasoning` items'
//! `encrypted_content`, which only the organisation that made them can read) and the provider's prompt cache
//! keep working. When failover moves the session to a target of another reasoning domain (another provider,
//! organisation or account; `[affinity] reasoning_domains`), the input items that carry `encrypted_content`
//! are stripped from the request instead of letting the turn die with `invalid_encrypted_content`; the
//! answer says so in `x-tollgate-reasoning-stripped` and the log has a line.
//!
//! Where the session's target is kept: Redis (the `[limits] redis_url` the rate limits share), so every
//! replica sees the same target — an entry per session with a sliding TTL, one GET before and one SET after
//! each request (the SET off the request's path). Redis, not the governance store: the entry is a hint that
//! expires by itself, and a SQL write per turn would put the store on every request's path. Without Redis,
//! or while it is unreachable, each replica keeps its own (a bounded in-process cache with the same TTL).
//! Keys are a hash of the principal, the model and the session id: a session id never reaches Redis or a
//! log, and one principal cannot steer another's session.

use crate::config::LimitsConfig;
use crate::config::affinity::AffinityConfig;
use crate::router::ResolvedTarget;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The response header that says how many input items carrying encrypted content were stripped.
pub const STRIPPED_HEADER: http::HeaderName =
    http::HeaderName::from_static("x-tollgate-reasoning-stripped");

/// Where a session was last served: the target's label and reasoning domain, and the encrypted items of its
/// latest request that another domain made (by fingerprint, with that domain): Codex keeps every item in its
/// history, so an item stripped once comes back on every later turn and must be stripped again, while the
/// items the new target makes are kept.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sticky {
    pub domain: String,
    pub label: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub foreign: Vec<(String, String)>,
}

/// At most this many foreign items are remembered per session.
const MAX_FOREIGN: usize = 512;

impl Sticky {
    fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    fn decode(s: &str) -> Option<Sticky> {
        serde_json::from_str(s).ok()
    }

    /// The domain that made an encrypted item: a remembered foreign one, else this session's own (every item
    /// made since the last request came from the sticky target).
    fn domain_of(&self, fingerprint: &str) -> &str {
        self.foreign
            .iter()
            .find(|(fp, _)| fp == fingerprint)
            .map_or(self.domain.as_str(), |(_, d)| d.as_str())
    }
}

/// The hashed identity of one session of one principal on one model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionKey([u8; 32]);

impl SessionKey {
    fn hex(&self) -> String {
        hex::encode(&self.0[..16])
    }
}

/// The affinity table: shared in Redis when configured, else (and as a fallback) per process.
pub struct Affinity {
    ttl_secs: u64,
    domains: BTreeMap<String, String>,
    local: moka::sync::Cache<SessionKey, Sticky>,
    redis: Option<RedisMap>,
}

impl Affinity {
    pub fn new(cfg: &AffinityConfig, limits: &LimitsConfig) -> Self {
        let ttl = Duration::from_secs(cfg.ttl_secs.max(1));
        Affinity {
            ttl_secs: cfg.ttl_secs,
            domains: cfg.domains.clone(),
            local: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(ttl)
                .build(),
            redis: limits
                .redis_url
                .as_deref()
                .and_then(|u| RedisMap::new(u, &limits.redis_prefix)),
        }
    }

    /// The reasoning domain of a provider: its group in `[affinity] reasoning_domains`, else its name.
    pub fn domain<'a>(&'a self, provider: &'a str) -> &'a str {
        self.domains.get(provider).map_or(provider, String::as_str)
    }

    /// The key of a session, or `None` when affinity is off or the request names no session.
    pub fn key(&self, principal: &str, model: &str, session: Option<&str>) -> Option<SessionKey> {
        let session = session.filter(|s| !s.is_empty())?;
        if self.ttl_secs == 0 {
            return None;
        }
        let mut h = Sha256::new();
        for part in [principal, model, session] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        Some(SessionKey(h.finalize().into()))
    }

    /// Where the session was last served: Redis first (every replica's view), else this process's.
    pub async fn lookup(&self, key: &SessionKey) -> Option<Sticky> {
        if let Some(r) = &self.redis {
            match r.get(&key.hex()).await {
                Ok(Some(v)) => return Sticky::decode(&v),
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(error = %e, "affinity: redis unreachable, using this replica's table")
                }
            }
        }
        self.local.get(key)
    }

    /// The session was served by `target` with `foreign` items in its input (from [`readable`]): remember
    /// it (the Redis write runs off the request's path).
    pub fn record(
        self: &Arc<Self>,
        key: SessionKey,
        target: &ResolvedTarget,
        foreign: Vec<(String, String)>,
    ) {
        let sticky = Sticky {
            domain: self.domain(&target.provider.name).to_string(),
            label: target.label.clone(),
            foreign,
        };
        self.local.insert(key, sticky.clone());
        if self.redis.is_some() {
            let me = self.clone();
            tokio::spawn(async move {
                if let Some(r) = &me.redis
                    && let Err(e) = r.set(&key.hex(), &sticky.encode(), me.ttl_secs).await
                {
                    tracing::warn!(error = %e, "affinity: could not record the session's target in redis");
                }
            });
        }
    }
}

/// Put the session's target first in the chain, if the plan has it (a target that is parked or whose
/// breaker is open is not in the plan: then failover order stands).
pub fn prefer(chain: &mut [Arc<ResolvedTarget>], sticky: Option<&Sticky>) {
    let Some(s) = sticky else { return };
    if let Some(i) = chain.iter().position(|t| t.label == s.label) {
        chain[..=i].rotate_right(1);
    }
}

/// Whether a body may carry encrypted items (a cheap scan before any parse).
pub fn may_carry_encrypted(body: &[u8]) -> bool {
    memchr::memmem::find(body, b"\"encrypted_content\"").is_some()
}

/// A request body as one target may receive it.
pub struct Readable {
    pub body: Bytes,
    /// Input items stripped (their encrypted content is another domain's).
    pub stripped: usize,
    /// The fingerprints and domains of the input's items that are not the target's (to remember).
    pub foreign: Vec<(String, String)>,
}

/// `body` for a target of reasoning domain `domain`, given where the session was served before: the
/// `input` items whose `encrypted_content` another domain made are removed (reasoning, compaction). Without
/// a remembered session nothing is known about the items, and nothing is touched; a body is parsed only
/// when the session moved or has foreign items, and has encrypted content at all.
pub fn readable(body: &Bytes, sticky: Option<&Sticky>, domain: &str) -> Readable {
    let same = || Readable {
        body: body.clone(),
        stripped: 0,
        foreign: Vec::new(),
    };
    let Some(s) = sticky else { return same() };
    if (s.domain == domain && s.foreign.is_empty()) || !may_carry_encrypted(body) {
        return same();
    }
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return same();
    };
    let Some(input) = v.get_mut("input").and_then(serde_json::Value::as_array_mut) else {
        return same();
    };
    let mut foreign = Vec::new();
    input.retain(|item| {
        let Some(blob) = item
            .get("encrypted_content")
            .and_then(serde_json::Value::as_str)
        else {
            return true;
        };
        let fp = fingerprint(blob);
        let made_by = s.domain_of(&fp);
        if made_by == domain {
            return true;
        }
        if foreign.len() < MAX_FOREIGN {
            foreign.push((fp, made_by.to_string()));
        }
        false
    });
    if foreign.is_empty() {
        return same();
    }
    let stripped = foreign.len();
    match serde_json::to_vec(&v) {
        Ok(b) => Readable {
            body: Bytes::from(b),
            stripped,
            foreign,
        },
        Err(_) => same(),
    }
}

/// A short fingerprint of one encrypted blob (never the blob: it is the user's reasoning).
fn fingerprint(blob: &str) -> String {
    hex::encode(&Sha256::digest(blob.as_bytes())[..8])
}

/// A string map in Redis with a TTL per entry: `GET` and `SET … EX` over one pooled connection (a minimal
/// RESP client, as the shared rate limits use; no auth or TLS, loopback or a private network).
struct RedisMap {
    addr: String,
    prefix: String,
    conn: tokio::sync::Mutex<Option<tokio::io::BufStream<tokio::net::TcpStream>>>,
}

/// What one Redis command answered.
enum Reply {
    Nil,
    Bulk(Vec<u8>),
    Status,
}

impl RedisMap {
    fn new(url: &str, prefix: &str) -> Option<Self> {
        let addr = url.strip_prefix("redis://")?.split('/').next()?.to_string();
        (!addr.is_empty()).then(|| RedisMap {
            addr,
            prefix: format!("{prefix}affinity:"),
            conn: tokio::sync::Mutex::new(None),
        })
    }

    async fn get(&self, key: &str) -> std::io::Result<Option<String>> {
        let full = format!("{}{key}", self.prefix);
        match self.command(&[b"GET", full.as_bytes()]).await? {
            Reply::Nil => Ok(None),
            Reply::Bulk(b) => Ok(String::from_utf8(b).ok()),
            Reply::Status => Err(std::io::Error::other("unexpected status reply to GET")),
        }
    }

    async fn set(&self, key: &str, value: &str, ttl_secs: u64) -> std::io::Result<()> {
        let full = format!("{}{key}", self.prefix);
        let ttl = ttl_secs.max(1).to_string();
        match self
            .command(&[
                b"SET",
                full.as_bytes(),
                value.as_bytes(),
                b"EX",
                ttl.as_bytes(),
            ])
            .await?
        {
            Reply::Status => Ok(()),
            _ => Err(std::io::Error::other("unexpected reply to SET")),
        }
    }

    async fn command(&self, parts: &[&[u8]]) -> std::io::Result<Reply> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let mut guard = self.conn.lock().await;
        let mut cmd = format!("*{}\r\n", parts.len()).into_bytes();
        for p in parts {
            cmd.extend_from_slice(format!("${}\r\n", p.len()).as_bytes());
            cmd.extend_from_slice(p);
            cmd.extend_from_slice(b"\r\n");
        }
        let result = async {
            if guard.is_none() {
                let s = tokio::net::TcpStream::connect(&self.addr).await?;
                s.set_nodelay(true)?;
                *guard = Some(tokio::io::BufStream::new(s));
            }
            let Some(conn) = guard.as_mut() else {
                return Err(std::io::Error::other("no connection"));
            };
            conn.write_all(&cmd).await?;
            conn.flush().await?;
            let mut line = String::new();
            conn.read_line(&mut line).await?;
            let line = line.trim_end();
            match line.as_bytes().first() {
                Some(b'+') => Ok(Reply::Status),
                Some(b'$') => {
                    let n: i64 = line[1..]
                        .parse()
                        .map_err(|_| std::io::Error::other("bad bulk length"))?;
                    if n < 0 {
                        return Ok(Reply::Nil);
                    }
                    if n > 64 * 1024 {
                        return Err(std::io::Error::other("bulk reply too large"));
                    }
                    let mut buf = vec![0u8; n as usize + 2];
                    conn.read_exact(&mut buf).await?;
                    buf.truncate(n as usize);
                    Ok(Reply::Bulk(buf))
                }
                _ => Err(std::io::Error::other("unexpected redis reply")),
            }
        };
        let r = tokio::time::timeout(Duration::from_millis(500), result)
            .await
            .map_err(|_| std::io::Error::other("redis timeout"))
            .and_then(|r| r);
        if r.is_err() {
            *guard = None;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn affinity(ttl_secs: u64, domains: &[(&str, &str)]) -> Affinity {
        Affinity::new(
            &AffinityConfig {
                ttl_secs,
                domains: domains
                    .iter()
                    .map(|(p, d)| (p.to_string(), d.to_string()))
                    .collect(),
            },
            &LimitsConfig::default(),
        )
    }

    #[test]
    fn keys_separate_principals_models_and_sessions_and_need_a_session() {
        let a = affinity(3600, &[]);
        let k = |p, m, s| a.key(p, m, s);
        assert_eq!(k("p", "m", Some("s")), k("p", "m", Some("s")));
        for other in [
            k("q", "m", Some("s")),
            k("p", "n", Some("s")),
            k("p", "m", Some("t")),
            // Length-prefixed parts: moving a boundary is another key.
            k("pm", "", Some("s")),
        ] {
            assert_ne!(k("p", "m", Some("s")), other);
        }
        assert_eq!(k("p", "m", None), None);
        assert_eq!(k("p", "m", Some("")), None);
        assert_eq!(
            affinity(0, &[]).key("p", "m", Some("s")),
            None,
            "ttl 0 is off"
        );
    }

    #[test]
    fn domains_are_the_configured_group_else_the_provider() {
        let a = affinity(3600, &[("east", "east+west"), ("west", "east+west")]);
        assert_eq!(a.domain("east"), a.domain("west"));
        assert_eq!(a.domain("anthropic"), "anthropic");
        assert_ne!(a.domain("east"), a.domain("anthropic"));
    }

    #[test]
    fn sticky_round_trips_through_its_redis_form() {
        let s = Sticky {
            domain: "east+west".into(),
            label: "east/gpt-5.5".into(),
            foreign: vec![("0011".into(), "anthropic".into())],
        };
        assert_eq!(Sticky::decode(&s.encode()), Some(s));
        assert_eq!(Sticky::decode("not json"), None);
    }

    fn body(blobs: &[&str]) -> Bytes {
        let mut input =
            vec![serde_json::json!({"type": "message", "role": "user", "content": "hi"})];
        for (i, b) in blobs.iter().enumerate() {
            input.push(serde_json::json!({"type": "reasoning", "id": format!("rs_{i}"), "summary": [], "encrypted_content": b}));
            input.push(serde_json::json!({"type": "function_call_output", "call_id": "c", "output": "mentions \"encrypted_content\""}));
        }
        input.push(serde_json::json!({"type": "compaction_marker", "encrypted_content": null}));
        Bytes::from(
            serde_json::to_vec(&serde_json::json!({"model": "m", "include": ["reasoning.encrypted_content"], "input": input}))
                .expect("json"),
        )
    }

    fn blobs_of(b: &Bytes) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_slice(b).expect("json");
        v["input"]
            .as_array()
            .expect("input")
            .iter()
            .filter_map(|i| i["encrypted_content"].as_str().map(str::to_string))
            .collect()
    }

    /// A session over three turns: east made `e1`; it moves to west (e1 stripped, remembered as east's);
    /// west made `w1`; on west again e1 is stripped again and w1 kept; moving back to east keeps e1 and
    /// strips w1.
    #[test]
    fn a_moved_session_strips_exactly_the_other_domains_items_on_every_later_turn() {
        let east = Sticky {
            domain: "east".into(),
            label: "east".into(),
            foreign: vec![],
        };
        // Same domain, nothing foreign: untouched (and not parsed).
        let r = readable(&body(&["e1"]), Some(&east), "east");
        assert_eq!((r.stripped, blobs_of(&r.body)), (0, vec!["e1".to_string()]));
        // No session remembered: nothing is known, nothing touched.
        let r = readable(&body(&["e1"]), None, "west");
        assert_eq!(r.stripped, 0);

        let r = readable(&body(&["e1"]), Some(&east), "west");
        assert_eq!((r.stripped, blobs_of(&r.body)), (1, vec![]));
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
        assert_eq!(
            v["input"].as_array().expect("input").len(),
            3,
            "only the reasoning item goes"
        );
        assert_eq!(
            v["include"],
            serde_json::json!(["reasoning.encrypted_content"])
        );
        let west = Sticky {
            domain: "west".into(),
            label: "west".into(),
            foreign: r.foreign,
        };
        assert_eq!(west.foreign, vec![(fingerprint("e1"), "east".to_string())]);

        let r = readable(&body(&["e1", "w1"]), Some(&west), "west");
        assert_eq!((r.stripped, blobs_of(&r.body)), (1, vec!["w1".to_string()]));
        assert_eq!(r.foreign, west.foreign, "still remembered");

        let r = readable(&body(&["e1", "w1"]), Some(&west), "east");
        assert_eq!((r.stripped, blobs_of(&r.body)), (1, vec!["e1".to_string()]));
        assert_eq!(r.foreign, vec![(fingerprint("w1"), "west".to_string())]);

        // Items gone from the history (compacted away) are forgotten.
        let r = readable(&body(&[]), Some(&west), "west");
        assert!(r.foreign.is_empty() && r.stripped == 0);
    }
}
