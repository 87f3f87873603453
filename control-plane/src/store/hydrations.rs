//! Hydrations and replays: one row each, and one row per GES shard a worker has reported on.

use std::collections::{BTreeMap, HashMap};

use api::{
    Handover, Hydration, HydrationKind, HydrationProgress, HydrationState, HydrationTask,
    RouteHydration,
};
use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{StoreError, from_millis, from_millis_opt, to_millis};

/// A hydration as stored, before its shards' counts are summed.
#[derive(Clone, Debug)]
pub struct NewHydration {
    pub id: String,
    pub subscription_id: String,
    pub kind: HydrationKind,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub requested_by: String,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "h.id, h.subscription_id, h.kind, h.from_time, h.to_time, h.state, h.error, \
     h.requested_by, h.created_at, h.finished_at, \
     (SELECT COALESCE(SUM(hs.events_delivered), 0) FROM hydration_shards hs WHERE hs.hydration_id = h.id) AS delivered";

fn kind_str(kind: HydrationKind) -> &'static str {
    match kind {
        HydrationKind::Start => "start",
        HydrationKind::Replay => "replay",
    }
}

fn hydration(row: &AnyRow) -> Result<(String, Hydration), StoreError> {
    let kind: String = row.try_get("kind")?;
    let state: String = row.try_get("state")?;
    let delivered: i64 = row.try_get("delivered")?;
    Ok((
        row.try_get("subscription_id")?,
        Hydration {
            id: Some(row.try_get("id")?),
            kind: match kind.as_str() {
                "start" => HydrationKind::Start,
                "replay" => HydrationKind::Replay,
                other => return Err(StoreError::Corrupt(format!("hydration kind {other:?}"))),
            },
            state: HydrationState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("hydration state {state:?}")))?,
            from: from_millis_opt(row.try_get("from_time")?)?,
            to: from_millis_opt(row.try_get("to_time")?)?,
            events_delivered: u64::try_from(delivered).unwrap_or(0),
            error: row.try_get("error")?,
            requested_by: Some(row.try_get("requested_by")?),
            created_at: Some(from_millis(row.try_get("created_at")?)?),
            finished_at: from_millis_opt(row.try_get("finished_at")?)?,
        },
    ))
}

pub async fn insert(conn: &mut AnyConnection, new: &NewHydration) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO hydrations (id, subscription_id, kind, from_time, to_time, state, error, \
         requested_by, created_at, finished_at) VALUES ($1, $2, $3, $4, $5, 'pending', NULL, $6, $7, NULL)",
    )
    .bind(&new.id)
    .bind(&new.subscription_id)
    .bind(kind_str(new.kind))
    .bind(new.from.map(to_millis))
    .bind(new.to.map(to_millis))
    .bind(&new.requested_by)
    .bind(to_millis(new.created_at))
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get(
    conn: &mut AnyConnection,
    id: &str,
) -> Result<Option<(String, Hydration)>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM hydrations h WHERE h.id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(hydration).transpose()
}

/// The newest hydration or replay of every subscription that has one.
pub async fn newest(conn: &mut AnyConnection) -> Result<HashMap<String, Hydration>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM hydrations h ORDER BY h.created_at, h.id"
    ))
    .fetch_all(conn)
    .await?;
    let mut newest = HashMap::new();
    for row in &rows {
        let (subscription, hydration) = hydration(row)?;
        newest.insert(subscription, hydration);
    }
    Ok(newest)
}

/// The newest hydration or replay of one subscription.
pub async fn newest_of(
    conn: &mut AnyConnection,
    subscription: &str,
) -> Result<Option<Hydration>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM hydrations h WHERE h.subscription_id = $1 \
         ORDER BY h.created_at DESC, h.id DESC LIMIT 1"
    ))
    .bind(subscription)
    .fetch_optional(conn)
    .await?;
    Ok(row.as_ref().map(hydration).transpose()?.map(|(_, h)| h))
}

/// Hydrations and replays still to be worked on, oldest first; the caller fills in the
/// subscription's stream and events.
pub async fn unfinished(conn: &mut AnyConnection) -> Result<Vec<HydrationTask>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM hydrations h WHERE h.state IN ('pending', 'running') \
         ORDER BY h.created_at, h.id"
    ))
    .fetch_all(&mut *conn)
    .await?;
    let mut tasks = Vec::with_capacity(rows.len());
    for row in &rows {
        let (subscription_id, hydration) = hydration(row)?;
        let id = hydration.id.unwrap_or_default();
        let finished = sqlx::query(
            "SELECT shard FROM hydration_shards WHERE hydration_id = $1 AND state <> 'running' ORDER BY shard",
        )
        .bind(&id)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| row.try_get::<String, _>("shard"))
        .collect::<Result<Vec<_>, _>>()?;
        tasks.push(HydrationTask {
            id,
            subscription_id,
            stream: String::new(),
            backing_name: String::new(),
            events: Vec::new(),
            kind: hydration.kind,
            from: hydration.from,
            to: hydration.to,
            finished_shards: finished,
        });
    }
    Ok(tasks)
}

fn position_to_db(position: &Option<String>) -> String {
    position.clone().unwrap_or_default()
}

fn position_from_db(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

/// Every subscription's start hydration with its shards' hand-overs, for the route table.
pub async fn handovers(
    conn: &mut AnyConnection,
) -> Result<HashMap<String, RouteHydration>, StoreError> {
    let rows = sqlx::query(
        "SELECT h.id, h.subscription_id, h.state, hs.shard, hs.handover_after, hs.live_after \
         FROM hydrations h LEFT JOIN hydration_shards hs ON hs.hydration_id = h.id \
         WHERE h.kind = 'start' ORDER BY h.created_at, h.id",
    )
    .fetch_all(conn)
    .await?;
    let mut all: HashMap<String, RouteHydration> = HashMap::new();
    for row in &rows {
        let id: String = row.try_get("id")?;
        let state: String = row.try_get("state")?;
        let subscription: String = row.try_get("subscription_id")?;
        let entry = all.entry(subscription).or_insert_with(|| RouteHydration {
            id: id.clone(),
            shards: BTreeMap::new(),
            done: false,
        });
        if entry.id != id {
            // A newer start hydration (start_from changed) replaces the older one.
            *entry = RouteHydration {
                id: id.clone(),
                shards: BTreeMap::new(),
                done: false,
            };
        }
        entry.done = HydrationState::parse(&state).is_some_and(HydrationState::is_finished);
        let Some(shard) = row.try_get::<Option<String>, _>("shard")? else {
            continue;
        };
        let Some(after) = row.try_get::<Option<String>, _>("handover_after")? else {
            continue;
        };
        let live_after: Option<String> = row.try_get("live_after")?;
        entry.shards.insert(
            shard,
            Handover {
                after: position_from_db(after),
                live: live_after.is_some(),
                live_after: live_after.and_then(position_from_db),
            },
        );
    }
    Ok(all)
}

/// Records a worker's report on one shard. A shard already finished stays as it was.
pub async fn report(
    conn: &mut AnyConnection,
    id: &str,
    progress: &HydrationProgress,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let state = match (&progress.error, progress.done) {
        (Some(_), _) => "failed",
        (None, true) => "done",
        (None, false) => "running",
    };
    let delivered = i64::try_from(progress.events_delivered).unwrap_or(i64::MAX);
    let updated = sqlx::query(
        "UPDATE hydration_shards SET events_delivered = $1, state = $2, error = $3, updated_at = $4 \
         WHERE hydration_id = $5 AND shard = $6 AND state = 'running'",
    )
    .bind(delivered)
    .bind(state)
    .bind(progress.error.clone())
    .bind(to_millis(now))
    .bind(id)
    .bind(&progress.shard)
    .execute(&mut *conn)
    .await?;
    if updated.rows_affected() == 0 {
        sqlx::query(
            "INSERT INTO hydration_shards (hydration_id, shard, events_delivered, handover_after, \
             live_after, state, error, updated_at) \
             SELECT $1, $2, $3, NULL, NULL, $4, $5, $6 WHERE NOT EXISTS \
             (SELECT 1 FROM hydration_shards WHERE hydration_id = $1 AND shard = $2)",
        )
        .bind(id)
        .bind(&progress.shard)
        .bind(delivered)
        .bind(state)
        .bind(progress.error.clone())
        .bind(to_millis(now))
        .execute(&mut *conn)
        .await?;
    }
    if let Some(after) = &progress.handover_after {
        sqlx::query(
            "UPDATE hydration_shards SET handover_after = $1 WHERE hydration_id = $2 AND shard = $3 \
             AND handover_after IS NULL",
        )
        .bind(position_to_db(after))
        .bind(id)
        .bind(&progress.shard)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Records where live delivery begins on `shard`, unless a position is recorded already;
/// returns the position that holds. `None` when the shard has no hand-over request.
pub async fn set_live_after(
    conn: &mut AnyConnection,
    id: &str,
    shard: &str,
    live_after: &Option<String>,
) -> Result<Option<Option<String>>, StoreError> {
    sqlx::query(
        "UPDATE hydration_shards SET live_after = $1 WHERE hydration_id = $2 AND shard = $3 \
         AND live_after IS NULL AND handover_after IS NOT NULL",
    )
    .bind(position_to_db(live_after))
    .bind(id)
    .bind(shard)
    .execute(&mut *conn)
    .await?;
    let row = sqlx::query(
        "SELECT live_after FROM hydration_shards WHERE hydration_id = $1 AND shard = $2",
    )
    .bind(id)
    .bind(shard)
    .fetch_optional(conn)
    .await?;
    Ok(match row {
        Some(row) => row
            .try_get::<Option<String>, _>("live_after")?
            .map(position_from_db),
        None => None,
    })
}

/// Shards reported on, with their state and error.
pub async fn shards(
    conn: &mut AnyConnection,
    id: &str,
) -> Result<Vec<(String, String, Option<String>)>, StoreError> {
    let rows = sqlx::query(
        "SELECT shard, state, error FROM hydration_shards WHERE hydration_id = $1 ORDER BY shard",
    )
    .bind(id)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("shard")?,
                row.try_get("state")?,
                row.try_get("error")?,
            ))
        })
        .collect()
}

/// Moves a hydration to `state`; a finished one stays finished.
pub async fn set_state(
    conn: &mut AnyConnection,
    id: &str,
    state: HydrationState,
    error: Option<&str>,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let finished_at = state.is_finished().then(|| to_millis(now));
    let result = sqlx::query(
        "UPDATE hydrations SET state = $1, error = $2, finished_at = $3 WHERE id = $4 \
         AND state IN ('pending', 'running')",
    )
    .bind(state.as_str())
    .bind(error.map(str::to_owned))
    .bind(finished_at)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Ends every unfinished hydration of a deleted subscription.
pub async fn delete_of(conn: &mut AnyConnection, subscription: &str) -> Result<(), StoreError> {
    sqlx::query(
        "DELETE FROM hydration_shards WHERE hydration_id IN \
         (SELECT id FROM hydrations WHERE subscription_id = $1)",
    )
    .bind(subscription)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM hydrations WHERE subscription_id = $1")
        .bind(subscription)
        .execute(conn)
        .await?;
    Ok(())
}
