//! A fresh PostgreSQL database per test, on the server `FANNER_TEST_DATABASE_URL` names.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};

/// The variable naming the test server (e.g. `postgres://postgres@127.0.0.1:5432/postgres`).
pub const URL_VAR: &str = "FANNER_TEST_DATABASE_URL";

/// Creates an empty database and returns its URL; `None` (saying why) when no server is set.
pub async fn fresh_database(test: &str) -> Option<String> {
    let Ok(base) = std::env::var(URL_VAR) else {
        eprintln!("{test}: skipped on PostgreSQL: set {URL_VAR} to run it");
        return None;
    };
    let options = PgConnectOptions::from_str(&base)
        .unwrap_or_else(|e| panic!("{URL_VAR} is not a valid URL: {e}"));
    let mut admin = options
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {URL_VAR}: {e}"));
    let name = crate::unique_name("fanner_t").replace('-', "_");
    admin
        .execute(format!("CREATE DATABASE \"{name}\"").as_str())
        .await
        .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
    admin.close().await.ok();
    let (server, _) = base
        .rsplit_once('/')
        .unwrap_or_else(|| panic!("{URL_VAR} must end with /DATABASE"));
    Some(format!("{server}/{name}"))
}
