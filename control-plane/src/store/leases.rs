//! Shard leases for the data plane (fan-out engine, persister): [`shard_runtime::Coordinator`] on the
//! control plane's database. Every write is conditional on the holder's fencing token, so a
//! process that lost its lease (paused, partitioned) can neither checkpoint nor renew.

use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use shard_runtime::{Coordinator, CoordinatorError, Lease};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, StoreError, from_millis};

impl From<StoreError> for CoordinatorError {
    fn from(e: StoreError) -> CoordinatorError {
        CoordinatorError::Store(e.to_string())
    }
}

fn store_error(e: sqlx::Error) -> CoordinatorError {
    CoordinatorError::Store(e.to_string())
}

fn lease(row: &AnyRow) -> Result<Lease, CoordinatorError> {
    Ok(Lease {
        group: row.try_get("grp").map_err(store_error)?,
        key: row.try_get("shard_key").map_err(store_error)?,
        owner: row.try_get("owner").map_err(store_error)?,
        token: row.try_get("token").map_err(store_error)?,
        expires_at: from_millis(row.try_get("expires_at").map_err(store_error)?)?,
        checkpoint: row.try_get("checkpoint").map_err(store_error)?,
    })
}

fn ttl_millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2)
}

const COLUMNS: &str = "grp, shard_key, owner, token, expires_at, checkpoint";

#[async_trait]
impl Coordinator for Store {
    async fn try_acquire(
        &self,
        group: &str,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, CoordinatorError> {
        let now = Utc::now().timestamp_millis();
        let expires = now + ttl_millis(ttl);
        let inserted = sqlx::query(
            "INSERT INTO leases (grp, shard_key, owner, token, expires_at, checkpoint) \
             VALUES ($1, $2, $3, 1, $4, NULL) ON CONFLICT (grp, shard_key) DO NOTHING",
        )
        .bind(group)
        .bind(key)
        .bind(owner)
        .bind(expires)
        .execute(self.pool())
        .await
        .map_err(store_error)?;
        if inserted.rows_affected() == 1 {
            return Ok(Some(Lease {
                group: group.to_owned(),
                key: key.to_owned(),
                owner: owner.to_owned(),
                token: 1,
                expires_at: from_millis(expires)?,
                checkpoint: None,
            }));
        }
        let row = sqlx::query(&format!(
            "UPDATE leases SET owner = $1, token = token + 1, expires_at = $2 \
             WHERE grp = $3 AND shard_key = $4 AND (expires_at < $5 OR owner = $1) RETURNING {COLUMNS}"
        ))
        .bind(owner)
        .bind(expires)
        .bind(group)
        .bind(key)
        .bind(now)
        .fetch_optional(self.pool())
        .await
        .map_err(store_error)?;
        row.as_ref().map(lease).transpose()
    }

    async fn renew(&self, held: &Lease, ttl: Duration) -> Result<Lease, CoordinatorError> {
        let expires = Utc::now().timestamp_millis() + ttl_millis(ttl);
        let row = sqlx::query(&format!(
            "UPDATE leases SET expires_at = $1 WHERE grp = $2 AND shard_key = $3 AND owner = $4 AND token = $5 \
             RETURNING {COLUMNS}"
        ))
        .bind(expires)
        .bind(&held.group)
        .bind(&held.key)
        .bind(&held.owner)
        .bind(held.token)
        .fetch_optional(self.pool())
        .await
        .map_err(store_error)?;
        match row {
            Some(row) => lease(&row),
            None => Err(lost(held)),
        }
    }

    async fn checkpoint(&self, held: &Lease, checkpoint: &str) -> Result<(), CoordinatorError> {
        let result = sqlx::query(
            "UPDATE leases SET checkpoint = $1 WHERE grp = $2 AND shard_key = $3 AND owner = $4 AND token = $5",
        )
        .bind(checkpoint)
        .bind(&held.group)
        .bind(&held.key)
        .bind(&held.owner)
        .bind(held.token)
        .execute(self.pool())
        .await
        .map_err(store_error)?;
        if result.rows_affected() == 1 {
            Ok(())
        } else {
            Err(lost(held))
        }
    }

    async fn release(&self, held: &Lease) -> Result<(), CoordinatorError> {
        sqlx::query(
            "UPDATE leases SET expires_at = 0 WHERE grp = $1 AND shard_key = $2 AND owner = $3 AND token = $4",
        )
        .bind(&held.group)
        .bind(&held.key)
        .bind(&held.owner)
        .bind(held.token)
        .execute(self.pool())
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn leases(&self, group: &str) -> Result<Vec<Lease>, CoordinatorError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM leases WHERE grp = $1 ORDER BY shard_key"
        ))
        .bind(group)
        .fetch_all(self.pool())
        .await
        .map_err(store_error)?;
        rows.iter().map(lease).collect()
    }
}

fn lost(held: &Lease) -> CoordinatorError {
    CoordinatorError::LeaseLost {
        group: held.group.clone(),
        key: held.key.clone(),
        owner: held.owner.clone(),
    }
}
