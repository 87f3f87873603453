use api::{DeliveryFormat, Hydration, StartFrom, Subscription, SubscriptionStatus};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{StoreError, from_millis, to_millis};

const COLUMNS: &str = "s.id, s.stream, st.owner, s.events, s.status, s.status_reason, s.revision, \
                       s.created_at, s.updated_at, s.filter, s.delivery_format, s.start_from";

fn subscription(row: &AnyRow) -> Result<Subscription, StoreError> {
    let events: String = row.try_get("events")?;
    let status: String = row.try_get("status")?;
    Ok(Subscription {
        id: row.try_get("id")?,
        stream: row.try_get("stream")?,
        owner: row.try_get("owner")?,
        events: serde_json::from_str(&events)
            .map_err(|e| StoreError::Corrupt(format!("subscription events: {e}")))?,
        status: match status.as_str() {
            "active" => SubscriptionStatus::Active,
            "failed" => SubscriptionStatus::Failed,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "subscription status {other:?}"
                )));
            }
        },
        status_reason: row.try_get("status_reason")?,
        start_from: StartFrom::parse(&row.try_get::<String, _>("start_from")?)
            .map_err(|e| StoreError::Corrupt(format!("subscription start_from: {e}")))?,
        hydration: Hydration::default(),
        revision: row.try_get("revision")?,
        created_at: from_millis(row.try_get("created_at")?)?,
        updated_at: from_millis(row.try_get("updated_at")?)?,
        filter: row
            .try_get::<Option<String>, _>("filter")?
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("subscription filter: {e}")))?,
        delivery_format: {
            let format: String = row.try_get("delivery_format")?;
            DeliveryFormat::parse(&format).ok_or_else(|| {
                StoreError::Corrupt(format!("subscription delivery_format {format:?}"))
            })?
        },
    })
}

fn filter_json(subscription: &Subscription) -> Option<String> {
    subscription
        .filter
        .as_ref()
        .map(|filter| filter.to_string())
}

fn status_str(status: SubscriptionStatus) -> &'static str {
    match status {
        SubscriptionStatus::Active => "active",
        SubscriptionStatus::Failed => "failed",
    }
}

pub async fn get(conn: &mut AnyConnection, id: &str) -> Result<Option<Subscription>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM subscriptions s JOIN streams st ON st.name = s.stream WHERE s.id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(subscription).transpose()
}

/// Subscriptions of `stream` (or all), in creation order.
pub async fn list(
    conn: &mut AnyConnection,
    stream: Option<&str>,
) -> Result<Vec<Subscription>, StoreError> {
    let rows = match stream {
        Some(stream) => {
            sqlx::query(&format!(
                "SELECT {COLUMNS} FROM subscriptions s JOIN streams st ON st.name = s.stream \
                 WHERE s.stream = $1 ORDER BY s.created_at, s.id"
            ))
            .bind(stream)
            .fetch_all(conn)
            .await?
        }
        None => {
            sqlx::query(&format!(
                "SELECT {COLUMNS} FROM subscriptions s JOIN streams st ON st.name = s.stream \
                 ORDER BY s.created_at, s.id"
            ))
            .fetch_all(conn)
            .await?
        }
    };
    rows.iter().map(subscription).collect()
}

/// Subscriptions that name `event`.
pub async fn naming_event(
    conn: &mut AnyConnection,
    event: &str,
) -> Result<Vec<Subscription>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM subscriptions s JOIN streams st ON st.name = s.stream \
         JOIN subscription_events se ON se.subscription_id = s.id WHERE se.event = $1 \
         ORDER BY s.created_at, s.id"
    ))
    .bind(event)
    .fetch_all(conn)
    .await?;
    rows.iter().map(subscription).collect()
}

async fn write_events(
    conn: &mut AnyConnection,
    subscription: &Subscription,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM subscription_events WHERE subscription_id = $1")
        .bind(&subscription.id)
        .execute(&mut *conn)
        .await?;
    for event in &subscription.events {
        sqlx::query("INSERT INTO subscription_events (subscription_id, event) VALUES ($1, $2)")
            .bind(&subscription.id)
            .bind(event)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

fn events_json(subscription: &Subscription) -> Result<String, StoreError> {
    serde_json::to_string(&subscription.events)
        .map_err(|e| StoreError::Corrupt(format!("subscription events: {e}")))
}

pub async fn insert(
    conn: &mut AnyConnection,
    subscription: &Subscription,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO subscriptions (id, stream, events, status, status_reason, revision, created_at, updated_at, \
         filter, delivery_format, start_from) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&subscription.id)
    .bind(&subscription.stream)
    .bind(events_json(subscription)?)
    .bind(status_str(subscription.status))
    .bind(subscription.status_reason.clone())
    .bind(subscription.revision)
    .bind(to_millis(subscription.created_at))
    .bind(to_millis(subscription.updated_at))
    .bind(filter_json(subscription))
    .bind(subscription.delivery_format.as_str())
    .bind(subscription.start_from.to_string())
    .execute(&mut *conn)
    .await?;
    write_events(conn, subscription).await
}

/// Writes `subscription` if the row is still at `expected_revision`; `false` if it moved on.
pub async fn update(
    conn: &mut AnyConnection,
    subscription: &Subscription,
    expected_revision: i64,
) -> Result<bool, StoreError> {
    let result = sqlx::query(
        "UPDATE subscriptions SET events = $1, status = $2, status_reason = $3, revision = $4, updated_at = $5, \
         filter = $8, delivery_format = $9, start_from = $10 WHERE id = $6 AND revision = $7",
    )
    .bind(events_json(subscription)?)
    .bind(status_str(subscription.status))
    .bind(subscription.status_reason.clone())
    .bind(subscription.revision)
    .bind(to_millis(subscription.updated_at))
    .bind(&subscription.id)
    .bind(expected_revision)
    .bind(filter_json(subscription))
    .bind(subscription.delivery_format.as_str())
    .bind(subscription.start_from.to_string())
    .execute(&mut *conn)
    .await?;
    if result.rows_affected() != 1 {
        return Ok(false);
    }
    write_events(conn, subscription).await?;
    Ok(true)
}

pub async fn delete(conn: &mut AnyConnection, id: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM subscription_events WHERE subscription_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM subscriptions WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}
