//! The audit trail: an append-only, hash-chained log. Each entry's hash covers its fields and the
//! previous entry's hash, and `audit_head` holds the newest hash, so an edited, inserted or deleted
//! entry — including one cut off the end — breaks verification at that entry.

use api::{AuditEntry, AuditVerification};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{StoreError, from_millis, to_millis};

pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What the caller knows of an entry; the chain fields are added on append.
#[derive(Clone, Debug)]
pub struct NewEntry {
    pub time: DateTime<Utc>,
    pub request_id: String,
    pub actor: String,
    pub action: String,
    pub object_kind: String,
    pub object_id: String,
    pub outcome: String,
    pub detail: Option<String>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// The chain's tip, locked for the rest of the transaction.
#[derive(Clone, Debug)]
pub struct Head {
    pub next_seq: i64,
    pub prev_hash: String,
    pub routes_revision: i64,
}

/// Takes the store-wide write lock (a row lock on Postgres, the write lock on SQLite) and reserves
/// the next sequence number. Call it first in every mutating transaction.
pub async fn lock_head(conn: &mut AnyConnection) -> Result<Head, StoreError> {
    let row = sqlx::query(
        "UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash, routes_revision",
    )
    .fetch_one(conn)
    .await?;
    Ok(Head {
        next_seq: row.try_get("seq")?,
        prev_hash: row.try_get("hash")?,
        routes_revision: row.try_get("routes_revision")?,
    })
}

pub async fn routes_revision(conn: &mut AnyConnection) -> Result<i64, StoreError> {
    Ok(
        sqlx::query("SELECT routes_revision FROM audit_head WHERE id = 1")
            .fetch_one(conn)
            .await?
            .try_get("routes_revision")?,
    )
}

#[allow(clippy::too_many_arguments)]
fn entry_hash(
    seq: i64,
    time_ms: i64,
    entry: &NewEntry,
    before: Option<&str>,
    after: Option<&str>,
    prev_hash: &str,
) -> String {
    let material = serde_json::json!([
        seq,
        time_ms,
        entry.request_id,
        entry.actor,
        entry.action,
        entry.object_kind,
        entry.object_id,
        entry.outcome,
        entry.detail,
        before,
        after,
        prev_hash,
    ]);
    hex::encode(Sha256::digest(material.to_string().as_bytes()))
}

fn json_text(value: &Option<serde_json::Value>) -> Option<String> {
    value.as_ref().map(|v| v.to_string())
}

/// Appends `entry` at `head` and moves the head; `bump_routes` also advances the route revision.
pub async fn append(
    conn: &mut AnyConnection,
    head: &Head,
    entry: &NewEntry,
    bump_routes: bool,
) -> Result<AuditEntry, StoreError> {
    let time_ms = to_millis(entry.time);
    let before = json_text(&entry.before);
    let after = json_text(&entry.after);
    let hash = entry_hash(
        head.next_seq,
        time_ms,
        entry,
        before.as_deref(),
        after.as_deref(),
        &head.prev_hash,
    );
    sqlx::query(
        "INSERT INTO audit_log (seq, time, request_id, actor, action, object_kind, object_id, outcome, \
         detail, before_json, after_json, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(head.next_seq)
    .bind(time_ms)
    .bind(&entry.request_id)
    .bind(&entry.actor)
    .bind(&entry.action)
    .bind(&entry.object_kind)
    .bind(&entry.object_id)
    .bind(&entry.outcome)
    .bind(entry.detail.clone())
    .bind(before)
    .bind(after)
    .bind(&head.prev_hash)
    .bind(&hash)
    .execute(&mut *conn)
    .await?;
    let routes_revision = head.routes_revision + i64::from(bump_routes);
    sqlx::query("UPDATE audit_head SET hash = $1, routes_revision = $2 WHERE id = 1")
        .bind(&hash)
        .bind(routes_revision)
        .execute(conn)
        .await?;
    Ok(AuditEntry {
        seq: head.next_seq,
        time: from_millis(time_ms)?,
        request_id: entry.request_id.clone(),
        actor: entry.actor.clone(),
        action: entry.action.clone(),
        object_kind: entry.object_kind.clone(),
        object_id: entry.object_id.clone(),
        outcome: entry.outcome.clone(),
        detail: entry.detail.clone(),
        before: entry.before.clone(),
        after: entry.after.clone(),
        prev_hash: head.prev_hash.clone(),
        hash,
    })
}

const COLUMNS: &str = "seq, time, request_id, actor, action, object_kind, object_id, outcome, detail, \
                       before_json, after_json, prev_hash, hash";

struct StoredEntry {
    entry: NewEntry,
    seq: i64,
    time_ms: i64,
    before: Option<String>,
    after: Option<String>,
    prev_hash: String,
    hash: String,
}

fn stored(row: &AnyRow) -> Result<StoredEntry, StoreError> {
    let before: Option<String> = row.try_get("before_json")?;
    let after: Option<String> = row.try_get("after_json")?;
    let parse = |text: &Option<String>| -> Result<Option<serde_json::Value>, StoreError> {
        text.as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("audit entry JSON: {e}")))
    };
    let time_ms: i64 = row.try_get("time")?;
    Ok(StoredEntry {
        entry: NewEntry {
            time: from_millis(time_ms)?,
            request_id: row.try_get("request_id")?,
            actor: row.try_get("actor")?,
            action: row.try_get("action")?,
            object_kind: row.try_get("object_kind")?,
            object_id: row.try_get("object_id")?,
            outcome: row.try_get("outcome")?,
            detail: row.try_get("detail")?,
            before: parse(&before)?,
            after: parse(&after)?,
        },
        seq: row.try_get("seq")?,
        time_ms,
        before,
        after,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

impl From<StoredEntry> for AuditEntry {
    fn from(s: StoredEntry) -> AuditEntry {
        AuditEntry {
            seq: s.seq,
            time: s.entry.time,
            request_id: s.entry.request_id,
            actor: s.entry.actor,
            action: s.entry.action,
            object_kind: s.entry.object_kind,
            object_id: s.entry.object_id,
            outcome: s.entry.outcome,
            detail: s.entry.detail,
            before: s.entry.before,
            after: s.entry.after,
            prev_hash: s.prev_hash,
            hash: s.hash,
        }
    }
}

/// Which entries to list; unset fields do not filter.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub after_seq: Option<i64>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub object_kind: Option<String>,
    /// Entries on any of these objects.
    pub object_ids: Vec<String>,
    /// The newest matching entries (still returned oldest first) instead of the oldest.
    pub newest: bool,
}

/// `column = $N` for `value`, the next text parameter (after the three fixed ones).
fn text_condition<'a>(column: &str, value: &'a str, texts: &mut Vec<&'a str>) -> String {
    texts.push(value);
    format!("{column} = ${}", texts.len() + 3)
}

/// Entries matching `filter`, oldest first, at most `limit`.
pub async fn list(
    conn: &mut AnyConnection,
    filter: &Filter,
    limit: i64,
) -> Result<Vec<AuditEntry>, StoreError> {
    let mut conditions = vec!["seq > $1".to_owned()];
    let mut texts: Vec<&str> = Vec::new();
    for (column, value) in [
        ("actor", &filter.actor),
        ("action", &filter.action),
        ("object_kind", &filter.object_kind),
    ] {
        if let Some(value) = value {
            let condition = text_condition(column, value, &mut texts);
            conditions.push(condition);
        }
    }
    if !filter.object_ids.is_empty() {
        let ids: Vec<String> = filter
            .object_ids
            .iter()
            .map(|id| text_condition("object_id", id, &mut texts))
            .collect();
        conditions.push(format!("({})", ids.join(" OR ")));
    }
    let order = if filter.newest { "DESC" } else { "ASC" };
    let statement = format!(
        "SELECT {COLUMNS} FROM audit_log WHERE {} AND time >= $2 AND time <= $3 ORDER BY seq {order} LIMIT ${}",
        conditions.join(" AND "),
        texts.len() + 4
    );
    let mut query = sqlx::query(&statement)
        .bind(filter.after_seq.unwrap_or(0))
        .bind(filter.since.map(to_millis).unwrap_or(i64::MIN))
        .bind(filter.until.map(to_millis).unwrap_or(i64::MAX));
    for text in texts {
        query = query.bind(text);
    }
    let rows = query.bind(limit).fetch_all(conn).await?;
    let mut entries = rows
        .iter()
        .map(|row| stored(row).map(AuditEntry::from))
        .collect::<Result<Vec<_>, _>>()?;
    if filter.newest {
        entries.reverse();
    }
    Ok(entries)
}

/// The newest entry's hash: what a document citing the trail pins.
pub async fn head_hash(conn: &mut AnyConnection) -> Result<String, StoreError> {
    Ok(sqlx::query("SELECT hash FROM audit_head WHERE id = 1")
        .fetch_one(conn)
        .await?
        .try_get("hash")?)
}

/// Recomputes the whole chain, page by page, and reports the first entry that does not match.
pub async fn verify(conn: &mut AnyConnection) -> Result<AuditVerification, StoreError> {
    const PAGE: i64 = 1000;
    let head_hash = head_hash(&mut *conn).await?;
    let mut prev_hash = GENESIS_HASH.to_owned();
    let mut expected_seq = 1;
    let mut checked = 0;
    let fail = |seq: i64, checked: i64, message: String| AuditVerification {
        ok: false,
        head: head_hash.clone(),
        entries_checked: checked,
        first_mismatch: Some(seq),
        message,
    };
    loop {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM audit_log WHERE seq >= $1 ORDER BY seq LIMIT $2"
        ))
        .bind(expected_seq)
        .bind(PAGE)
        .fetch_all(&mut *conn)
        .await?;
        let page_len = rows.len();
        for row in &rows {
            let s = match stored(row) {
                Ok(s) => s,
                Err(e) => {
                    return Ok(fail(
                        expected_seq,
                        checked,
                        format!("entry {expected_seq} is unreadable: {e}"),
                    ));
                }
            };
            if s.seq != expected_seq {
                return Ok(fail(
                    expected_seq,
                    checked,
                    format!("entry {expected_seq} is missing"),
                ));
            }
            if s.prev_hash != prev_hash {
                return Ok(fail(
                    s.seq,
                    checked,
                    format!("entry {} does not link to entry {}", s.seq, s.seq - 1),
                ));
            }
            let recomputed = entry_hash(
                s.seq,
                s.time_ms,
                &s.entry,
                s.before.as_deref(),
                s.after.as_deref(),
                &s.prev_hash,
            );
            if recomputed != s.hash {
                return Ok(fail(
                    s.seq,
                    checked,
                    format!(
                        "entry {} was modified: its hash does not match its contents",
                        s.seq
                    ),
                ));
            }
            prev_hash = s.hash;
            expected_seq += 1;
            checked += 1;
        }
        if i64::try_from(page_len).unwrap_or(i64::MAX) < PAGE {
            break;
        }
    }
    if prev_hash != head_hash {
        return Ok(fail(
            expected_seq,
            checked,
            format!(
                "entries after {} were removed: the chain ends before its recorded head",
                expected_seq - 1
            ),
        ));
    }
    Ok(AuditVerification {
        ok: true,
        head: head_hash.clone(),
        entries_checked: checked,
        first_mismatch: None,
        message: format!("{checked} entries verified; head {head_hash}"),
    })
}
