//! The SQLite audit sink: one table, append-only by trigger (defence in depth; the hash chain is what
//! makes tampering visible to `audit verify`).

use super::AuditError;
use sqlx::SqlitePool as Pool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use std::path::Path;
use std::time::Duration;
use tokio::sync::OnceCell;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS audit_log (
        seq INTEGER PRIMARY KEY,
        ts INTEGER NOT NULL,
        kind TEXT NOT NULL,
        actor TEXT NOT NULL,
        principal TEXT, team TEXT, model TEXT, provider TEXT,
        status INTEGER, input_tokens INTEGER, output_tokens INTEGER, cost_nanos INTEGER,
        request_id TEXT, jti TEXT, expires_at INTEGER,
        detail TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS audit_log_kind_ts ON audit_log (kind, ts)",
    "CREATE INDEX IF NOT EXISTS audit_log_kind_exp ON audit_log (kind, expires_at)",
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
    // How far each local journal has been replayed (see `audit::journal`).
    "CREATE TABLE IF NOT EXISTS audit_journal_progress (
        journal_id TEXT NOT NULL PRIMARY KEY,
        last_n INTEGER NOT NULL
    )",
];

pub struct SqliteAudit {
    opts: SqliteConnectOptions,
    pool: OnceCell<SqlitePool>,
    /// The one connection appends take: see [`SqliteAudit::writer`].
    writer: OnceCell<SqlitePool>,
}

impl SqliteAudit {
    /// Open lazily: nothing touches the disk (and no runtime is needed) until first use.
    pub fn open(path: &Path) -> Self {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        SqliteAudit {
            opts,
            pool: OnceCell::new(),
            writer: OnceCell::new(),
        }
    }

    /// The pool, with the schema in place.
    pub async fn pool(&self) -> Result<&Pool, AuditError> {
        self.pool
            .get_or_try_init(|| async {
                // 0600 in a private directory from creation (SQLite gives -wal and -shm the file's mode).
                crate::keys::prepare_sqlite_file(
                    self.opts.get_filename(),
                    crate::keys::SqliteRole::AuditTrail,
                )
                .map_err(|e| AuditError::Store(e.to_string()))?;
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(self.opts.clone())
                    .await
                    .map_err(store_err)?;
                for stmt in SCHEMA {
                    sqlx::query(*stmt).execute(&pool).await.map_err(store_err)?;
                }
                Ok::<SqlitePool, AuditError>(pool)
            })
            .await
    }

    /// The connection appends take (the schema in place first). The chain is appended by one writer
    /// anyway; on one connection its page cache stays warm, where appends spread over the pool began
    /// each batch on a cache another connection's write had dropped. Its statement journals stay in
    /// memory: a 64-record insert outgrew SQLite's spill threshold and wrote a temporary file
    /// (docs/benchmarks.md, issue #19; the governance store's writer does the same).
    pub async fn writer(&self) -> Result<&Pool, AuditError> {
        self.pool().await?;
        self.writer
            .get_or_try_init(|| async {
                SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(self.opts.clone().pragma("temp_store", "MEMORY"))
                    .await
                    .map_err(store_err)
            })
            .await
    }
}

super::sql::impl_audit_sink!(SqliteAudit, sqlx::Sqlite, sqlx::sqlite::SqliteRow);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditEvent, AuditLog, AuditSink, EventKind, GroupBy, verify};
    use std::sync::Arc;

    fn ev(i: i64) -> AuditEvent {
        AuditEvent {
            ts: 1_800_000_000 + i,
            kind: Some(EventKind::Request),
            actor: format!("p{}", i % 2),
            principal: Some(format!("p{}", i % 2)),
            model: Some("gpt-5.5".into()),
            cost_nanos: Some(1000 * i),
            input_tokens: Some(10),
            output_tokens: Some(5),
            detail: serde_json::json!({"latency_ms": i}),
            ..Default::default()
        }
    }

    async fn filled(dir: &Path, n: i64) -> Arc<SqliteAudit> {
        let sink = Arc::new(SqliteAudit::open(&dir.join("audit.sqlite")));
        let log = AuditLog::new(sink.clone());
        for i in 1..=n {
            log.record(ev(i));
        }
        log.flush().await;
        sink
    }

    async fn raw(sink: &SqliteAudit, sql: &str) {
        let pool = sink.pool().await.expect("pool");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(pool)
            .await
            .expect(sql);
    }

    #[tokio::test]
    async fn chain_verifies_and_aggregates() {
        let dir = tempfile::tempdir().expect("tmp");
        let sink = filled(dir.path(), 5).await;
        let v = verify(sink.as_ref()).await.expect("verify");
        assert_eq!(v.records, 5);
        assert_eq!(v.first_break, None);
        let spend = sink
            .spend(GroupBy::Principal, 0, i64::MAX)
            .await
            .expect("spend");
        let p1: i64 = spend
            .iter()
            .filter(|r| r.key == "p1")
            .map(|r| r.cost_nanos)
            .sum();
        assert_eq!(p1, 1000 + 3000 + 5000);
        // The database itself refuses updates and deletes.
        let pool = sink.pool().await.expect("pool");
        assert!(
            sqlx::query("DELETE FROM audit_log WHERE seq = 2")
                .execute(pool)
                .await
                .is_err()
        );
        assert!(
            sqlx::query("UPDATE audit_log SET cost_nanos = 0")
                .execute(pool)
                .await
                .is_err()
        );
    }

    /// Tampering three ways (an attacker with file access drops the triggers first); each is found at the
    /// right record.
    #[tokio::test]
    async fn verify_detects_edit_delete_reorder() {
        const UNLOCK: &str = "DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;";
        for (case, sql, bad_seq) in [
            (
                "edit",
                "UPDATE audit_log SET cost_nanos = 1 WHERE seq = 3",
                3,
            ),
            (
                "edit-detail",
                "UPDATE audit_log SET detail = '{\"latency_ms\":0}' WHERE seq = 4",
                4,
            ),
            ("delete", "DELETE FROM audit_log WHERE seq = 2", 3),
            (
                "reorder",
                "UPDATE audit_log SET seq = 100 WHERE seq = 2; UPDATE audit_log SET seq = 2 WHERE seq = 3; UPDATE audit_log SET seq = 3 WHERE seq = 100;",
                2,
            ),
        ] {
            let dir = tempfile::tempdir().expect("tmp");
            let sink = filled(dir.path(), 5).await;
            raw(&sink, UNLOCK).await;
            raw(&sink, sql).await;
            let v = verify(sink.as_ref()).await.expect("verify");
            let b = v
                .first_break
                .unwrap_or_else(|| panic!("{case}: tampering not detected"));
            assert_eq!(b.seq, bad_seq, "{case}: {b:?}");
        }
    }

    /// A batch is all or nothing: one taken `seq` rolls back the records before it in the batch too.
    #[tokio::test]
    async fn batch_with_a_taken_seq_stores_nothing() {
        use crate::audit::{AuditRecord, GENESIS};
        let dir = tempfile::tempdir().expect("tmp");
        let sink = filled(dir.path(), 2).await;
        let (seq, hash) = sink.head().await.expect("head").expect("some");
        assert_eq!(seq, 2);
        let r3 = AuditRecord::chain(3, hash, ev(3));
        let dup = AuditRecord::chain(2, GENESIS.to_string(), ev(9));
        // One multi-row statement: the conflict names the first seq of that statement.
        match sink.append_batch(&[r3.clone(), dup]).await {
            Err(AuditError::Conflict(3)) => {}
            other => panic!("expected a conflict in the records from seq 3, got {other:?}"),
        }
        assert_eq!(sink.head().await.expect("head").map(|h| h.0), Some(2));
        sink.append_batch(&[r3]).await.expect("alone it fits");
        let v = verify(sink.as_ref()).await.expect("verify");
        assert_eq!((v.records, v.first_break), (3, None));
    }

    #[tokio::test]
    async fn concurrent_writers_share_one_chain() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("audit.sqlite");
        // Two "replicas" on one database: optimistic appends re-chain on conflict.
        let a = Arc::new(SqliteAudit::open(&path));
        let b = Arc::new(SqliteAudit::open(&path));
        let (la, lb) = (AuditLog::new(a.clone()), AuditLog::new(b.clone()));
        for i in 1..=20 {
            la.record(ev(i));
            lb.record(ev(100 + i));
        }
        la.flush().await;
        lb.flush().await;
        let v = verify(a.as_ref()).await.expect("verify");
        assert_eq!((v.records, v.first_break), (40, None));
    }

    fn signer(
        clock: &crate::clock::FakeClock,
        every: u64,
        interval_secs: u64,
        sink: Arc<SqliteAudit>,
    ) -> (AuditLog, Arc<crate::token::KeyRing>) {
        let ring = Arc::new(crate::token::KeyRing::new(vec![
            crate::keys::SigningKey::generate(1).expect("key").0,
        ]));
        let log = AuditLog::new(sink).with_checkpoints(
            crate::audit::checkpoint::CheckpointConfig {
                every,
                interval_secs,
            },
            Arc::new(crate::audit::checkpoint::RingSigner {
                keys: ring.clone(),
                issuer: "http://broker".into(),
            }),
            Arc::new(clock.clone()),
        );
        (log, ring)
    }

    /// Count- and time-triggered checkpoints; deleting the newest records passes plain verification (a
    /// chain cannot see it) but not verification against a checkpoint; a re-hashed rewrite is caught too.
    #[tokio::test]
    async fn checkpoints_catch_truncation_and_rewrites() {
        use crate::audit::checkpoint::{extract, verify_checkpoints};
        let dir = tempfile::tempdir().expect("tmp");
        let sink = Arc::new(SqliteAudit::open(&dir.path().join("audit.sqlite")));
        let clock = crate::clock::FakeClock::new(1_000);
        let (log, ring) = signer(&clock, 5, 60, sink.clone());
        for i in 1..=9 {
            log.record(ev(i));
        }
        log.flush().await;
        // seq 5 is checkpointed (record 6), events 6..9 are seqs 7..10; 10 is a multiple of 5 → record 11.
        let recs = sink.scan(0, 100).await.expect("scan");
        let cps: Vec<i64> = recs
            .iter()
            .filter(|r| r.event.kind == Some(EventKind::Checkpoint))
            .map(|r| r.event.detail["seq"].as_i64().expect("seq"))
            .collect();
        assert_eq!(cps, [5, 10]);
        // Time: nothing new → no checkpoint; one more record and 60 s → one (of seq 12).
        clock.advance(61);
        log.flush().await;
        assert_eq!(sink.head().await.expect("h").expect("h").0, 11);
        log.record(ev(10));
        log.flush().await;
        assert_eq!(
            sink.head().await.expect("h").expect("h").0,
            12,
            "interval restarted"
        );
        clock.advance(60);
        log.flush().await;
        let head = sink.scan(12, 10).await.expect("scan");
        assert_eq!(head.len(), 1);
        assert_eq!(head[0].event.kind, Some(EventKind::Checkpoint));
        assert_eq!(head[0].event.detail["seq"], 12);
        clock.advance(600);
        log.flush().await;
        assert_eq!(
            sink.head().await.expect("h").expect("h").0,
            13,
            "idle: no checkpoint of a checkpoint"
        );

        // Every checkpoint, as extracted from log text, checks out.
        let log_text: String = sink
            .scan(0, 100)
            .await
            .expect("scan")
            .iter()
            .filter(|r| r.event.kind == Some(EventKind::Checkpoint))
            .map(|r| {
                format!(
                    "INFO audit checkpoint seq={} checkpoint={}\n",
                    r.event.detail["seq"],
                    r.event.detail["jws"].as_str().expect("jws")
                )
            })
            .collect();
        let jws = extract(&log_text);
        assert_eq!(jws.len(), 3);
        let (v, checks) = verify_checkpoints(sink.as_ref(), &jws, &ring)
            .await
            .expect("v");
        assert_eq!(v.first_break, None);
        assert!(checks.iter().all(|c| c.problem.is_none()), "{checks:?}");

        // Truncate below the newest checkpoint.
        raw(
            &sink,
            "DROP TRIGGER audit_log_no_delete; DELETE FROM audit_log WHERE seq > 9",
        )
        .await;
        let plain = verify(sink.as_ref()).await.expect("v");
        assert_eq!(
            (plain.records, plain.first_break),
            (9, None),
            "plain verify cannot see it"
        );
        let (_, checks) = verify_checkpoints(sink.as_ref(), &jws, &ring)
            .await
            .expect("v");
        assert_eq!(checks[0].problem, None, "seq 5 is still there");
        for c in &checks[1..] {
            let p = c.problem.as_deref().expect("truncation found");
            assert!(p.starts_with("TRUNCATED: the chain ends at seq 9"), "{p}");
        }

        // Rewrite record 3 and re-hash everything after it: a valid chain, but not the signed one.
        let mut recs = sink.scan(0, 100).await.expect("scan");
        raw(
            &sink,
            "DROP TRIGGER audit_log_no_update; DELETE FROM audit_log WHERE seq >= 3",
        )
        .await;
        recs[2].event.cost_nanos = Some(0);
        let mut prev = recs[1].hash.clone();
        for r in &recs[2..] {
            let re = crate::audit::AuditRecord::chain(r.seq, prev, r.event.clone());
            prev = re.hash.clone();
            sink.append(&re).await.expect("append");
        }
        assert_eq!(verify(sink.as_ref()).await.expect("v").first_break, None);
        let (_, checks) = verify_checkpoints(sink.as_ref(), &jws[..1], &ring)
            .await
            .expect("v");
        assert!(
            checks[0]
                .problem
                .as_deref()
                .is_some_and(|p| p.starts_with("REWRITTEN: record 5")),
            "{checks:?}"
        );
        // An access-token-shaped JWS is not a checkpoint.
        assert!(extract("eyJhbGciOiJFUzI1NiJ9.e30.sig").is_empty());
    }
}
