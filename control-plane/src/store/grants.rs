use std::collections::HashMap;

use api::{Grant, GrantStatus, HistoryFrom, RedactMode};
use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{StoreError, from_millis, from_millis_opt, to_millis};

const COLUMNS: &str = "id, event, grantee, reason, granted_by, created_at, expires_at, revoked_at, revoked_by, revision, \
                       redact, redact_mode, include_pii, history_from";

pub fn status_at(
    expires_at: Option<DateTime<Utc>>,
    revoked: bool,
    now: DateTime<Utc>,
) -> GrantStatus {
    if revoked {
        GrantStatus::Revoked
    } else if expires_at.is_some_and(|at| at <= now) {
        GrantStatus::Expired
    } else {
        GrantStatus::Active
    }
}

fn grant(row: &AnyRow, now: DateTime<Utc>) -> Result<Grant, StoreError> {
    let expires_at = from_millis_opt(row.try_get("expires_at")?)?;
    let revoked_at = from_millis_opt(row.try_get("revoked_at")?)?;
    Ok(Grant {
        id: row.try_get("id")?,
        event: row.try_get("event")?,
        grantee: row.try_get("grantee")?,
        reason: row.try_get("reason")?,
        granted_by: row.try_get("granted_by")?,
        created_at: from_millis(row.try_get("created_at")?)?,
        expires_at,
        revoked_at,
        revoked_by: row.try_get("revoked_by")?,
        status: status_at(expires_at, revoked_at.is_some(), now),
        history_from: match from_millis_opt(row.try_get("history_from")?)? {
            Some(at) => HistoryFrom::At(at),
            None => HistoryFrom::Unbounded,
        },
        revision: row.try_get("revision")?,
        redact: paths(row, "redact")?,
        redact_mode: {
            let mode: String = row.try_get("redact_mode")?;
            RedactMode::parse(&mode)
                .ok_or_else(|| StoreError::Corrupt(format!("grant redact_mode {mode:?}")))?
        },
        include_pii: paths(row, "include_pii")?,
    })
}

fn paths(row: &AnyRow, column: &str) -> Result<Vec<String>, StoreError> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("grant {column}: {e}")))
}

fn paths_json(paths: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(paths).map_err(|e| StoreError::Corrupt(format!("grant paths: {e}")))
}

pub async fn get(
    conn: &mut AnyConnection,
    id: &str,
    now: DateTime<Utc>,
) -> Result<Option<Grant>, StoreError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM grants WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.map(|row| grant(&row, now)).transpose()
}

/// Grants on `event` (or on every event), oldest first.
pub async fn list(
    conn: &mut AnyConnection,
    event: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Vec<Grant>, StoreError> {
    let rows = match event {
        Some(event) => {
            sqlx::query(&format!(
                "SELECT {COLUMNS} FROM grants WHERE event = $1 ORDER BY created_at, id"
            ))
            .bind(event)
            .fetch_all(conn)
            .await?
        }
        None => {
            sqlx::query(&format!(
                "SELECT {COLUMNS} FROM grants ORDER BY created_at, id"
            ))
            .fetch_all(conn)
            .await?
        }
    };
    rows.iter().map(|row| grant(row, now)).collect()
}

/// Unrevoked grants of `event` to `grantee`, whatever their expiry.
pub async fn unrevoked_for(
    conn: &mut AnyConnection,
    event: &str,
    grantee: &str,
    now: DateTime<Utc>,
) -> Result<Vec<Grant>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM grants WHERE event = $1 AND grantee = $2 AND revoked_at IS NULL"
    ))
    .bind(event)
    .bind(grantee)
    .fetch_all(conn)
    .await?;
    rows.iter().map(|row| grant(row, now)).collect()
}

/// Unrevoked grants to `grantee`, whatever their expiry.
pub async fn unrevoked_to(
    conn: &mut AnyConnection,
    grantee: &str,
    now: DateTime<Utc>,
) -> Result<Vec<Grant>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM grants WHERE grantee = $1 AND revoked_at IS NULL"
    ))
    .bind(grantee)
    .fetch_all(conn)
    .await?;
    rows.iter().map(|row| grant(row, now)).collect()
}

pub async fn insert(conn: &mut AnyConnection, grant: &Grant) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO grants ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
    ))
    .bind(&grant.id)
    .bind(&grant.event)
    .bind(&grant.grantee)
    .bind(&grant.reason)
    .bind(&grant.granted_by)
    .bind(to_millis(grant.created_at))
    .bind(grant.expires_at.map(to_millis))
    .bind(grant.revoked_at.map(to_millis))
    .bind(grant.revoked_by.clone())
    .bind(grant.revision)
    .bind(paths_json(&grant.redact)?)
    .bind(grant.redact_mode.as_str())
    .bind(paths_json(&grant.include_pii)?)
    .bind(grant.history_from.instant().map(to_millis))
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes the mutable fields of `grant` if the row is still at `expected_revision`.
pub async fn update(
    conn: &mut AnyConnection,
    grant: &Grant,
    expected_revision: i64,
) -> Result<bool, StoreError> {
    let result = sqlx::query(
        "UPDATE grants SET reason = $1, expires_at = $2, revoked_at = $3, revoked_by = $4, revision = $5, \
         redact = $8, redact_mode = $9, include_pii = $10, history_from = $11 WHERE id = $6 AND revision = $7",
    )
    .bind(&grant.reason)
    .bind(grant.expires_at.map(to_millis))
    .bind(grant.revoked_at.map(to_millis))
    .bind(grant.revoked_by.clone())
    .bind(grant.revision)
    .bind(&grant.id)
    .bind(expected_revision)
    .bind(paths_json(&grant.redact)?)
    .bind(grant.redact_mode.as_str())
    .bind(paths_json(&grant.include_pii)?)
    .bind(grant.history_from.instant().map(to_millis))
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Gives grant `id` an HMAC key (`hex_key`) unless it has one: a grant keeps its key for
/// life, so its hash tokens stay stable across updates.
pub async fn ensure_key(
    conn: &mut AnyConnection,
    id: &str,
    hex_key: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO grant_keys (grant_id, hmac_key) VALUES ($1, $2) ON CONFLICT (grant_id) DO NOTHING",
    )
    .bind(id)
    .bind(hex_key)
    .execute(conn)
    .await?;
    Ok(())
}

/// Every grant's HMAC key (hex), by grant id: for the route table only.
pub async fn keys(conn: &mut AnyConnection) -> Result<HashMap<String, String>, StoreError> {
    let rows = sqlx::query("SELECT grant_id, hmac_key FROM grant_keys")
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("grant_id")?, row.try_get("hmac_key")?)))
        .collect()
}
