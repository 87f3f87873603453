use std::collections::BTreeMap;

use api::Stream;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{StoreError, from_millis, to_millis, to_u32};

const COLUMNS: &str = "name, owner, shard_count, retention_hours, tags, status, backing_id, revision, created_at, updated_at";

fn stream(row: &AnyRow) -> Result<Stream, StoreError> {
    let tags: String = row.try_get("tags")?;
    let tags: BTreeMap<String, String> = serde_json::from_str(&tags)
        .map_err(|e| StoreError::Corrupt(format!("stream tags: {e}")))?;
    Ok(Stream {
        name: row.try_get("name")?,
        owner: row.try_get("owner")?,
        shard_count: to_u32(row.try_get("shard_count")?, "shard_count")?,
        retention_hours: to_u32(row.try_get("retention_hours")?, "retention_hours")?,
        tags,
        status: row.try_get("status")?,
        backing_id: row.try_get("backing_id")?,
        revision: row.try_get("revision")?,
        created_at: from_millis(row.try_get("created_at")?)?,
        updated_at: from_millis(row.try_get("updated_at")?)?,
    })
}

fn tags_json(stream: &Stream) -> Result<String, StoreError> {
    serde_json::to_string(&stream.tags)
        .map_err(|e| StoreError::Corrupt(format!("stream tags: {e}")))
}

pub async fn get(conn: &mut AnyConnection, name: &str) -> Result<Option<Stream>, StoreError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM streams WHERE name = $1"))
        .bind(name)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(stream).transpose()
}

pub async fn list(conn: &mut AnyConnection) -> Result<Vec<Stream>, StoreError> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM streams ORDER BY name"))
        .fetch_all(conn)
        .await?;
    rows.iter().map(stream).collect()
}

pub async fn insert(conn: &mut AnyConnection, stream: &Stream) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO streams ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    ))
    .bind(&stream.name)
    .bind(&stream.owner)
    .bind(i64::from(stream.shard_count))
    .bind(i64::from(stream.retention_hours))
    .bind(tags_json(stream)?)
    .bind(&stream.status)
    .bind(&stream.backing_id)
    .bind(stream.revision)
    .bind(to_millis(stream.created_at))
    .bind(to_millis(stream.updated_at))
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes `stream` if the row is still at `expected_revision`; `false` if it moved on.
pub async fn update(
    conn: &mut AnyConnection,
    stream: &Stream,
    expected_revision: i64,
) -> Result<bool, StoreError> {
    let result = sqlx::query(
        "UPDATE streams SET shard_count = $1, retention_hours = $2, tags = $3, status = $4, \
         backing_id = $5, revision = $6, updated_at = $7 WHERE name = $8 AND revision = $9",
    )
    .bind(i64::from(stream.shard_count))
    .bind(i64::from(stream.retention_hours))
    .bind(tags_json(stream)?)
    .bind(&stream.status)
    .bind(&stream.backing_id)
    .bind(stream.revision)
    .bind(to_millis(stream.updated_at))
    .bind(&stream.name)
    .bind(expected_revision)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub async fn delete(conn: &mut AnyConnection, name: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM streams WHERE name = $1")
        .bind(name)
        .execute(conn)
        .await?;
    Ok(())
}
