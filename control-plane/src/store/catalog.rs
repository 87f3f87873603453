use api::{Classification, Event};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{StoreError, from_millis, to_millis};

const COLUMNS: &str = "name, owner, classification, description, revision, created_at, updated_at";

fn event(row: &AnyRow) -> Result<Event, StoreError> {
    let classification: String = row.try_get("classification")?;
    Ok(Event {
        name: row.try_get("name")?,
        owner: row.try_get("owner")?,
        classification: Classification::parse(&classification).ok_or_else(|| {
            StoreError::Corrupt(format!("unknown classification {classification:?}"))
        })?,
        description: row.try_get("description")?,
        revision: row.try_get("revision")?,
        created_at: from_millis(row.try_get("created_at")?)?,
        updated_at: from_millis(row.try_get("updated_at")?)?,
    })
}

pub async fn get(conn: &mut AnyConnection, name: &str) -> Result<Option<Event>, StoreError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM events WHERE name = $1"))
        .bind(name)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(event).transpose()
}

pub async fn list(conn: &mut AnyConnection) -> Result<Vec<Event>, StoreError> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM events ORDER BY name"))
        .fetch_all(conn)
        .await?;
    rows.iter().map(event).collect()
}

pub async fn insert(conn: &mut AnyConnection, event: &Event) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO events ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
    ))
    .bind(&event.name)
    .bind(&event.owner)
    .bind(event.classification.as_str())
    .bind(&event.description)
    .bind(event.revision)
    .bind(to_millis(event.created_at))
    .bind(to_millis(event.updated_at))
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes `event` if the stored row is still at `expected_revision`; `false` if it moved on.
pub async fn update(
    conn: &mut AnyConnection,
    event: &Event,
    expected_revision: i64,
) -> Result<bool, StoreError> {
    let result = sqlx::query(
        "UPDATE events SET classification = $1, description = $2, revision = $3, updated_at = $4 \
         WHERE name = $5 AND revision = $6",
    )
    .bind(event.classification.as_str())
    .bind(&event.description)
    .bind(event.revision)
    .bind(to_millis(event.updated_at))
    .bind(&event.name)
    .bind(expected_revision)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub async fn delete(conn: &mut AnyConnection, name: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM events WHERE name = $1")
        .bind(name)
        .execute(conn)
        .await?;
    Ok(())
}
