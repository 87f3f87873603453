use std::collections::HashMap;

use api::{Classification, Event, EventSchema, RouteSchema};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{StoreError, from_millis, to_millis};

const COLUMNS: &str = "name, owner, classification, description, revision, created_at, updated_at";
/// The event's columns and its schema's (NULL without one).
const SELECT: &str = "SELECT e.name, e.owner, e.classification, e.description, e.revision, \
     e.created_at, e.updated_at, s.message, s.digest, s.pii_fields, s.updated_at AS schema_updated_at \
     FROM events e LEFT JOIN event_schemas s ON s.event = e.name";

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
        schema: schema(row)?,
    })
}

fn schema(row: &AnyRow) -> Result<Option<EventSchema>, StoreError> {
    let Some(message) = row.try_get::<Option<String>, _>("message")? else {
        return Ok(None);
    };
    let pii: String = row.try_get("pii_fields")?;
    Ok(Some(EventSchema {
        message,
        pii_fields: serde_json::from_str(&pii)
            .map_err(|e| StoreError::Corrupt(format!("event schema pii_fields: {e}")))?,
        digest: row.try_get("digest")?,
        updated_at: from_millis(row.try_get("schema_updated_at")?)?,
    }))
}

pub async fn get(conn: &mut AnyConnection, name: &str) -> Result<Option<Event>, StoreError> {
    let row = sqlx::query(&format!("{SELECT} WHERE e.name = $1"))
        .bind(name)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(event).transpose()
}

pub async fn list(conn: &mut AnyConnection) -> Result<Vec<Event>, StoreError> {
    let rows = sqlx::query(&format!("{SELECT} ORDER BY e.name"))
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

/// Stores (or replaces) `event`'s schema and its descriptor set (base64).
pub async fn set_schema(
    conn: &mut AnyConnection,
    event: &str,
    schema: &EventSchema,
    descriptor_set: &str,
) -> Result<(), StoreError> {
    let pii = serde_json::to_string(&schema.pii_fields)
        .map_err(|e| StoreError::Corrupt(format!("event schema pii_fields: {e}")))?;
    sqlx::query("DELETE FROM event_schemas WHERE event = $1")
        .bind(event)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO event_schemas (event, message, descriptor_set, digest, pii_fields, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(event)
    .bind(&schema.message)
    .bind(descriptor_set)
    .bind(&schema.digest)
    .bind(pii)
    .bind(to_millis(schema.updated_at))
    .execute(conn)
    .await?;
    Ok(())
}

/// Every stored schema with its descriptors, by event: what the route table carries.
pub async fn route_schemas(
    conn: &mut AnyConnection,
) -> Result<HashMap<String, RouteSchema>, StoreError> {
    let rows = sqlx::query("SELECT event, message, descriptor_set FROM event_schemas")
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("event")?,
                RouteSchema {
                    message: row.try_get("message")?,
                    descriptor_set: row.try_get("descriptor_set")?,
                },
            ))
        })
        .collect()
}

pub async fn delete(conn: &mut AnyConnection, name: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM event_schemas WHERE event = $1")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM events WHERE name = $1")
        .bind(name)
        .execute(conn)
        .await?;
    Ok(())
}
