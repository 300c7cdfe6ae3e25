//! The SQLite audit sink: one table, append-only by trigger (defence in depth; the hash chain is what
//! makes tampering visible to `audit verify`).

use super::{
    AuditError, AuditEvent, AuditRecord, AuditSink, EventKind, GrantRow, GroupBy, SpendRow,
};
use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
};
use sqlx::{Row, SqlitePool as Pool};
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
];

pub struct SqliteAudit {
    opts: SqliteConnectOptions,
    pool: OnceCell<SqlitePool>,
}

fn store_err(e: sqlx::Error) -> AuditError {
    AuditError::Store(e.to_string())
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
        }
    }

    /// The pool, with the schema in place.
    pub async fn pool(&self) -> Result<&Pool, AuditError> {
        self.pool
            .get_or_try_init(|| async {
                if let Some(dir) = self.opts.get_filename().parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
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
}

fn record_from_row(r: &SqliteRow) -> Result<AuditRecord, AuditError> {
    let g = |e: sqlx::Error| AuditError::Store(e.to_string());
    let kind: String = r.try_get("kind").map_err(g)?;
    let detail: String = r.try_get("detail").map_err(g)?;
    Ok(AuditRecord {
        seq: r.try_get("seq").map_err(g)?,
        prev_hash: r.try_get("prev_hash").map_err(g)?,
        hash: r.try_get("hash").map_err(g)?,
        event: AuditEvent {
            ts: r.try_get("ts").map_err(g)?,
            kind: EventKind::parse(&kind),
            actor: r.try_get("actor").map_err(g)?,
            principal: r.try_get("principal").map_err(g)?,
            team: r.try_get("team").map_err(g)?,
            model: r.try_get("model").map_err(g)?,
            provider: r.try_get("provider").map_err(g)?,
            status: r.try_get("status").map_err(g)?,
            input_tokens: r.try_get("input_tokens").map_err(g)?,
            output_tokens: r.try_get("output_tokens").map_err(g)?,
            cost_nanos: r.try_get("cost_nanos").map_err(g)?,
            request_id: r.try_get("request_id").map_err(g)?,
            jti: r.try_get("jti").map_err(g)?,
            expires_at: r.try_get("expires_at").map_err(g)?,
            // Unparseable detail (tampering) stays visible as a string and fails the hash check.
            detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
        },
    })
}

/// Insert one record inside `tx`; a taken `seq` is a [`AuditError::Conflict`].
async fn insert(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    rec: &AuditRecord,
) -> Result<(), AuditError> {
    let e = &rec.event;
    let res = sqlx::query(
        "INSERT INTO audit_log (seq, ts, kind, actor, principal, team, model, provider, status,
            input_tokens, output_tokens, cost_nanos, request_id, jti, expires_at, detail, prev_hash, hash)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(rec.seq)
    .bind(e.ts)
    .bind(e.kind.map_or("", EventKind::as_str))
    .bind(&e.actor)
    .bind(&e.principal)
    .bind(&e.team)
    .bind(&e.model)
    .bind(&e.provider)
    .bind(e.status)
    .bind(e.input_tokens)
    .bind(e.output_tokens)
    .bind(e.cost_nanos)
    .bind(&e.request_id)
    .bind(&e.jti)
    .bind(e.expires_at)
    .bind(e.detail.to_string())
    .bind(&rec.prev_hash)
    .bind(&rec.hash)
    .execute(&mut **tx)
    .await;
    match res {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
            Err(AuditError::Conflict(rec.seq))
        }
        Err(e) => Err(store_err(e)),
    }
}

#[async_trait]
impl AuditSink for SqliteAudit {
    async fn head(&self) -> Result<Option<(i64, String)>, AuditError> {
        let pool = self.pool().await?;
        let row = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(pool)
            .await
            .map_err(store_err)?;
        row.map(|r| Ok((r.try_get("seq")?, r.try_get("hash")?)))
            .transpose()
            .map_err(store_err)
    }

    async fn append(&self, rec: &AuditRecord) -> Result<(), AuditError> {
        self.append_batch(std::slice::from_ref(rec)).await
    }

    async fn append_batch(&self, records: &[AuditRecord]) -> Result<(), AuditError> {
        let pool = self.pool().await?;
        let mut tx = pool.begin().await.map_err(store_err)?;
        for rec in records {
            insert(&mut tx, rec).await?;
        }
        tx.commit().await.map_err(store_err)
    }

    async fn scan(&self, after: i64, limit: u32) -> Result<Vec<AuditRecord>, AuditError> {
        let pool = self.pool().await?;
        let rows = sqlx::query("SELECT * FROM audit_log WHERE seq > ? ORDER BY seq ASC LIMIT ?")
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
            .map_err(store_err)?;
        rows.iter().map(record_from_row).collect()
    }

    async fn spend(
        &self,
        by: GroupBy,
        since: i64,
        until: i64,
    ) -> Result<Vec<SpendRow>, AuditError> {
        let pool = self.pool().await?;
        // `by.column()` is one of four fixed column names, never user text.
        let sql = format!(
            "SELECT (ts / 86400) * 86400 AS day, COALESCE({col}, '(none)') AS key, COUNT(*) AS requests,
                    COALESCE(SUM(input_tokens), 0) AS input_tokens, COALESCE(SUM(output_tokens), 0) AS output_tokens,
                    COALESCE(SUM(cost_nanos), 0) AS cost_nanos
             FROM audit_log WHERE kind = 'request' AND ts >= ? AND ts < ?
             GROUP BY day, key ORDER BY day, key",
            col = by.column()
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(since)
            .bind(until)
            .fetch_all(pool)
            .await
            .map_err(store_err)?;
        rows.iter()
            .map(|r| {
                Ok(SpendRow {
                    day: r.try_get("day")?,
                    key: r.try_get("key")?,
                    requests: r.try_get("requests")?,
                    input_tokens: r.try_get("input_tokens")?,
                    output_tokens: r.try_get("output_tokens")?,
                    cost_nanos: r.try_get("cost_nanos")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(store_err)
    }

    async fn live_grants(&self, now: i64) -> Result<Vec<GrantRow>, AuditError> {
        let pool = self.pool().await?;
        let rows = sqlx::query(
            "SELECT * FROM audit_log WHERE kind = 'mint' AND expires_at > ? ORDER BY seq DESC LIMIT 10000",
        )
        .bind(now)
        .fetch_all(pool)
        .await
        .map_err(store_err)?;
        let mut out = Vec::new();
        for r in &rows {
            let rec = record_from_row(r)?;
            let e = rec.event;
            out.push(GrantRow {
                jti: e.jti.unwrap_or_default(),
                principal: e.principal.unwrap_or_default(),
                team: e.team,
                issued_at: e.ts,
                expires_at: e.expires_at.unwrap_or_default(),
                identity_kind: e
                    .detail
                    .pointer("/identity/kind")
                    .and_then(|v| v.as_str())
                    .map(str::to_string),
            });
        }
        Ok(out)
    }

    async fn revocations(&self, now: i64) -> Result<Vec<AuditRecord>, AuditError> {
        let pool = self.pool().await?;
        let rows = sqlx::query(
            "SELECT * FROM audit_log WHERE kind = 'revocation' AND (expires_at IS NULL OR expires_at > ?) ORDER BY seq",
        )
        .bind(now)
        .fetch_all(pool)
        .await
        .map_err(store_err)?;
        rows.iter().map(record_from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditLog, verify};
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
        use crate::audit::GENESIS;
        let dir = tempfile::tempdir().expect("tmp");
        let sink = filled(dir.path(), 2).await;
        let (seq, hash) = sink.head().await.expect("head").expect("some");
        assert_eq!(seq, 2);
        let r3 = AuditRecord::chain(3, hash, ev(3));
        let dup = AuditRecord::chain(2, GENESIS.to_string(), ev(9));
        match sink.append_batch(&[r3.clone(), dup]).await {
            Err(AuditError::Conflict(2)) => {}
            other => panic!("expected a conflict on seq 2, got {other:?}"),
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
}
