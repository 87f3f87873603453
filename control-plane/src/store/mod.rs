//! The control plane's store: one schema, one set of queries, on SQLite (the embedded default)
//! or PostgreSQL (several replicas), chosen by the URL. Queries use the SQL both understand and
//! `$N` parameters, through sqlx's `Any` driver.
//!
//! Every function here takes a connection, so callers decide the transaction boundaries.

pub mod audit;
pub mod catalog;
pub mod expectations;
pub mod grants;
pub mod hydrations;
pub mod leases;
pub mod principals;
pub mod sessions;
pub mod streams;
pub mod subscriptions;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    Postgres,
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    kind: DbKind,
}

/// The schema's migrations, compiled in: what `sqlx::migrate!` embeds (the same versions,
/// descriptions and SQL, so the same checksums), without building sqlx's macros and a second copy
/// of its drivers and SQLite for the compiler. A test checks that every file is listed.
const MIGRATIONS: [(i64, &str, &str); 6] = [
    (1, "init", include_str!("../../migrations/0001_init.sql")),
    (
        2,
        "sessions",
        include_str!("../../migrations/0002_sessions.sql"),
    ),
    (
        3,
        "event expectations",
        include_str!("../../migrations/0003_event_expectations.sql"),
    ),
    (
        4,
        "gatekeeping",
        include_str!("../../migrations/0004_gatekeeping.sql"),
    ),
    (
        5,
        "history",
        include_str!("../../migrations/0005_history.sql"),
    ),
    (
        6,
        "event schemas",
        include_str!("../../migrations/0006_event_schemas.sql"),
    ),
];

#[derive(Debug)]
struct Embedded;

impl<'s> sqlx::migrate::MigrationSource<'s> for Embedded {
    fn resolve(
        self,
    ) -> futures::future::BoxFuture<
        's,
        Result<Vec<sqlx::migrate::Migration>, sqlx::error::BoxDynError>,
    > {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|(version, description, sql)| {
                    sqlx::migrate::Migration::new(
                        *version,
                        (*description).into(),
                        sqlx::migrate::MigrationType::Simple,
                        (*sql).into(),
                        false,
                    )
                })
                .collect())
        })
    }
}

impl Store {
    /// Opens (and migrates) the store at `url`: `sqlite://PATH` or `postgres://...`.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let kind = if url.starts_with("sqlite:") {
            DbKind::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            DbKind::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        };
        let options = AnyConnectOptions::from_str(url)?;
        let pool = match kind {
            DbKind::Sqlite => {
                AnyPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(30))
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            // WAL lets readers proceed while one writer commits; FULL keeps a
                            // committed audit entry through a power cut.
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                                 PRAGMA busy_timeout = 30000; PRAGMA foreign_keys = ON;",
                            )
                            .await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?
            }
            DbKind::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(options)
                    .await?
            }
        };
        sqlx::migrate::Migrator::new(Embedded)
            .await?
            .run(&pool)
            .await?;
        Ok(Store { pool, kind })
    }

    /// Opens the SQLite file at `path`, creating it if needed.
    pub async fn open_sqlite(path: &Path) -> Result<Store, StoreError> {
        Store::open(&format!("sqlite://{}?mode=rwc", path.display())).await
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn kind(&self) -> DbKind {
        self.kind
    }

    /// Whether the database answers; for `/readyz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

pub(crate) fn to_millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

pub(crate) fn from_millis(ms: i64) -> Result<DateTime<Utc>, StoreError> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {ms} is out of range")))
}

pub(crate) fn from_millis_opt(ms: Option<i64>) -> Result<Option<DateTime<Utc>>, StoreError> {
    ms.map(from_millis).transpose()
}

pub(crate) fn to_u32(value: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} {value} is out of range")))
}

#[cfg(test)]
mod tests {
    /// Every file in `migrations/` is listed, by the version and description `sqlx::migrate!`
    /// would read from its name (`NNNN_words.sql`), with its content.
    #[test]
    fn every_migration_file_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<(i64, String, String)> = std::fs::read_dir(&dir)
            .expect("migrations/")
            .map(|entry| {
                let path = entry.expect("entry").path();
                let name = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .expect("utf-8")
                    .to_owned();
                let (version, words) = name.split_once('_').expect("NNNN_words.sql");
                (
                    version.parse().expect("a version"),
                    words.replace('_', " "),
                    std::fs::read_to_string(&path).expect("readable"),
                )
            })
            .collect();
        files.sort();
        let embedded: Vec<(i64, String, String)> = super::MIGRATIONS
            .iter()
            .map(|(v, d, sql)| (*v, (*d).to_owned(), (*sql).to_owned()))
            .collect();
        assert_eq!(embedded, files);
    }
}
