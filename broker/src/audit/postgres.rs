//! The PostgreSQL audit sink: the `audit_log` table of the governance store (migration
//! `0004_audit.sql`), on the store's pool. Replicas sharing the database append to one chain: `seq` is the
//! primary key, so a replica that lost a race gets [`AuditError::Conflict`](super::AuditError::Conflict)
//! and re-chains on the new head. Append-only by trigger (UPDATE, DELETE, TRUNCATE raise) as defence in
//! depth; the chain and signed checkpoints are what make tampering visible.

use super::AuditError;
use sqlx::PgPool;

pub struct PgAudit {
    pool: PgPool,
}

impl PgAudit {
    /// On a migrated governance-store pool (`Store::pool()`); its `search_path` selects the schema.
    pub fn new(pool: PgPool) -> Self {
        PgAudit { pool }
    }

    pub async fn pool(&self) -> Result<&PgPool, AuditError> {
        Ok(&self.pool)
    }

    /// Appends take the same pool (a PostgreSQL connection has no page cache of its own to keep warm).
    pub async fn writer(&self) -> Result<&PgPool, AuditError> {
        Ok(&self.pool)
    }
}

super::sql::impl_audit_sink!(PgAudit, sqlx::Postgres, sqlx::postgres::PgRow);
