//! The SQL store meets the shard-lease contract on both databases.

use control_plane::Store;

use crate::support::{Db, db_tests, store_url};

async fn conforms(db: Db) {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(url) = store_url(db, &dir, "leases").await else {
        return;
    };
    let store = Store::open(&url).await.expect("store opens");
    shard_runtime::conformance::run(&store).await;
}

db_tests!(conforms);
