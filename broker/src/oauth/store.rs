//! The authorization server's state in the governance store (SQLite or PostgreSQL, migration
//! `0014_oauth.sql`): login sessions, authorization codes, device codes, refresh-token families and the
//! access tokens minted for them. Every replica on the store serves every step.
//!
//! Single use is one conditional statement each (`UPDATE … WHERE used_at IS NULL`, `DELETE … RETURNING`),
//! so two replicas racing on one code or refresh token cannot both win. Secrets are stored as SHA-256
//! digests only ([`digest`]).

use crate::governance::store::{StoreError, StorePool};
use sha2::{Digest, Sha256};
use sqlx::Row;

/// The stored form of a secret (session id, code, device code, refresh token).
pub fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// One statement body for both databases: `DB` is the database type inside `$body`.
macro_rules! on_pool {
    ($pool:expr, $p:ident, $DB:ident => $body:block) => {
        match $pool {
            StorePool::Sqlite($p) => {
                #[allow(clippy::upper_case_acronyms, dead_code)]
                type $DB = sqlx::Sqlite;
                $body
            }
            StorePool::Postgres($p) => {
                #[allow(clippy::upper_case_acronyms, dead_code)]
                type $DB = sqlx::Postgres;
                $body
            }
        }
    };
}

/// A sign-in (refresh-token family) as listed to admins.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Family {
    pub family_id: String,
    pub client_id: String,
    pub idp: String,
    pub subject: String,
    pub principal: String,
    /// The person's verified identity (JSON of [`super::StoredIdentity`]).
    #[serde(skip)]
    pub identity: String,
    pub scope: String,
    pub created_at: i64,
    pub last_used_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub revoked_reason: Option<String>,
}

/// What presenting a refresh token found.
#[derive(Debug)]
pub enum RefreshUse {
    /// Consumed now; the family it belongs to.
    Fresh(Box<Family>),
    /// Already used once: a replay (the caller revokes the family).
    Replayed { family_id: String },
    /// Bound to another client (left unused).
    OtherClient,
    /// Unknown, expired, or its family is revoked or over.
    Invalid,
}

/// What redeeming an authorization code found.
#[derive(Debug)]
pub enum CodeUse {
    Fresh {
        client_id: String,
        data: String,
    },
    /// Used before: the family it started (if any) is to be revoked.
    Replayed {
        family_id: Option<String>,
    },
    Invalid,
}

/// What one poll of a device code found.
#[derive(Debug)]
pub enum DevicePoll {
    Unknown,
    Expired,
    /// Polled before the interval passed; the interval is now this (grown by 5 s).
    SlowDown(i64),
    Pending,
    Denied,
    /// Approved and now consumed: the client it was for, its request and the person.
    Approved {
        client_id: String,
        data: String,
        identity: String,
    },
}

pub struct OAuthStore {
    pool: StorePool,
}

impl OAuthStore {
    pub fn new(pool: StorePool) -> Self {
        OAuthStore { pool }
    }

    // ------------------------------------------------------------ login sessions

    pub async fn put_login(
        &self,
        id_hash: &str,
        idp_state: &str,
        data: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        on_pool!(&self.pool, p, DB => {
            sqlx::query::<DB>(
                "INSERT INTO oauth_logins (id_hash, idp_state, data, expires_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(id_hash)
            .bind(idp_state)
            .bind(data)
            .bind(expires_at)
            .execute(p)
            .await?;
        });
        Ok(())
    }

    /// A live login session by the id in the browser's cookie.
    pub async fn login(&self, id_hash: &str, now: i64) -> Result<Option<String>, StoreError> {
        on_pool!(&self.pool, p, DB => {
            let row = sqlx::query::<DB>(
                "SELECT data FROM oauth_logins WHERE id_hash = $1 AND expires_at > $2",
            )
            .bind(id_hash)
            .bind(now)
            .fetch_optional(p)
            .await?;
            Ok(row.map(|r| r.try_get::<String, _>("data")).transpose()?)
        })
    }

    /// Replace a live session's data, only if it still holds `old` (one step at a time).
    pub async fn update_login(
        &self,
        id_hash: &str,
        old: &str,
        new: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        on_pool!(&self.pool, p, DB => {
            let n = sqlx::query::<DB>(
                "UPDATE oauth_logins SET data = $3 WHERE id_hash = $1 AND data = $2 AND expires_at > $4",
            )
            .bind(id_hash)
            .bind(old)
            .bind(new)
            .bind(now)
            .execute(p)
            .await?
            .rows_affected();
            Ok(n == 1)
        })
    }

    /// [`Self::update_login`], also replacing the IdP `state` (a new round trip to the IdP).
    pub async fn update_login_state(
        &self,
        id_hash: &str,
        old: &str,
        new: &str,
        idp_state: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        on_pool!(&self.pool, p, DB => {
            let n = sqlx::query::<DB>(
                "UPDATE oauth_logins SET data = $3, idp_state = $5 \
                 WHERE id_hash = $1 AND data = $2 AND expires_at > $4",
            )
            .bind(id_hash)
            .bind(old)
            .bind(new)
            .bind(now)
            .bind(idp_state)
            .execute(p)
            .await?
            .rows_affected();
            Ok(n == 1)
        })
    }

    /// End a session, returning its data if it was live (the consent is answered once).
    pub async fn take_login(&self, id_hash: &str, now: i64) -> Result<Option<String>, StoreError> {
        on_pool!(&self.pool, p, DB => {
            let row = sqlx::query::<DB>(
                "DELETE FROM oauth_logins WHERE id_hash = $1 RETURNING data, expires_at",
            )
            .bind(id_hash)
            .fetch_optional(p)
            .await?;
            let Some(r) = row else { return Ok(None) };
            if r.try_get::<i64, _>("expires_at")? <= now {
                return Ok(None);
            }
            Ok(Some(r.try_get::<String, _>("data")?))
        })
    }

    /// The session an IdP callback's `state` belongs to: `(id_hash, data)`.
    pub async fn login_by_state(
        &self,
        idp_state: &str,
        now: i64,
    ) -> Result<Option<(String, String)>, StoreError> {
        on_pool!(&self.pool, p, DB => {
            let row = sqlx::query::<DB>(
                "SELECT id_hash, data FROM oauth_logins WHERE idp_state = $1 AND expires_at > $2",
            )
            .bind(idp_state)
            .bind(now)
            .fetch_optional(p)
            .await?;
            Ok(match row {
                Some(r) => Some((r.try_get("id_hash")?, r.try_get("data")?)),
                None => None,
            })
        })
    }

    // ------------------------------------------------------------ authorization codes

    pub async fn put_code(
        &self,
        code_hash: &str,
        client_id: &str,
        data: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        on_pool!(&self.pool, p, DB => {
            sqlx::query::<DB>(
                "INSERT INTO oauth_codes (code_hash, client_id, data, expires_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(code_hash)
            .bind(client_id)
            .bind(data)
            .bind(expires_at)
            .execute(p)
            .await?;
        });
        Ok(())
    }

    /// Mark a code used (once) and return it; a second use reports the family it started.
    pub async fn redeem_code(&self, code_hash: &str, now: i64) -> Result<CodeUse, StoreError> {
        on_pool!(&self.pool, p, DB => {
            let row = sqlx::query::<DB>(
                "UPDATE oauth_codes SET used_at = $2 WHERE code_hash = $1 AND used_at IS NULL \
                 AND expires_at > $2 RETURNING client_id, data",
            )
            .bind(code_hash)
            .bind(now)
            .fetch_optional(p)
            .await?;
            if let Some(r) = row {
                return Ok(CodeUse::Fresh {
                    client_id: r.try_get("client_id")?,
                    data: r.try_get("data")?,
                });
            }
            let row = sqlx::query::<DB>(
                "SELECT used_at, family_id FROM oauth_codes WHERE code_hash = $1",
            )
            .bind(code_hash)
            .fetch_optional(p)
            .await?;
            Ok(match row {
                Some(r) if r.try_get::<Option<i64>, _>("used_at")?.is_some() => CodeUse::Replayed {
                    family_id: r.try_get("family_id")?,
                },
                _ => CodeUse::Invalid,
            })
        })
    }

    pub async fn set_code_family(
        &self,
        code_hash: &str,
        family_id: &str,
    ) -> Result<(), StoreError> {
        on_pool!(&self.pool, p, DB => {
            sqlx::query::<DB>("UPDATE oauth_codes SET family_id = $2 WHERE code_hash = $1")
                .bind(code_hash)
                .bind(family_id)
                .execute(p)
                .await?;
        });
        Ok(())
    }

    // ------------------------------------------------------------ device codes

    pub async fn put_device(
        &self,
        device_hash: &str,
        user_code: &str,
        client_id: &str,
        data: &str,
        interval_secs: i64,
        expires_at: i64,
    ) -> Result<bool, StoreError> {
        on_pool!(&self.pool, p, DB => {
            let n = sqlx::query::<DB>(
                "INSERT INTO oauth_devices (device_hash, user_code, client_id, data, status, interval_secs, expires_at) \
                 VALUES ($1, $2, $3, $4, 'pending', $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(device_hash)
            .bind(user_code)
            .bind(client_id)
            .bind(data)
            .bind(interval_secs)
            .bind(expires_at)
            .execute(p)
            .await?
            .rows_affected();
            Ok(n == 1)
        })
    }

    /// A pending, live device authorization by its user code: `(device_hash, client_id, data)`.
    pub async fn device_by_user_code(
        &self,
        user_code: &str,
        now: i64,
    ) -> Result<Option<(String, String, String)>, StoreError> {
        on_pool!(&self.pool, p, DB => {
            let row = sqlx::query::<DB>(
                "SELECT device_hash, client_id, data FROM oauth_devices \
                 WHERE user_code = $1 AND status = 'pending' AND expires_at > $2",
            )
            .bind(user_code)
            .bind(now)
            .fetch_optional(p)
            .await?;
            Ok(match row {
                Some(r) => Some((r.try_get("device_hash")?, r.try_get("client_id")?, r.try_get("data")?)),
                None => None,
            })
        })
    }

    /// Approve (with the person) or deny a pending device authorization, once.
    pub async fn decide_device(
        &self,
        device_hash: &str,
        identity: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let status = if identity.is_some() {
            "approved"
        } else {
            "denied"
        };
        on_pool!(&self.pool, p, DB => {
            let n = sqlx::query::<DB>(
                "UPDATE oauth_devices SET status = $2, identity = $3 \
                 WHERE device_hash = $1 AND status = 'pending' AND expires_at > $4",
            )
            .bind(device_hash)
            .bind(status)
            .bind(identity)
            .bind(now)
            .execute(p)
            .await?
            .rows_affected();
            Ok(n == 1)
        })
    }

    /// One poll by the device (RFC 8628 §3.4–3.5): too early → the interval grows by 5 s.
    pub async fn poll_device(&self, device_hash: &str, now: i64) -> Result<DevicePoll, StoreError> {
        on_pool!(&self.pool, p, DB => {
            let row = sqlx::query::<DB>(
                "SELECT client_id, data, status, identity, interval_secs, last_poll_at, expires_at \
                 FROM oauth_devices WHERE device_hash = $1",
            )
            .bind(device_hash)
            .fetch_optional(p)
            .await?;
            let Some(r) = row else { return Ok(DevicePoll::Unknown) };
            let status: String = r.try_get("status")?;
            if status == "consumed" {
                return Ok(DevicePoll::Unknown);
            }
            if r.try_get::<i64, _>("expires_at")? <= now {
                return Ok(DevicePoll::Expired);
            }
            let interval: i64 = r.try_get("interval_secs")?;
            let last: Option<i64> = r.try_get("last_poll_at")?;
            // Only a poll that lands updates `last_poll_at` (conditional on the value read), so two
            // concurrent polls cannot both pass the interval check.
            let on_time = last.is_none_or(|l| now >= l.saturating_add(interval));
            if !on_time {
                let grown = interval + 5;
                sqlx::query::<DB>(
                    "UPDATE oauth_devices SET interval_secs = $2, last_poll_at = $3 WHERE device_hash = $1",
                )
                .bind(device_hash)
                .bind(grown)
                .bind(now)
                .execute(p)
                .await?;
                return Ok(DevicePoll::SlowDown(grown));
            }
            let n = sqlx::query::<DB>(
                "UPDATE oauth_devices SET last_poll_at = $2, \
                 status = CASE WHEN status = 'approved' THEN 'consumed' ELSE status END \
                 WHERE device_hash = $1 AND status = $3 \
                 AND (last_poll_at IS NULL AND $4 IS NULL OR last_poll_at = $4)",
            )
            .bind(device_hash)
            .bind(now)
            .bind(&status)
            .bind(last)
            .execute(p)
            .await?
            .rows_affected();
            if n != 1 {
                return Ok(DevicePoll::SlowDown(interval));
            }
            Ok(match status.as_str() {
                "approved" => DevicePoll::Approved {
                    client_id: r.try_get("client_id")?,
                    data: r.try_get("data")?,
                    identity: r.try_get::<Option<String>, _>("identity")?.unwrap_or_default(),
                },
                "denied" => DevicePoll::Denied,
                _ => DevicePoll::Pending,
            })
        })
    }

    // ------------------------------------------------------------ families and refresh tokens

    /// A new sign-in with its first refresh token.
    pub async fn create_family(
        &self,
        f: &Family,
        refresh_hash: &str,
        refresh_expires_at: i64,
    ) -> Result<(), StoreError> {
        on_pool!(&self.pool, p, DB => {
            let mut tx = p.begin().await?;
            sqlx::query::<DB>(
                "INSERT INTO oauth_families (family_id, client_id, idp, subject, principal, identity, scope, \
                 created_at, last_used_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9)",
            )
            .bind(&f.family_id)
            .bind(&f.client_id)
            .bind(&f.idp)
            .bind(&f.subject)
            .bind(&f.principal)
            .bind(&f.identity)
            .bind(&f.scope)
            .bind(f.created_at)
            .bind(f.expires_at)
            .execute(&mut *tx)
            .await?;
            sqlx::query::<DB>(
                "INSERT INTO oauth_refresh (token_hash, family_id, issued_at, expires_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(refresh_hash)
            .bind(&f.family_id)
            .bind(f.created_at)
            .bind(refresh_expires_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Consume a refresh token presented by `client_id`.
    pub async fn use_refresh(
        &self,
        token_hash: &str,
        client_id: &str,
        now: i64,
    ) -> Result<RefreshUse, StoreError> {
        on_pool!(&self.pool, p, DB => {
            let row = sqlx::query::<DB>(
                "SELECT r.used_at, r.expires_at AS r_exp, f.family_id, f.client_id, f.idp, f.subject, \
                 f.principal, f.identity, f.scope, f.created_at, f.last_used_at, f.expires_at, f.revoked_at, \
                 f.revoked_reason FROM oauth_refresh r JOIN oauth_families f ON f.family_id = r.family_id \
                 WHERE r.token_hash = $1",
            )
            .bind(token_hash)
            .fetch_optional(p)
            .await?;
            let Some(r) = row else { return Ok(RefreshUse::Invalid) };
            let family = family_row(&r)?;
            if family.client_id != client_id {
                return Ok(RefreshUse::OtherClient);
            }
            if r.try_get::<Option<i64>, _>("used_at")?.is_some() {
                return Ok(RefreshUse::Replayed { family_id: family.family_id });
            }
            if family.revoked_at.is_some()
                || family.expires_at <= now
                || r.try_get::<i64, _>("r_exp")? <= now
            {
                return Ok(RefreshUse::Invalid);
            }
            let n = sqlx::query::<DB>(
                "UPDATE oauth_refresh SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL",
            )
            .bind(token_hash)
            .bind(now)
            .execute(p)
            .await?
            .rows_affected();
            if n != 1 {
                // Another request used it between the read and the write: that is a replay too.
                return Ok(RefreshUse::Replayed { family_id: family.family_id });
            }
            Ok(RefreshUse::Fresh(Box::new(family)))
        })
    }

    /// The family's next refresh token (after [`Self::use_refresh`] consumed the last).
    pub async fn rotate(
        &self,
        family_id: &str,
        refresh_hash: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        on_pool!(&self.pool, p, DB => {
            let mut tx = p.begin().await?;
            sqlx::query::<DB>(
                "INSERT INTO oauth_refresh (token_hash, family_id, issued_at, expires_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(refresh_hash)
            .bind(family_id)
            .bind(now)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
            sqlx::query::<DB>("UPDATE oauth_families SET last_used_at = $2 WHERE family_id = $1")
                .bind(family_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Remember an access token minted for a family (revoked with it).
    pub async fn add_access(
        &self,
        jti: &str,
        family_id: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        on_pool!(&self.pool, p, DB => {
            sqlx::query::<DB>("INSERT INTO oauth_access (jti, family_id, expires_at) VALUES ($1, $2, $3)")
                .bind(jti)
                .bind(family_id)
                .bind(expires_at)
                .execute(p)
                .await?;
        });
        Ok(())
    }

    /// Revoke a family (if not already) and return the `jti`s of its access tokens still alive at `now`.
    /// `None` when there is no such family or it was already revoked.
    pub async fn revoke_family(
        &self,
        family_id: &str,
        now: i64,
        reason: &str,
    ) -> Result<Option<Vec<String>>, StoreError> {
        on_pool!(&self.pool, p, DB => {
            let n = sqlx::query::<DB>(
                "UPDATE oauth_families SET revoked_at = $2, revoked_reason = $3 \
                 WHERE family_id = $1 AND revoked_at IS NULL",
            )
            .bind(family_id)
            .bind(now)
            .bind(reason)
            .execute(p)
            .await?
            .rows_affected();
            if n != 1 {
                return Ok(None);
            }
            let rows = sqlx::query::<DB>(
                "SELECT jti FROM oauth_access WHERE family_id = $1 AND expires_at > $2",
            )
            .bind(family_id)
            .bind(now)
            .fetch_all(p)
            .await?;
            Ok(Some(rows.iter().map(|r| r.try_get::<String, _>("jti")).collect::<Result<_, _>>()?))
        })
    }

    /// The family a refresh token belongs to, used or not (RFC 7009 revocation by the client).
    pub async fn family_of_refresh(
        &self,
        token_hash: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        on_pool!(&self.pool, p, DB => {
            let row = sqlx::query::<DB>(
                "SELECT f.family_id, f.client_id FROM oauth_refresh r JOIN oauth_families f \
                 ON f.family_id = r.family_id WHERE r.token_hash = $1",
            )
            .bind(token_hash)
            .fetch_optional(p)
            .await?;
            Ok(match row {
                Some(r) => Some((r.try_get("family_id")?, r.try_get("client_id")?)),
                None => None,
            })
        })
    }

    /// The family an access token was minted for: `(family_id, client_id)`.
    pub async fn family_of_access(
        &self,
        jti: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        on_pool!(&self.pool, p, DB => {
            let row = sqlx::query::<DB>(
                "SELECT f.family_id, f.client_id FROM oauth_access a JOIN oauth_families f \
                 ON f.family_id = a.family_id WHERE a.jti = $1",
            )
            .bind(jti)
            .fetch_optional(p)
            .await?;
            Ok(match row {
                Some(r) => Some((r.try_get("family_id")?, r.try_get("client_id")?)),
                None => None,
            })
        })
    }

    /// Sign-ins of a person (by principal or IdP subject), newest first; with `live_only`, those neither
    /// revoked nor over at `now`.
    pub async fn families(
        &self,
        who: &str,
        live_only: bool,
        now: i64,
    ) -> Result<Vec<Family>, StoreError> {
        on_pool!(&self.pool, p, DB => {
            let rows = sqlx::query::<DB>(
                "SELECT family_id, client_id, idp, subject, principal, identity, scope, created_at, \
                 last_used_at, expires_at, revoked_at, revoked_reason FROM oauth_families \
                 WHERE (principal = $1 OR subject = $1) \
                 AND ($2 = 0 OR (revoked_at IS NULL AND expires_at > $3)) \
                 ORDER BY created_at DESC, family_id LIMIT 1000",
            )
            .bind(who)
            .bind(i64::from(live_only))
            .bind(now)
            .fetch_all(p)
            .await?;
            rows.iter().map(|r| family_row(r).map_err(StoreError::from)).collect()
        })
    }

    /// Forget what can no longer be used: expired logins, codes, device codes, and families over for a day.
    pub async fn prune(&self, now: i64) -> Result<(), StoreError> {
        on_pool!(&self.pool, p, DB => {
            for sql in [
                "DELETE FROM oauth_logins WHERE expires_at < $1",
                "DELETE FROM oauth_codes WHERE expires_at < $1 - 86400",
                "DELETE FROM oauth_devices WHERE expires_at < $1",
                "DELETE FROM oauth_access WHERE expires_at < $1",
                "DELETE FROM oauth_refresh WHERE expires_at < $1 - 86400",
            ] {
                sqlx::query::<DB>(sql).bind(now).execute(p).await?;
            }
        });
        Ok(())
    }
}

fn family_row<R>(r: &R) -> Result<Family, sqlx::Error>
where
    R: Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    String: for<'d> sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
    i64: for<'d> sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: for<'d> sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'d> sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Family {
        family_id: r.try_get("family_id")?,
        client_id: r.try_get("client_id")?,
        idp: r.try_get("idp")?,
        subject: r.try_get("subject")?,
        principal: r.try_get("principal")?,
        identity: r.try_get("identity")?,
        scope: r.try_get("scope")?,
        created_at: r.try_get("created_at")?,
        last_used_at: r.try_get("last_used_at")?,
        expires_at: r.try_get("expires_at")?,
        revoked_at: r.try_get("revoked_at")?,
        revoked_reason: r.try_get("revoked_reason")?,
    })
}
