use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use api::*;
use chrono::Utc;

use crate::support::{Db, TestServer, assert_status, db_tests};

db_tests!(route_table_follows_grants, long_poll_wakes_on_change);

async fn route_table_follows_grants(db: Db) {
    let Some(server) = TestServer::start(db).await else {
        return;
    };
    let growth = server.principal("growth", Role::Member).await;
    let fraud = server.principal("fraud", Role::Member).await;
    growth
        .create_event(&CreateEvent {
            name: "user_signed_up".to_owned(),
            classification: Classification::Pii,
            description: String::new(),
            owner: None,
        })
        .await
        .expect("event");
    let expires =
        control_plane::service::to_stored_precision(Utc::now()) + chrono::Duration::days(10);
    let grant = growth
        .create_grant(&CreateGrant {
            event: "user_signed_up".to_owned(),
            grantee: "fraud".to_owned(),
            reason: "Scoring.".to_owned(),
            expires_at: Some(expires),
            ..Default::default()
        })
        .await
        .expect("grant");
    fraud
        .create_stream(&CreateStream {
            name: "fraud-signals".to_owned(),
            shard_count: None,
            retention_hours: None,
            tags: BTreeMap::new(),
        })
        .await
        .expect("stream");
    let subscription = fraud
        .create_subscription(&CreateSubscription {
            stream: "fraud-signals".to_owned(),
            events: vec!["user_signed_up".to_owned()],
            ..Default::default()
        })
        .await
        .expect("subscription");

    let table = server
        .admin
        .routes(None, Duration::ZERO)
        .await
        .expect("routes");
    assert_eq!(table.known_events, ["user_signed_up"]);
    assert_eq!(
        table.routes,
        [Route {
            event: "user_signed_up".to_owned(),
            payload_schema: None,
            targets: vec![RouteTarget {
                subscription_id: subscription.id.clone(),
                stream: "fraud-signals".to_owned(),
                backing_name: "fanner-fraud-signals".to_owned(),
                owner: "fraud".to_owned(),
                access_expires_at: Some(expires),
                // Deny by default: the grant reaches back to its creation only.
                history_from: Some(grant.created_at),
                hydration: None,
                ..Default::default()
            }],
        }]
    );
    assert_status(
        fraud.routes(None, Duration::ZERO).await,
        403,
        "admins and auditors",
    );

    growth.revoke_grant(&grant.id).await.expect("revoke");
    let after = server
        .admin
        .routes(Some(table.revision), Duration::from_secs(5))
        .await
        .expect("routes");
    assert!(after.revision > table.revision);
    assert!(
        after.routes.is_empty(),
        "a revoked grant routes nothing: {:?}",
        after.routes
    );
}

async fn long_poll_wakes_on_change(db: Db) {
    let Some(server) = TestServer::start(db).await else {
        return;
    };
    let current = server
        .admin
        .routes(None, Duration::ZERO)
        .await
        .expect("routes")
        .revision;

    // Nothing changes: the poll answers after its wait with the same revision.
    let started = Instant::now();
    let unchanged = server
        .admin
        .routes(Some(current), Duration::from_millis(300))
        .await
        .expect("routes");
    assert_eq!(unchanged.revision, current);
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A change made on another replica wakes the poll.
    let (_replica, replica_admin, _stop) = server.replica().await;
    let current = server
        .admin
        .routes(None, Duration::ZERO)
        .await
        .expect("routes")
        .revision;
    let poll = tokio::spawn({
        let admin = server.admin.clone();
        async move { admin.routes(Some(current), Duration::from_secs(30)).await }
    });
    replica_admin
        .create_event(&CreateEvent {
            name: "page_viewed".to_owned(),
            classification: Classification::Public,
            description: String::new(),
            owner: None,
        })
        .await
        .expect("event");
    let woke = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the poll wakes well before its wait")
        .expect("task")
        .expect("routes");
    assert!(woke.revision > current);
    assert_eq!(woke.known_events, ["page_viewed"]);
}
