//! The append-only, hash-chained audit trail.
//!
//! One record per mint, revocation, policy reload, admin action and proxied request. Each record carries
//! the hash of the previous one; its own hash is SHA-256 over a canonical encoding of everything else in
//! the record (see [`canonical`]), so editing, deleting or reordering records breaks the chain and
//! [`verify`] finds the first broken link. Prompt and response bodies are never recorded.
//!
//! Storage sits behind [`AuditSink`]: SQLite ([`sqlite`], its own file, for a broker on the SQLite store)
//! or PostgreSQL ([`postgres`], in the governance store, shared by every replica). Appends are optimistic:
//! a sink refuses a record whose `seq` already exists ([`AuditError::Conflict`]) and the writer re-reads the
//! head and re-chains, so several replicas sharing one database still produce one linear chain.
//!
//! The writer also signs [`checkpoint`]s of the head, which is what makes deleting the newest records
//! visible (a chain alone cannot show it).
//!
//! When the store cannot take records they wait in a local, `fsync`ed, bounded [`journal`] and are replayed
//! in order once it is back (exactly once: each replayed batch records the journal's progress in the same
//! transaction); a full journal refuses new requests rather than drop records (configurable). An append
//! whose answer is lost (the connection breaks after `COMMIT` was sent) may have been stored: the writer
//! looks its records up by `seq` and hash before it tries again, and events that go to the journal meanwhile
//! carry what they may be stored as ([`journal::MaybeStored`]), so neither a retry nor a replay stores them
//! twice.
//!
//! Records are written by one background task per process so the request path never waits on the disk.
//! The task group-commits: whatever is queued (up to [`BATCH`]) is chained in order and appended in one
//! transaction ([`AuditSink::append_batch`], all or nothing), so one commit (one fsync) serves many records;
//! a conflict rolls the whole batch back and it is re-chained on the new head.

pub mod checkpoint;
pub mod journal;
pub mod postgres;
mod sql;
pub mod sqlite;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Mint,
    Revocation,
    PolicyReload,
    Admin,
    Request,
    /// A signed checkpoint of the chain head (see [`checkpoint`]).
    Checkpoint,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Mint => "mint",
            EventKind::Revocation => "revocation",
            EventKind::PolicyReload => "policy_reload",
            EventKind::Admin => "admin",
            EventKind::Request => "request",
            EventKind::Checkpoint => "checkpoint",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            EventKind::Mint,
            EventKind::Revocation,
            EventKind::PolicyReload,
            EventKind::Admin,
            EventKind::Request,
            EventKind::Checkpoint,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// What happened. The indexed fields are columns in the store (for spend and grant queries); everything
/// else sits in `detail`. Both are covered by the hash.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Unix seconds.
    pub ts: i64,
    pub kind: Option<EventKind>,
    /// Who acted: a principal, `admin`, or `system`.
    pub actor: String,
    pub principal: Option<String>,
    pub team: Option<String>,
    pub model: Option<String>,
    pub provider: Option<String>,
    pub status: Option<i64>,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub cost_nanos: Option<i64>,
    pub request_id: Option<String>,
    pub jti: Option<String>,
    pub expires_at: Option<i64>,
    /// Provenance, cached tokens, latency, reasons… (never prompt or response bodies).
    pub detail: serde_json::Value,
}

/// A stored record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: i64,
    pub prev_hash: String,
    pub hash: String,
    #[serde(flatten)]
    pub event: AuditEvent,
}

/// The canonical encoding that is hashed: a JSON object of `seq`, `prev_hash` and every event field,
/// keys sorted, no insignificant whitespace, integers only.
///
/// Written straight from the event (the fields below, in sorted order; `detail`'s maps are sorted because
/// serde_json's map is a `BTreeMap` here) rather than through a `serde_json::Value` of the whole record:
/// the same bytes — the test `canonical_matches_the_value_encoding` holds it to the encoding the chain
/// was first written with — without a deep copy of every record (issue #19).
pub fn canonical(seq: i64, prev_hash: &str, ev: &AuditEvent) -> Vec<u8> {
    /// Field order = byte order of the keys.
    #[derive(Serialize)]
    struct Canonical<'a> {
        actor: &'a str,
        cost_nanos: Option<i64>,
        detail: &'a serde_json::Value,
        expires_at: Option<i64>,
        input_tokens: Option<i64>,
        jti: Option<&'a str>,
        kind: Option<EventKind>,
        model: Option<&'a str>,
        output_tokens: Option<i64>,
        prev_hash: &'a str,
        principal: Option<&'a str>,
        provider: Option<&'a str>,
        request_id: Option<&'a str>,
        seq: i64,
        status: Option<i64>,
        team: Option<&'a str>,
        ts: i64,
    }
    // Every field of the event is named here: a field added to `AuditEvent` fails to compile until it is
    // placed in the hashed encoding too.
    let AuditEvent {
        ts,
        kind,
        actor,
        principal,
        team,
        model,
        provider,
        status,
        input_tokens,
        output_tokens,
        cost_nanos,
        request_id,
        jti,
        expires_at,
        detail,
    } = ev;
    let c = Canonical {
        actor,
        cost_nanos: *cost_nanos,
        detail,
        expires_at: *expires_at,
        input_tokens: *input_tokens,
        jti: jti.as_deref(),
        kind: *kind,
        model: model.as_deref(),
        output_tokens: *output_tokens,
        prev_hash,
        principal: principal.as_deref(),
        provider: provider.as_deref(),
        request_id: request_id.as_deref(),
        seq,
        status: *status,
        team: team.as_deref(),
        ts: *ts,
    };
    let mut out = Vec::with_capacity(512);
    // Serialising borrowed strings, integers and a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, &c);
    out
}

pub fn hash_record(seq: i64, prev_hash: &str, ev: &AuditEvent) -> String {
    let mut hex = [0u8; 64];
    // `hex::encode` builds its string a `char` at a time (~1.6 k instructions a record); into a buffer
    // it is a table lookup a byte. Same lower-case text.
    hex::encode_to_slice(Sha256::digest(canonical(seq, prev_hash, ev)), &mut hex)
        .expect("64 hex digits for 32 bytes");
    String::from_utf8(hex.to_vec()).expect("hex digits are ASCII")
}

impl AuditRecord {
    pub fn chain(seq: i64, prev_hash: String, event: AuditEvent) -> Self {
        let hash = hash_record(seq, &prev_hash, &event);
        AuditRecord {
            seq,
            prev_hash,
            hash,
            event,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Another writer appended first: a `seq` in the multi-row statement starting at this `seq` is taken.
    /// Re-read the head and re-chain.
    #[error("audit sequence already taken (in the records from {0})")]
    Conflict(i64),
    #[error("audit store: {0}")]
    Store(String),
}

/// Spend grouping for [`AuditSink::spend`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Principal,
    Team,
    Model,
    Provider,
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "principal" => Some(GroupBy::Principal),
            "team" => Some(GroupBy::Team),
            "model" => Some(GroupBy::Model),
            "provider" => Some(GroupBy::Provider),
            _ => None,
        }
    }
    pub fn column(self) -> &'static str {
        match self {
            GroupBy::Principal => "principal",
            GroupBy::Team => "team",
            GroupBy::Model => "model",
            GroupBy::Provider => "provider",
        }
    }
}

/// Spend of one group on one UTC day.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendRow {
    /// Start of the UTC day, Unix seconds.
    pub day: i64,
    pub key: String,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_nanos: i64,
}

/// A minted token still within its lifetime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRow {
    pub jti: String,
    pub principal: String,
    pub team: Option<String>,
    pub issued_at: i64,
    pub expires_at: i64,
    pub identity_kind: Option<String>,
}

/// Where audit records live.
#[async_trait]
pub trait AuditSink: Send + Sync {
    /// Highest `(seq, hash)`, or `None` when empty.
    async fn head(&self) -> Result<Option<(i64, String)>, AuditError>;
    /// Append one record; [`AuditError::Conflict`] when its `seq` exists.
    async fn append(&self, record: &AuditRecord) -> Result<(), AuditError>;
    /// Append consecutive records (each chained on the one before) all or none, in one transaction;
    /// [`AuditError::Conflict`] (nothing stored) when any `seq` exists.
    async fn append_batch(&self, records: &[AuditRecord]) -> Result<(), AuditError>;
    /// Records with `seq > after`, ascending, at most `limit`.
    async fn scan(&self, after: i64, limit: u32) -> Result<Vec<AuditRecord>, AuditError>;
    /// Request spend in `[since, until)` grouped by UTC day and `by`.
    async fn spend(&self, by: GroupBy, since: i64, until: i64)
    -> Result<Vec<SpendRow>, AuditError>;
    /// Mints whose token has not expired at `now`.
    async fn live_grants(&self, now: i64) -> Result<Vec<GrantRow>, AuditError>;
    /// Revocation events whose effect may still matter at `now` (for restoring the revocation list).
    async fn revocations(&self, now: i64) -> Result<Vec<AuditRecord>, AuditError>;
    /// [`AuditSink::append_batch`] for records replayed from a [`journal`], recording in the same
    /// transaction that the journal `journal_id` is stored up to its entry `last_n` (so a replay cut short
    /// by a crash is neither lost nor repeated). The default (sinks without that table) only appends.
    async fn append_journaled(
        &self,
        records: &[AuditRecord],
        journal_id: &str,
        last_n: u64,
    ) -> Result<(), AuditError> {
        let _ = (journal_id, last_n);
        self.append_batch(records).await
    }
    /// The last entry of journal `journal_id` the store holds (see [`AuditSink::append_journaled`]).
    async fn journal_progress(&self, journal_id: &str) -> Result<Option<u64>, AuditError> {
        let _ = journal_id;
        Ok(None)
    }
}

/// The events of records that were not stored, back where [`Writer::append_batch`] took them from.
fn give_back(events: &mut [AuditEvent], records: Vec<AuditRecord>) {
    for (ev, rec) in events.iter_mut().zip(records) {
        *ev = rec.event;
    }
}

/// Where the chain first breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Break {
    pub seq: i64,
    pub problem: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    pub records: u64,
    pub head: Option<String>,
    pub first_break: Option<Break>,
}

/// Walk the whole chain. Detects any edited record (its hash no longer matches its content), a deleted
/// record (a gap in `seq`, and the next record's `prev_hash` points at nothing), and reordering (each
/// hash covers the record's `seq` and its predecessor's hash).
///
/// Truncating the tail cannot be seen from the chain alone — what is left is a valid chain. Signed
/// checkpoints kept outside the database show it: [`checkpoint::verify_checkpoints`].
pub async fn verify(sink: &dyn AuditSink) -> Result<Verification, AuditError> {
    Ok(verify_collect(sink, &std::collections::BTreeSet::new())
        .await?
        .0)
}

/// [`verify`], also returning the hashes of the records in `wanted` (up to the first break).
pub async fn verify_collect(
    sink: &dyn AuditSink,
    wanted: &std::collections::BTreeSet<i64>,
) -> Result<(Verification, std::collections::BTreeMap<i64, String>), AuditError> {
    let mut hashes = std::collections::BTreeMap::new();
    let mut after = 0i64;
    let mut prev = GENESIS.to_string();
    let mut expect_seq = 1i64;
    let mut n = 0u64;
    loop {
        let batch = sink.scan(after, 1000).await?;
        if batch.is_empty() {
            break;
        }
        for r in &batch {
            let problem = if r.seq != expect_seq {
                Some("sequence gap or reordering (a record was deleted or moved)")
            } else if r.prev_hash != prev {
                Some("prev_hash does not match the previous record's hash")
            } else if hash_record(r.seq, &r.prev_hash, &r.event) != r.hash {
                Some("record content does not match its hash (edited)")
            } else {
                None
            };
            if let Some(problem) = problem {
                let v = Verification {
                    records: n,
                    head: Some(prev),
                    first_break: Some(Break {
                        seq: r.seq,
                        problem,
                    }),
                };
                return Ok((v, hashes));
            }
            if wanted.contains(&r.seq) {
                hashes.insert(r.seq, r.hash.clone());
            }
            prev = r.hash.clone();
            expect_seq = r.seq + 1;
            after = r.seq;
            n += 1;
        }
    }
    let v = Verification {
        records: n,
        head: (n > 0).then_some(prev),
        first_break: None,
    };
    Ok((v, hashes))
}

/// Write every record as one JSON line.
pub async fn export(sink: &dyn AuditSink, out: &mut dyn std::io::Write) -> anyhow::Result<u64> {
    let mut after = 0;
    let mut n = 0;
    loop {
        let batch = sink.scan(after, 1000).await?;
        if batch.is_empty() {
            return Ok(n);
        }
        for r in &batch {
            serde_json::to_writer(&mut *out, r)?;
            out.write_all(b"\n")?;
            after = r.seq;
            n += 1;
        }
    }
}

/// Records that may wait in memory for the writer before new ones are dropped (the writer journals what the
/// store cannot take, so this only fills when the disk is slower than the requests).
pub const QUEUE: usize = 16_384;
/// Records per transaction, at most.
pub const BATCH: usize = 256;
/// How long the writer lets records gather after the first of a batch arrives before it commits them.
pub const LINGER: std::time::Duration = std::time::Duration::from_millis(5);
/// Store attempts for a batch before it goes to the journal (50 + 100 + 200 ms of backoff): a short
/// database hiccup costs nothing, a longer outage costs no records.
const ATTEMPTS_BEFORE_JOURNAL: u32 = 3;
/// Store attempts for a batch without a journal, before it is dropped (50 ms … 6.4 s of backoff).
const ATTEMPTS_WITHOUT_JOURNAL: u32 = 8;

enum Msg {
    Event(Box<AuditEvent>),
    Flush(oneshot::Sender<()>),
    Checkpoint(oneshot::Sender<Option<checkpoint::Signed>>),
}

/// Checkpointing set-up of a writer.
struct Checkpoints {
    config: checkpoint::CheckpointConfig,
    signer: Arc<dyn checkpoint::CheckpointSigner>,
    clock: crate::clock::SharedClock,
}

/// What the writer shares with the rest of the process.
#[derive(Default)]
struct Shared {
    /// Records lost (see [`AuditLog::errors`]).
    errors: std::sync::atomic::AtomicU64,
    /// False while the journal is full and `on_journal_full = "refuse"`: new requests are refused.
    blocked: std::sync::atomic::AtomicBool,
    /// Journal entries not yet in the store, and its size in bytes.
    journal_pending: std::sync::atomic::AtomicU64,
    journal_bytes: std::sync::atomic::AtomicU64,
}

/// The process's audit writer: callers enqueue, one task chains and appends (and checkpoints).
pub struct AuditLog {
    sink: Arc<dyn AuditSink>,
    tx: mpsc::Sender<Msg>,
    rx: Mutex<Option<mpsc::Receiver<Msg>>>,
    checkpoints: Mutex<Option<Checkpoints>>,
    /// A checkpoint trigger is on (`checkpoint_every` or `checkpoint_interval_secs` non-zero).
    checkpointing: bool,
    journal: Mutex<Option<(journal::Journal, journal::OnFull)>>,
    shared: Arc<Shared>,
}

impl AuditLog {
    pub fn new(sink: Arc<dyn AuditSink>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        AuditLog {
            sink,
            tx,
            rx: Mutex::new(Some(rx)),
            checkpoints: Mutex::new(None),
            checkpointing: false,
            journal: Mutex::new(None),
            shared: Arc::default(),
        }
    }

    /// Sign checkpoints of the chain head (see [`checkpoint`]). Takes effect when the writer starts (the
    /// first record).
    pub fn with_checkpoints(
        mut self,
        config: checkpoint::CheckpointConfig,
        signer: Arc<dyn checkpoint::CheckpointSigner>,
        clock: crate::clock::SharedClock,
    ) -> Self {
        self.checkpointing = config.every > 0 || config.interval_secs > 0;
        *self
            .checkpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Checkpoints {
            config,
            signer,
            clock,
        });
        self
    }

    /// Keep what the store cannot take in a local [`journal`] (opened now: refused like any ledger file
    /// when others can get at it). Entries left by a previous process are replayed once the writer starts
    /// ([`AuditLog::resume`]).
    pub fn with_journal(
        self,
        config: &journal::JournalConfig,
    ) -> Result<Self, crate::keys::KeyError> {
        let j = journal::Journal::open(config)?;
        if j.pending() > 0 {
            tracing::warn!(
                entries = j.pending(),
                path = %j.path().display(),
                "audit journal holds records from before; they are replayed into the store"
            );
        }
        self.shared
            .journal_pending
            .store(j.pending(), std::sync::atomic::Ordering::Relaxed);
        self.shared
            .journal_bytes
            .store(j.bytes(), std::sync::atomic::Ordering::Relaxed);
        *self
            .journal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((j, config.on_full));
        Ok(self)
    }

    /// Checkpoints are set up with at least one trigger on (then the broker also checkpoints at shutdown).
    pub fn checkpoints_enabled(&self) -> bool {
        self.checkpointing
    }

    pub fn sink(&self) -> &Arc<dyn AuditSink> {
        &self.sink
    }

    /// Records lost: events dropped because the queue was full, or — without a journal, or with
    /// `on_journal_full = "drop"` — records the store could not take (logged, and exported as
    /// `tollgate_audit_failures`).
    pub fn errors(&self) -> u64 {
        self.shared
            .errors
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// False while new requests must be refused: the store cannot take records and the journal is full
    /// (`on_journal_full = "refuse"`).
    pub fn accepting(&self) -> bool {
        !self
            .shared
            .blocked
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `(entries, bytes)` waiting in the journal for the store.
    pub fn journal_backlog(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.shared.journal_pending.load(Relaxed),
            self.shared.journal_bytes.load(Relaxed),
        )
    }

    /// Start the writer now (at start-up: a journal left by a previous process is replayed without waiting
    /// for the first record). Needs a Tokio runtime.
    pub fn resume(&self) {
        self.start();
    }

    /// Enqueue an event. Never blocks the request path: when the writer falls [`QUEUE`] records behind,
    /// the event is dropped and counted. The writer starts on the first call inside a Tokio runtime.
    pub fn record(&self, ev: AuditEvent) {
        self.start();
        if let Err(e) = self.tx.try_send(Msg::Event(Box::new(ev))) {
            self.shared
                .errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let kind = match &e {
                mpsc::error::TrySendError::Full(Msg::Event(ev))
                | mpsc::error::TrySendError::Closed(Msg::Event(ev)) => ev.kind,
                _ => None,
            };
            tracing::error!(?kind, "audit: queue full or writer gone; record dropped");
        }
    }

    /// Wait until everything enqueued so far is stored — or, while the store is away, safe in the journal
    /// (a journal backlog is replayed first when the store answers) — and a checkpoint that fell due is
    /// written.
    pub async fn flush(&self) {
        self.start();
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Checkpoint the current head now (after everything enqueued so far). `None` when checkpoints are not
    /// set up, the chain is empty or its head is already a checkpoint, or signing failed (logged).
    pub async fn checkpoint(&self) -> Option<checkpoint::Signed> {
        self.start();
        let (tx, rx) = oneshot::channel();
        self.tx.send(Msg::Checkpoint(tx)).await.ok()?;
        rx.await.ok().flatten()
    }

    fn start(&self) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let rx = self
            .rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(rx) = rx {
            let cps = self
                .checkpoints
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            let (journal, on_full) = match self
                .journal
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
            {
                Some((j, f)) => (Some(j), f),
                None => (None, journal::OnFull::Drop),
            };
            let w = Writer {
                sink: self.sink.clone(),
                shared: self.shared.clone(),
                head: None,
                cps,
                last_cp: None,
                journal,
                on_full,
                overflow: Vec::new(),
                overflow_maybe: Vec::new(),
            };
            tokio::spawn(w.run(rx));
        }
    }
}

/// How often an idle writer looks at the clock for a due checkpoint (and retries a journal backlog).
const IDLE_TICK: std::time::Duration = std::time::Duration::from_secs(1);

struct Writer {
    sink: Arc<dyn AuditSink>,
    shared: Arc<Shared>,
    /// Cached chain head; `None` = re-read it.
    head: Option<(i64, String)>,
    cps: Option<Checkpoints>,
    /// (time, seq) of this process's last checkpoint (or of its start).
    last_cp: Option<(u64, i64)>,
    journal: Option<journal::Journal>,
    on_full: journal::OnFull,
    /// Events that arrived while the journal was full (`refuse`): kept in order, in memory (new requests
    /// are refused meanwhile, so only requests already in flight add to it), journaled when there is room.
    overflow: Vec<AuditEvent>,
    /// What the first events of `overflow` may already be stored as (see [`journal::MaybeStored`]).
    overflow_maybe: Vec<journal::MaybeStored>,
}

/// Count a failed store call and wait before the next try (50 ms doubling), unless it was the last.
async fn back_off(failures: &mut u32, attempts: u32) {
    *failures += 1;
    if *failures < attempts {
        tokio::time::sleep(std::time::Duration::from_millis(50 << *failures)).await;
    }
}

/// A stored record: `(seq, hash, is a checkpoint)`.
type Stored = (i64, String, bool);

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        // A journal left by a previous process: replay it before anything new.
        self.drain().await;
        // A control message met while collecting a batch waits here, so that it is handled after the
        // events queued before it (a flush answers only once they are stored).
        let mut held: Option<Msg> = None;
        loop {
            let msg = match held.take() {
                Some(m) => Some(m),
                None => match tokio::time::timeout(IDLE_TICK, rx.recv()).await {
                    Ok(Some(m)) => Some(m),
                    Ok(None) => return,
                    Err(_) => None,
                },
            };
            match msg {
                None => {
                    self.drain().await;
                    if !self.backlog() {
                        self.timed_checkpoint().await;
                    }
                }
                Some(Msg::Flush(done)) => {
                    self.drain().await;
                    if !self.backlog() {
                        self.timed_checkpoint().await;
                    }
                    let _ = done.send(());
                }
                Some(Msg::Checkpoint(done)) => {
                    self.drain().await;
                    let r = if self.backlog() {
                        None
                    } else {
                        self.checkpoint_head().await
                    };
                    let _ = done.send(r);
                }
                Some(Msg::Event(ev)) => {
                    // Group commit: let events gather for LINGER (one transaction and one fsync per batch,
                    // not per request), then take whatever is queued, up to BATCH events, in order.
                    tokio::time::sleep(LINGER).await;
                    let mut events = vec![*ev];
                    while events.len() < BATCH {
                        match rx.try_recv() {
                            Ok(Msg::Event(ev)) => events.push(*ev),
                            Ok(other) => {
                                held = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.store_events(events).await;
                }
            }
        }
    }

    /// Records wait in the journal (or, the journal full, in memory): new ones queue behind them.
    fn backlog(&self) -> bool {
        !self.overflow.is_empty() || self.journal.as_ref().is_some_and(|j| j.pending() > 0)
    }

    fn publish_journal_state(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let (pending, bytes) = self
            .journal
            .as_ref()
            .map_or((0, 0), |j| (j.pending(), j.bytes()));
        let pending = pending + self.overflow.len() as u64;
        self.shared.journal_pending.store(pending, Relaxed);
        self.shared.journal_bytes.store(bytes, Relaxed);
        // Exported at scrape time from `journal_backlog` (the broker's one `Metrics` handle).
    }

    /// Store `events` in order, in as few transactions as possible, and sign a checkpoint after every
    /// record whose seq is a multiple of `every` — exactly as if they had been stored one by one: a batch
    /// is cut after such a record, so the checkpoint record follows the record it covers. What the store
    /// cannot take goes to the journal (behind anything already waiting there).
    async fn store_events(&mut self, events: Vec<AuditEvent>) {
        if self.backlog() {
            self.spill(events, Vec::new());
            self.drain().await;
            return;
        }
        let every = self.every();
        let mut events = events;
        let mut i = 0;
        let mut checkpointed_last = false;
        while i < events.len() {
            match self
                .append_batch(&mut events[i..], every, None, Vec::new())
                .await
            {
                Ok(stored) => {
                    i += stored.len();
                    checkpointed_last = self.checkpoint_if_due(&stored, every).await;
                    if self.backlog() && i < events.len() {
                        // The checkpoint went to the journal: the rest queues behind it, in order.
                        self.spill(events[i..].to_vec(), Vec::new());
                        return;
                    }
                }
                Err(maybe) => {
                    self.spill(events[i..].to_vec(), maybe);
                    return;
                }
            }
        }
        if !checkpointed_last {
            self.timed_checkpoint().await;
        }
    }

    fn every(&self) -> i64 {
        let every = self.cps.as_ref().map_or(0, |c| c.config.every);
        i64::try_from(every).unwrap_or(0)
    }

    /// Sign a checkpoint when the last stored record's seq is a multiple of `every`; whether it did.
    async fn checkpoint_if_due(&mut self, stored: &[Stored], every: i64) -> bool {
        if let Some((seq, hash, is_cp)) = stored.last().cloned()
            && every > 0
            && !is_cp
            && seq % every == 0
        {
            self.checkpoint(seq, hash).await;
            return true;
        }
        false
    }

    /// Put events the store could not take into the journal (`fsync`ed). Without a journal they are lost
    /// (counted); with a full one they wait in memory and new requests are refused, or — `drop` — they are
    /// lost (counted). `maybe`: what the first events may already be stored as (an append whose outcome
    /// is unknown), kept with them so that the replay does not store them twice.
    fn spill(&mut self, events: Vec<AuditEvent>, maybe: Vec<journal::MaybeStored>) {
        use std::sync::atomic::Ordering::Relaxed;
        let n = events.len() as u64;
        let Some(j) = self.journal.as_mut() else {
            self.shared.errors.fetch_add(n, Relaxed);
            tracing::error!(
                records = n,
                "audit: the store did not take these records; dropped"
            );
            return;
        };
        if !self.overflow.is_empty() {
            // `maybe` is kept for the front of the overflow only. Records reach the store before any
            // backlog only with none waiting, so a non-empty overflow with `maybe` is a checkpoint that
            // failed behind a full journal: were its append to have committed, it is stored twice (a
            // checkpoint attests an earlier record, so a second copy changes nothing it proves).
            self.overflow.extend(events);
            self.cap_overflow();
            self.publish_journal_state();
            return;
        }
        let was_empty = j.pending() == 0;
        match j.append(&events, &maybe) {
            Ok(()) => {
                if was_empty {
                    tracing::warn!(
                        path = %j.path().display(),
                        "audit: the store is unavailable; records go to the local journal until it is back"
                    );
                }
            }
            Err(e) => match self.on_full {
                journal::OnFull::Refuse => {
                    if !self.shared.blocked.swap(true, Relaxed) {
                        tracing::error!(error = %e, "audit: the journal cannot take more records; refusing new requests until the store is back");
                    }
                    self.overflow_maybe = maybe;
                    self.overflow.extend(events);
                    self.cap_overflow();
                }
                journal::OnFull::Drop => {
                    self.shared.errors.fetch_add(n, Relaxed);
                    tracing::error!(error = %e, records = n, "audit: the journal cannot take more records; dropped (on_journal_full = \"drop\")");
                }
            },
        }
        self.publish_journal_state();
    }

    /// In-memory overflow is bounded like the queue: beyond it, records are dropped and counted.
    fn cap_overflow(&mut self) {
        if self.overflow.len() > QUEUE {
            let extra = self.overflow.len() - QUEUE;
            self.overflow.truncate(QUEUE);
            self.overflow_maybe.truncate(QUEUE);
            self.shared
                .errors
                .fetch_add(extra as u64, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(
                records = extra,
                "audit: journal full and too many records waiting in memory; dropped"
            );
        }
    }

    /// Replay the journal into the store, in order, while the store takes it; then empty it and let the
    /// records waiting in memory follow. Returns when done, or at the first store failure (the rest waits
    /// for the next try).
    async fn drain(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        loop {
            let Some(j) = self.journal.as_mut() else {
                return;
            };
            if !j.synced() {
                let Some(id) = j.id().map(str::to_string) else {
                    return;
                };
                match self.sink.journal_progress(&id).await {
                    Ok(p) => {
                        if let Some(j) = self.journal.as_mut()
                            && let Err(e) = j.skip_stored(p)
                        {
                            tracing::error!(error = %e, "audit: cannot read the journal");
                            return;
                        }
                    }
                    Err(_) => return,
                }
                continue;
            }
            if j.pending() == 0 {
                if j.bytes() > 0
                    && let Err(e) = j.reset()
                {
                    tracing::error!(error = %e, "audit: cannot empty the journal");
                    return;
                }
                if self.overflow.is_empty() {
                    if self.shared.blocked.swap(false, Relaxed) {
                        tracing::warn!("audit: journal drained; accepting requests again");
                    }
                    self.publish_journal_state();
                    return;
                }
                // The journal is stored, so the store answers: the records that waited in memory (the oldest
                // now) go straight to it, in order.
                let mut waiting = std::mem::take(&mut self.overflow);
                let mut maybe = std::mem::take(&mut self.overflow_maybe);
                let every = self.every();
                let mut i = 0;
                while i < waiting.len() {
                    let end = (i + BATCH).min(waiting.len());
                    match self
                        .append_batch(
                            &mut waiting[i..end],
                            every,
                            None,
                            std::mem::take(&mut maybe),
                        )
                        .await
                    {
                        Ok(stored) => {
                            i += stored.len();
                            self.checkpoint_if_due(&stored, every).await;
                        }
                        Err(m) => {
                            maybe = m;
                            break;
                        }
                    }
                }
                if i < waiting.len() {
                    // The store went away again: into the (empty) journal, as much as fits.
                    let mut rest = &waiting[i..];
                    let mut chunk = BATCH;
                    while !rest.is_empty() && chunk > 0 {
                        let take = rest.len().min(chunk);
                        let tags = maybe.len().min(take);
                        let Some(j) = self.journal.as_mut() else {
                            return;
                        };
                        if j.append(&rest[..take], &maybe[..tags]).is_ok() {
                            rest = &rest[take..];
                            maybe.drain(..tags);
                        } else {
                            chunk /= 2;
                        }
                    }
                    self.overflow = rest.to_vec();
                    self.overflow_maybe = maybe;
                    self.publish_journal_state();
                    return;
                }
                self.publish_journal_state();
                continue;
            }
            let (mut batch, id) = match j.read(BATCH) {
                Ok(b) => (b, j.id().map(str::to_string).unwrap_or_default()),
                Err(e) => {
                    tracing::error!(error = %e, "audit: cannot read the journal");
                    return;
                }
            };
            let Some(first_n) = batch.first().map(|p| p.n) else {
                return;
            };
            // Entries that may already be stored (one append whose outcome was lost: consecutive records)
            // lead their batch, and the batch ends before the next such entries, which are looked up in
            // their turn.
            let mut lead = 0;
            while let Some(m) = batch.get(lead).and_then(|p| p.maybe.as_ref()) {
                if lead > 0 && batch[lead - 1].maybe.as_ref().map(|p| p.seq + 1) != Some(m.seq) {
                    break;
                }
                lead += 1;
            }
            if let Some(k) = batch[lead..].iter().position(|p| p.maybe.is_some()) {
                batch.truncate(lead + k);
            }
            let maybe = batch[..lead]
                .iter()
                .filter_map(|p| p.maybe.clone())
                .collect();
            let mut events: Vec<AuditEvent> = batch.iter().map(|p| p.event.clone()).collect();
            let every = self.every();
            let stored = match self
                .append_batch(&mut events, every, Some((&id, first_n)), maybe)
                .await
            {
                Ok(stored) => stored,
                Err(_) => {
                    // Whether the last try committed is unknown; it recorded the journal's progress with
                    // it, so the next replay reads that first.
                    if let Some(j) = self.journal.as_mut() {
                        j.unsync();
                    }
                    return;
                }
            };
            if let Some(j) = self.journal.as_mut() {
                j.advance(&batch[..stored.len()]);
            }
            self.publish_journal_state();
            self.checkpoint_if_due(&stored, every).await;
        }
    }

    /// Chain and append one event; `(seq, hash)` once stored, or — the store did not take it — what it
    /// may be stored as (see [`Writer::append_batch`]).
    async fn append(
        &mut self,
        mut ev: AuditEvent,
    ) -> Result<(i64, String), Vec<journal::MaybeStored>> {
        let stored = self
            .append_batch(std::slice::from_mut(&mut ev), 0, None, Vec::new())
            .await?;
        Ok(stored
            .into_iter()
            .next()
            .map(|(seq, hash, _)| (seq, hash))
            .unwrap_or_default())
    }

    /// How many of `maybe` (consecutive records of one append) the store holds, from the first: all of
    /// them or none, as an append is all or nothing.
    async fn stored_already(&self, maybe: &[journal::MaybeStored]) -> Result<usize, AuditError> {
        let Some(first) = maybe.first() else {
            return Ok(0);
        };
        let limit = u32::try_from(maybe.len()).unwrap_or(u32::MAX);
        let found = self.sink.scan(first.seq - 1, limit).await?;
        Ok(maybe
            .iter()
            .zip(&found)
            .take_while(|(m, r)| m.seq == r.seq && m.hash == r.hash)
            .count())
    }

    /// Chain `events` on the head and append them in one transaction (all or nothing) — only up to the first
    /// record whose seq is a multiple of `every` (> 0), which is where a checkpoint is due; the stored
    /// records, or `None` when the store did not take them (logged). `journaled` = `(journal id, number of
    /// the first event)`: the batch comes from the journal and its progress is recorded with it. Store
    /// errors are retried a few times with backoff. A conflict means another writer extended the chain
    /// first — progress, not failure — so the head is re-read and the whole batch re-chained (with a little
    /// jitter so two writers do not keep colliding), up to a generous bound. The stored events are moved
    /// out of `events` (left as defaults); events not stored are left in place.
    ///
    /// An append that fails may still have committed (the connection broke after `COMMIT` was sent), so
    /// before trying again the store is asked whether those records are there — by `seq` and hash, which
    /// no other append can produce — and when they are, that was the success. `maybe` says the same of
    /// the first events on entry (an earlier append of theirs, from the journal or memory). When the store
    /// does not take the events, `Err` carries what they may be stored as, for [`Writer::spill`].
    async fn append_batch(
        &mut self,
        events: &mut [AuditEvent],
        every: i64,
        journaled: Option<(&str, u64)>,
        mut maybe: Vec<journal::MaybeStored>,
    ) -> Result<Vec<Stored>, Vec<journal::MaybeStored>> {
        let attempts = if self.journal.is_some() {
            ATTEMPTS_BEFORE_JOURNAL
        } else {
            ATTEMPTS_WITHOUT_JOURNAL
        };
        maybe.truncate(events.len());
        let (mut failures, mut conflicts) = (0u32, 0u32);
        while failures < attempts && conflicts < 1000 {
            if !maybe.is_empty() {
                match self.stored_already(&maybe).await {
                    Ok(0) => maybe.clear(),
                    Ok(k) => {
                        tracing::info!(
                            records = k,
                            "audit: an append whose answer was lost had been stored; not repeated"
                        );
                        // Others may have appended since: read the head again.
                        self.head = None;
                        return Ok(maybe
                            .drain(..k)
                            .zip(events.iter_mut())
                            .map(|(m, ev)| {
                                let is_cp = ev.kind == Some(EventKind::Checkpoint);
                                *ev = AuditEvent::default();
                                (m.seq, m.hash, is_cp)
                            })
                            .collect());
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "audit: cannot look up an unanswered append");
                        back_off(&mut failures, attempts).await;
                        continue;
                    }
                }
            }
            if self.head.is_none() {
                match self.sink.head().await {
                    Ok(h) => self.head = Some(h.unwrap_or((0, GENESIS.to_string()))),
                    Err(e) => {
                        tracing::debug!(error = %e, "audit: cannot read the chain head");
                        back_off(&mut failures, attempts).await;
                        continue;
                    }
                }
            }
            let (mut seq, mut prev) = self.head.clone().unwrap_or((0, GENESIS.to_string()));
            let take = if every > 0 {
                // Records up to and including the next multiple of `every`.
                usize::try_from(every - seq.rem_euclid(every)).unwrap_or(events.len())
            } else {
                events.len()
            };
            let mut records = Vec::with_capacity(take.min(events.len()));
            // The events move into their records (no copy); a batch that is not stored gives them back.
            for ev in events.iter_mut().take(take) {
                seq += 1;
                let rec = AuditRecord::chain(seq, prev, std::mem::take(ev));
                prev = rec.hash.clone();
                records.push(rec);
            }
            let appended = match journaled {
                Some((id, first_n)) => {
                    let last_n = first_n + records.len() as u64 - 1;
                    self.sink.append_journaled(&records, id, last_n).await
                }
                None => self.sink.append_batch(&records).await,
            };
            match appended {
                Ok(()) => {
                    self.head = Some((seq, prev));
                    return Ok(records
                        .into_iter()
                        .map(|r| {
                            let is_cp = r.event.kind == Some(EventKind::Checkpoint);
                            (r.seq, r.hash, is_cp)
                        })
                        .collect());
                }
                Err(AuditError::Conflict(_)) => {
                    give_back(events, records);
                    self.head = None;
                    conflicts += 1;
                    let jitter_us = rand::random::<u64>() % 2000;
                    tokio::time::sleep(std::time::Duration::from_micros(jitter_us)).await;
                }
                Err(e) => {
                    // The outcome is unknown: the next try first looks the records up.
                    maybe = records
                        .iter()
                        .map(|r| journal::MaybeStored {
                            seq: r.seq,
                            hash: r.hash.clone(),
                        })
                        .collect();
                    give_back(events, records);
                    tracing::debug!(error = %e, "audit: append failed");
                    self.head = None;
                    back_off(&mut failures, attempts).await;
                }
            }
        }
        if self.journal.is_none() {
            tracing::error!(
                records = events.len(),
                "audit: the store did not take records after retries"
            );
        }
        Err(maybe)
    }

    /// Checkpoint when the interval has passed since the last one and the chain grew since (other
    /// replicas' checkpoints alone do not count, so idle replicas do not checkpoint each other forever).
    async fn timed_checkpoint(&mut self) {
        let Some(c) = &self.cps else { return };
        let now = c.clock.now_secs();
        let interval = c.config.interval_secs;
        let Some((at, _)) = self.last_cp else {
            // Start the interval at the first look, from the head as it stands.
            let seq = self.sink.head().await.ok().flatten().map_or(0, |h| h.0);
            self.last_cp = Some((now, seq));
            return;
        };
        if interval == 0 || now.saturating_sub(at) < interval {
            return;
        }
        self.checkpoint_head().await;
    }

    /// Checkpoint the current head unless it is already a checkpoint (or the chain is empty).
    async fn checkpoint_head(&mut self) -> Option<checkpoint::Signed> {
        let c = self.cps.as_ref()?;
        let now = c.clock.now_secs();
        let head = match self.sink.head().await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "audit: cannot read the chain head for a checkpoint");
                return None;
            }
        };
        let Some((seq, hash)) = head else {
            self.last_cp = Some((now, 0));
            return None;
        };
        let head_is_cp = match self.sink.scan(seq - 1, 1).await {
            Ok(r) => r
                .first()
                .is_some_and(|r| r.event.kind == Some(EventKind::Checkpoint)),
            Err(_) => false,
        };
        if head_is_cp {
            self.last_cp = Some((now, seq));
            return None;
        }
        self.checkpoint(seq, hash).await
    }

    /// Sign `(seq, hash, now)`, log it, and append it as a `checkpoint` record.
    async fn checkpoint(&mut self, seq: i64, hash: String) -> Option<checkpoint::Signed> {
        let c = self.cps.as_ref()?;
        let now = c.clock.now_secs();
        let ts = i64::try_from(now).unwrap_or(i64::MAX);
        let signed = match c.signer.sign(seq, &hash, ts) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, seq, "audit: could not sign a checkpoint");
                self.last_cp = Some((now, seq));
                return None;
            }
        };
        // The copy that leaves the database: ship logs elsewhere and feed these lines to
        // `audit verify --checkpoint`.
        tracing::info!(
            target: checkpoint::LOG_TARGET,
            seq,
            hash = %hash,
            ts,
            kid = %signed.kid,
            checkpoint = %signed.jws,
            "audit checkpoint"
        );
        let ev = AuditEvent {
            ts,
            kind: Some(EventKind::Checkpoint),
            actor: "system".into(),
            detail: serde_json::json!({"seq": seq, "hash": hash, "kid": signed.kid, "jws": signed.jws}),
            ..Default::default()
        };
        match self.append(ev.clone()).await {
            Ok((cp_seq, _)) => self.last_cp = Some((now, cp_seq)),
            Err(maybe) => {
                // Journaled like any record (it attests `seq`, wherever in the chain it lands).
                self.spill(vec![ev], maybe);
                self.last_cp = Some((now, seq));
            }
        }
        Some(signed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_is_stable_and_sorted() {
        let ev = AuditEvent {
            ts: 5,
            kind: Some(EventKind::Mint),
            actor: "alice".into(),
            detail: serde_json::json!({"z": 1, "a": {"y": 2, "b": 3}}),
            ..Default::default()
        };
        let c = String::from_utf8(canonical(1, GENESIS, &ev)).expect("utf8");
        assert!(c.starts_with("{\"actor\":\"alice\","), "{c}");
        assert!(
            c.contains("\"detail\":{\"a\":{\"b\":3,\"y\":2},\"z\":1}"),
            "{c}"
        );
        assert_eq!(hash_record(1, GENESIS, &ev), hash_record(1, GENESIS, &ev));
        assert_ne!(hash_record(1, GENESIS, &ev), hash_record(2, GENESIS, &ev));
    }

    /// The encoding every chain so far was written with: the whole event as a `Value`, `seq` and
    /// `prev_hash` added, re-serialised (keys sorted).
    fn value_encoding(seq: i64, prev_hash: &str, ev: &AuditEvent) -> Vec<u8> {
        let mut v = serde_json::to_value(ev).expect("value");
        let o = v.as_object_mut().expect("object");
        o.insert("seq".into(), seq.into());
        o.insert("prev_hash".into(), prev_hash.into());
        serde_json::to_vec(&v).expect("bytes")
    }

    fn opt_str() -> impl proptest::strategy::Strategy<Value = Option<String>> {
        proptest::option::of("[a-zA-Z0-9 _\\\"\u{0}-\u{1f}\u{e9}\u{1f600}]{0,12}")
    }

    fn detail() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            // Non-finite floats become null in a Value, as anywhere else.
            any::<f64>().prop_map(serde_json::Value::from),
            "[a-z\\\"\u{1}\u{e9}]{0,8}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map("[a-z_]{1,6}", inner, 0..5)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// The direct encoding is byte for byte the one existing chains were hashed with, for any event:
        /// every field set or not, any strings (escapes, control characters, non-ASCII), nested details.
        #[test]
        fn canonical_matches_the_value_encoding(
            seq in proptest::prelude::any::<i64>(),
            ts in proptest::prelude::any::<i64>(),
            kind in proptest::option::of(proptest::sample::select(vec![
                EventKind::Mint, EventKind::Revocation, EventKind::PolicyReload,
                EventKind::Admin, EventKind::Request, EventKind::Checkpoint,
            ])),
            actor in "[a-z\\\"\u{e9}]{0,10}",
            strs in proptest::collection::vec(opt_str(), 7),
            ints in proptest::collection::vec(proptest::option::of(proptest::prelude::any::<i64>()), 5),
            detail in detail(),
        ) {
            let ev = AuditEvent {
                ts,
                kind,
                actor,
                principal: strs[0].clone(),
                team: strs[1].clone(),
                model: strs[2].clone(),
                provider: strs[3].clone(),
                request_id: strs[4].clone(),
                jti: strs[5].clone(),
                status: ints[0],
                input_tokens: ints[1],
                output_tokens: ints[2],
                cost_nanos: ints[3],
                expires_at: ints[4],
                detail,
            };
            let prev = strs[6].clone().unwrap_or_else(|| GENESIS.to_string());
            proptest::prop_assert_eq!(canonical(seq, &prev, &ev), value_encoding(seq, &prev, &ev));
            // And the hash is the lower-case hex every chain so far was written with.
            proptest::prop_assert_eq!(
                hash_record(seq, &prev, &ev),
                hex::encode(Sha256::digest(value_encoding(seq, &prev, &ev)))
            );
        }

        /// The stores keep `detail` as `serde_json::to_string` writes it (audit/sql.rs): the same text
        /// `Display` wrote before, so stored rows read the same whichever build wrote them.
        #[test]
        fn stored_detail_text_is_the_display_text(detail in detail()) {
            proptest::prop_assert_eq!(serde_json::to_string(&detail).expect("serialises"), detail.to_string());
        }
    }
}
