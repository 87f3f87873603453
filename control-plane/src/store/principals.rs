use api::{Principal, Role};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{StoreError, from_millis, to_millis};

pub(super) fn principal(row: &AnyRow) -> Result<Principal, StoreError> {
    let role: String = row.try_get("role")?;
    Ok(Principal {
        name: row.try_get("name")?,
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown role {role:?}")))?,
        created_at: from_millis(row.try_get("created_at")?)?,
    })
}

pub async fn get(conn: &mut AnyConnection, name: &str) -> Result<Option<Principal>, StoreError> {
    let row = sqlx::query("SELECT name, role, created_at FROM principals WHERE name = $1")
        .bind(name)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(principal).transpose()
}

pub async fn list(conn: &mut AnyConnection) -> Result<Vec<Principal>, StoreError> {
    let rows = sqlx::query("SELECT name, role, created_at FROM principals ORDER BY name")
        .fetch_all(conn)
        .await?;
    rows.iter().map(principal).collect()
}

pub async fn count(conn: &mut AnyConnection) -> Result<i64, StoreError> {
    Ok(sqlx::query("SELECT COUNT(*) AS n FROM principals")
        .fetch_one(conn)
        .await?
        .try_get("n")?)
}

pub async fn insert(conn: &mut AnyConnection, principal: &Principal) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO principals (name, role, created_at) VALUES ($1, $2, $3)")
        .bind(&principal.name)
        .bind(principal.role.as_str())
        .bind(to_millis(principal.created_at))
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn insert_token(
    conn: &mut AnyConnection,
    token_hash: &str,
    principal: &str,
    created_by: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO tokens (hash, principal, created_by, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(token_hash)
    .bind(principal)
    .bind(created_by)
    .bind(now_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// The principal a token (by its hash) authenticates, if any.
pub async fn by_token(
    conn: &mut AnyConnection,
    token_hash: &str,
) -> Result<Option<Principal>, StoreError> {
    let row = sqlx::query(
        "SELECT p.name, p.role, p.created_at FROM tokens t JOIN principals p ON p.name = t.principal \
         WHERE t.hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(principal).transpose()
}
