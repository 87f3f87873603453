use api::Principal;
use sqlx::AnyConnection;

use super::{StoreError, principals};

/// Records a session and drops the ones that have expired.
pub async fn insert(
    conn: &mut AnyConnection,
    hash: &str,
    principal: &str,
    now_ms: i64,
    expires_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
        .bind(now_ms)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO sessions (hash, principal, created_at, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(hash)
    .bind(principal)
    .bind(now_ms)
    .bind(expires_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// The principal of an unexpired session, if any.
pub async fn principal(
    conn: &mut AnyConnection,
    hash: &str,
    now_ms: i64,
) -> Result<Option<Principal>, StoreError> {
    let row = sqlx::query(
        "SELECT p.name, p.role, p.created_at FROM sessions s JOIN principals p ON p.name = s.principal \
         WHERE s.hash = $1 AND s.expires_at > $2",
    )
    .bind(hash)
    .bind(now_ms)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(principals::principal).transpose()
}

pub async fn delete(conn: &mut AnyConnection, hash: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM sessions WHERE hash = $1")
        .bind(hash)
        .execute(conn)
        .await?;
    Ok(())
}
