use std::collections::BTreeMap;

use sqlx::{AnyConnection, Row};

use super::StoreError;

/// Every event's set maximum silence, in milliseconds.
pub async fn list(conn: &mut AnyConnection) -> Result<BTreeMap<String, i64>, StoreError> {
    let rows = sqlx::query("SELECT event, max_silence_ms FROM event_expectations")
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("event")?, row.try_get("max_silence_ms")?)))
        .collect()
}

pub async fn get(conn: &mut AnyConnection, event: &str) -> Result<Option<i64>, StoreError> {
    let row = sqlx::query("SELECT max_silence_ms FROM event_expectations WHERE event = $1")
        .bind(event)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(|row| row.try_get("max_silence_ms")).transpose()?)
}

/// Sets (or with `None` clears) an event's maximum silence.
pub async fn set(
    conn: &mut AnyConnection,
    event: &str,
    max_silence_ms: Option<i64>,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM event_expectations WHERE event = $1")
        .bind(event)
        .execute(&mut *conn)
        .await?;
    if let Some(ms) = max_silence_ms {
        sqlx::query(
            "INSERT INTO event_expectations (event, max_silence_ms, updated_at) VALUES ($1, $2, $3)",
        )
        .bind(event)
        .bind(ms)
        .bind(now_ms)
        .execute(conn)
        .await?;
    }
    Ok(())
}
