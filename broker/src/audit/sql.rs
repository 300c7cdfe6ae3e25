//! The SQL shared by the SQLite and PostgreSQL audit sinks (one body of SQL, `$n` placeholders, integer
//! columns as BIGINT), instantiated per database by [`impl_audit_sink!`].

/// Records per multi-row `INSERT` (18 parameters each: well under SQLite's and PostgreSQL's limits).
pub const INSERT_CHUNK: usize = 64;

/// Implement [`AuditSink`](super::AuditSink) for `$ty`, which has `async fn pool(&self) ->
/// Result<&Pool<$db>, AuditError>` (reads) and `async fn writer(&self)` of the same type (appends).
macro_rules! impl_audit_sink {
    ($ty:ty, $db:ty, $row:ty) => {
        fn record_from_row(r: &$row) -> Result<$crate::audit::AuditRecord, $crate::audit::AuditError> {
            use sqlx::Row;
            let g = |e: sqlx::Error| $crate::audit::AuditError::Store(e.to_string());
            let kind: String = r.try_get("kind").map_err(g)?;
            let detail: String = r.try_get("detail").map_err(g)?;
            Ok($crate::audit::AuditRecord {
                seq: r.try_get("seq").map_err(g)?,
                prev_hash: r.try_get("prev_hash").map_err(g)?,
                hash: r.try_get("hash").map_err(g)?,
                event: $crate::audit::AuditEvent {
                    ts: r.try_get("ts").map_err(g)?,
                    kind: $crate::audit::EventKind::parse(&kind),
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
                    detail: serde_json::from_str(&detail)
                        .unwrap_or(serde_json::Value::String(detail)),
                },
            })
        }

        fn store_err(e: sqlx::Error) -> $crate::audit::AuditError {
            $crate::audit::AuditError::Store(e.to_string())
        }

        /// Insert `recs` inside `tx` with one multi-row statement per power-of-two chunk of at most
        /// [`INSERT_CHUNK`](crate::audit::sql::INSERT_CHUNK) records (each statement is one round trip to
        /// the database, and for SQLite one hand-off to its connection thread; the few shapes stay prepared,
        /// see [`crate::sqlbatch`]); a taken `seq` is a [`AuditError::Conflict`](crate::audit::AuditError).
        async fn insert_records(
            tx: &mut sqlx::Transaction<'_, $db>,
            recs: &[$crate::audit::AuditRecord],
        ) -> Result<(), $crate::audit::AuditError> {
            for chunk in $crate::sqlbatch::pow2_chunks(recs, $crate::audit::sql::INSERT_CHUNK) {
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO audit_log (seq, ts, kind, actor, principal, team, model, provider, status,
                        input_tokens, output_tokens, cost_nanos, request_id, jti, expires_at, detail, prev_hash, hash) ",
                );
                q.push_values(chunk, |mut b, rec| {
                    let e = &rec.event;
                    b.push_bind(rec.seq)
                        .push_bind(e.ts)
                        .push_bind(e.kind.map_or("", $crate::audit::EventKind::as_str))
                        .push_bind(&e.actor)
                        .push_bind(&e.principal)
                        .push_bind(&e.team)
                        .push_bind(&e.model)
                        .push_bind(&e.provider)
                        .push_bind(e.status)
                        .push_bind(e.input_tokens)
                        .push_bind(e.output_tokens)
                        .push_bind(e.cost_nanos)
                        .push_bind(&e.request_id)
                        .push_bind(&e.jti)
                        .push_bind(e.expires_at)
                        // Straight into a buffer: the same bytes as `Display`, which writes through
                        // `fmt` piece by piece at several times the cost (issue #19). A `Value` always
                        // serialises (its keys are strings).
                        .push_bind(serde_json::to_string(&e.detail).unwrap_or_default())
                        .push_bind(&rec.prev_hash)
                        .push_bind(&rec.hash);
                });
                let res = q.build().execute(&mut **tx).await;
                match res {
                    Ok(_) => {}
                    Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                        return Err($crate::audit::AuditError::Conflict(chunk[0].seq));
                    }
                    Err(e) => return Err(store_err(e)),
                }
            }
            Ok(())
        }

        #[async_trait::async_trait]
        impl $crate::audit::AuditSink for $ty {
            async fn head(&self) -> Result<Option<(i64, String)>, $crate::audit::AuditError> {
                let pool = self.pool().await?;
                let row = sqlx::query_as::<$db, (i64, String)>(
                    "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
                )
                .fetch_optional(pool)
                .await
                .map_err(store_err)?;
                Ok(row)
            }

            async fn append(
                &self,
                rec: &$crate::audit::AuditRecord,
            ) -> Result<(), $crate::audit::AuditError> {
                self.append_batch(std::slice::from_ref(rec)).await
            }

            async fn append_batch(
                &self,
                records: &[$crate::audit::AuditRecord],
            ) -> Result<(), $crate::audit::AuditError> {
                let pool = self.writer().await?;
                let mut tx = pool.begin().await.map_err(store_err)?;
                insert_records(&mut tx, records).await?;
                tx.commit().await.map_err(store_err)
            }

            async fn append_journaled(
                &self,
                records: &[$crate::audit::AuditRecord],
                journal_id: &str,
                last_n: u64,
            ) -> Result<(), $crate::audit::AuditError> {
                let pool = self.writer().await?;
                let mut tx = pool.begin().await.map_err(store_err)?;
                insert_records(&mut tx, records).await?;
                sqlx::query::<$db>(
                    "INSERT INTO audit_journal_progress (journal_id, last_n) VALUES ($1, $2) \
                     ON CONFLICT (journal_id) DO UPDATE SET last_n = excluded.last_n",
                )
                .bind(journal_id)
                .bind(i64::try_from(last_n).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await
                .map_err(store_err)?;
                tx.commit().await.map_err(store_err)
            }

            async fn journal_progress(
                &self,
                journal_id: &str,
            ) -> Result<Option<u64>, $crate::audit::AuditError> {
                let pool = self.pool().await?;
                let row = sqlx::query_as::<$db, (i64,)>(
                    "SELECT last_n FROM audit_journal_progress WHERE journal_id = $1",
                )
                .bind(journal_id)
                .fetch_optional(pool)
                .await
                .map_err(store_err)?;
                Ok(row.map(|(n,)| u64::try_from(n).unwrap_or(0)))
            }

            async fn scan(
                &self,
                after: i64,
                limit: u32,
            ) -> Result<Vec<$crate::audit::AuditRecord>, $crate::audit::AuditError> {
                let pool = self.pool().await?;
                let rows = sqlx::query::<$db>(
                    "SELECT * FROM audit_log WHERE seq > $1 ORDER BY seq ASC LIMIT $2",
                )
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
                .map_err(store_err)?;
                rows.iter().map(record_from_row).collect()
            }

            async fn spend(
                &self,
                by: $crate::audit::GroupBy,
                since: i64,
                until: i64,
            ) -> Result<Vec<$crate::audit::SpendRow>, $crate::audit::AuditError> {
                let pool = self.pool().await?;
                // `by.column()` is one of four fixed column names, never user text.
                let sql = format!(
                    "SELECT (ts / 86400) * 86400 AS day, COALESCE({col}, '(none)') AS key, COUNT(*) AS requests,
                            CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT) AS input_tokens,
                            CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT) AS output_tokens,
                            CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT) AS cost_nanos
                     FROM audit_log WHERE kind = 'request' AND ts >= $1 AND ts < $2
                     GROUP BY day, key ORDER BY day, key",
                    col = by.column()
                );
                let rows = sqlx::query_as::<$db, (i64, String, i64, i64, i64, i64)>(
                    sqlx::AssertSqlSafe(sql),
                )
                .bind(since)
                .bind(until)
                .fetch_all(pool)
                .await
                .map_err(store_err)?;
                Ok(rows
                    .into_iter()
                    .map(|(day, key, requests, input_tokens, output_tokens, cost_nanos)| {
                        $crate::audit::SpendRow {
                            day,
                            key,
                            requests,
                            input_tokens,
                            output_tokens,
                            cost_nanos,
                        }
                    })
                    .collect())
            }

            async fn live_grants(
                &self,
                now: i64,
            ) -> Result<Vec<$crate::audit::GrantRow>, $crate::audit::AuditError> {
                let pool = self.pool().await?;
                let rows = sqlx::query::<$db>(
                    "SELECT * FROM audit_log WHERE kind = 'mint' AND expires_at > $1 ORDER BY seq DESC LIMIT 10000",
                )
                .bind(now)
                .fetch_all(pool)
                .await
                .map_err(store_err)?;
                let mut out = Vec::new();
                for r in &rows {
                    let e = record_from_row(r)?.event;
                    out.push($crate::audit::GrantRow {
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

            async fn revocations(
                &self,
                now: i64,
            ) -> Result<Vec<$crate::audit::AuditRecord>, $crate::audit::AuditError> {
                let pool = self.pool().await?;
                let rows = sqlx::query::<$db>(
                    "SELECT * FROM audit_log WHERE kind = 'revocation' AND (expires_at IS NULL OR expires_at > $1) ORDER BY seq",
                )
                .bind(now)
                .fetch_all(pool)
                .await
                .map_err(store_err)?;
                rows.iter().map(record_from_row).collect()
            }
        }
    };
}

pub(crate) use impl_audit_sink;
