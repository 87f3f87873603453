use std::time::Duration;

use api::*;
use futures::future::join_all;

use crate::support::{Db, TestServer, db_tests};

db_tests!(replicas_never_lose_updates_or_duplicate_names);

/// Two replicas on one store, racing: exactly one create of a name wins, every update based on
/// a stale revision is refused, and the audit chain stays intact.
async fn replicas_never_lose_updates_or_duplicate_names(db: Db) {
    let Some(server) = TestServer::start(db).await else {
        return;
    };
    let (_replica, other, _stop) = server.replica().await;
    let clients = [server.admin.clone(), other];

    let creates = (0..16).map(|i| {
        let client = clients[i % 2].clone();
        async move {
            client
                .create_event(&CreateEvent {
                    name: "contested".to_owned(),
                    classification: Classification::Public,
                    description: format!("writer {i}"),
                    owner: None,
                })
                .await
        }
    });
    let results = join_all(creates).await;
    let winners = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(winners, 1, "{results:?}");
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| e.status() == Some(409))
    );

    // Read-modify-write with the revision: every increment lands exactly once.
    const WRITERS: usize = 8;
    let increments = (0..WRITERS).map(|i| {
        let client = clients[i % 2].clone();
        async move {
            loop {
                let current = client
                    .get_event("contested")
                    .await
                    .expect("get")
                    .expect("exists");
                let count: usize = current
                    .description
                    .strip_prefix("count ")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let update = UpdateEvent {
                    classification: current.classification,
                    description: format!("count {}", count + 1),
                    revision: Some(current.revision),
                };
                match client.update_event("contested", &update).await {
                    Ok(_) => return,
                    Err(e) if e.status() == Some(409) => {
                        tokio::time::sleep(Duration::from_millis(5)).await
                    }
                    Err(e) => panic!("update failed: {e}"),
                }
            }
        }
    });
    join_all(increments).await;
    let event = server
        .admin
        .get_event("contested")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(event.description, format!("count {WRITERS}"));
    assert_eq!(event.revision, 1 + WRITERS as i64);

    let verification = server.admin.audit_verify().await.expect("verify");
    assert!(verification.ok, "{}", verification.message);
}
