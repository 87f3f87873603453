use std::collections::BTreeMap;

use api::*;
use chrono::{Duration, Utc};
use streams::StreamBackend;

use crate::support::{Db, TestServer, assert_status, db_tests};

db_tests!(stream_lifecycle, subscription_access_checks);

fn create(name: &str) -> CreateStream {
    CreateStream {
        name: name.to_owned(),
        shard_count: None,
        retention_hours: None,
        tags: BTreeMap::new(),
    }
}

async fn stream_lifecycle(db: Db) {
    let Some(server) = TestServer::start(db).await else {
        return;
    };
    let fraud = server.principal("fraud", Role::Member).await;
    let ads = server.principal("ads", Role::Member).await;
    let auditor = server.principal("security", Role::Auditor).await;

    let stream = fraud
        .create_stream(&create("fraud-signals"))
        .await
        .expect("create");
    assert_eq!(
        (
            stream.shard_count,
            stream.retention_hours,
            stream.status.as_str()
        ),
        (1, 24, "active")
    );
    assert_eq!(stream.owner, "fraud");
    let backing = server
        .backend
        .describe_stream("fanner-fraud-signals")
        .await
        .expect("describe")
        .expect("backing stream exists");
    assert!(backing.active);
    assert_eq!(backing.shard_count, 1);

    assert_status(
        ads.create_stream(&create("fraud-signals")).await,
        409,
        "already exists",
    );
    assert_status(
        auditor.create_stream(&create("audit-copy")).await,
        403,
        "auditors",
    );
    for (shards, hours, needle) in [
        (0, 24, "shard_count"),
        (1025, 24, "shard_count"),
        (1, 23, "retention_hours"),
        (1, 8761, "retention_hours"),
    ] {
        let bad = CreateStream {
            shard_count: Some(shards),
            retention_hours: Some(hours),
            ..create("bad-stream")
        };
        assert_status(fraud.create_stream(&bad).await, 400, needle);
    }
    assert!(
        server
            .backend
            .describe_stream("fanner-bad-stream")
            .await
            .expect("describe")
            .is_none()
    );

    // In place: shard count, retention, tags.
    let tags = BTreeMap::from([("team".to_owned(), "fraud".to_owned())]);
    let update = UpdateStream {
        shard_count: 2,
        retention_hours: 48,
        tags: tags.clone(),
        revision: Some(1),
    };
    assert_status(
        ads.update_stream("fraud-signals", &update).await,
        403,
        "belongs to",
    );
    let updated = fraud
        .update_stream("fraud-signals", &update)
        .await
        .expect("update");
    assert_eq!(
        (
            updated.shard_count,
            updated.retention_hours,
            updated.revision
        ),
        (2, 48, 2)
    );
    assert_eq!(updated.tags, tags);
    assert_eq!(
        updated.backing_id, stream.backing_id,
        "updated in place, not replaced"
    );
    let backing = server
        .backend
        .describe_stream("fanner-fraud-signals")
        .await
        .expect("describe")
        .expect("exists");
    assert_eq!((backing.shard_count, backing.retention_hours), (2, 48));
    assert_status(
        fraud.update_stream("fraud-signals", &update).await,
        409,
        "revision 2, not 1",
    );

    // Visibility.
    assert_status(ads.get_stream("fraud-signals").await, 403, "belongs to");
    assert_eq!(
        auditor
            .get_stream("fraud-signals")
            .await
            .expect("auditor reads"),
        Some(updated.clone())
    );
    assert!(ads.list_streams().await.expect("list").is_empty());
    assert_eq!(fraud.list_streams().await.expect("list"), vec![updated]);

    // Delete removes the subscriptions and the backing stream.
    let subscription = fraud
        .create_subscription(&CreateSubscription {
            stream: "fraud-signals".to_owned(),
            events: vec![],
            ..Default::default()
        })
        .await;
    assert_status(subscription, 400, "at least one event");
    fraud
        .create_event(&CreateEvent {
            name: "fraud_flagged".to_owned(),
            classification: Classification::Internal,
            description: String::new(),
            owner: None,
        })
        .await
        .expect("event");
    let subscription = fraud
        .create_subscription(&CreateSubscription {
            stream: "fraud-signals".to_owned(),
            events: vec!["fraud_flagged".to_owned()],
            ..Default::default()
        })
        .await
        .expect("subscribe");
    assert_status(ads.delete_stream("fraud-signals").await, 403, "belongs to");
    fraud.delete_stream("fraud-signals").await.expect("delete");
    assert_eq!(fraud.get_stream("fraud-signals").await.expect("get"), None);
    assert_eq!(
        fraud.get_subscription(&subscription.id).await.expect("get"),
        None
    );
    assert!(
        server
            .backend
            .describe_stream("fanner-fraud-signals")
            .await
            .expect("describe")
            .is_none()
    );
}

async fn subscription_access_checks(db: Db) {
    let Some(server) = TestServer::start(db).await else {
        return;
    };
    let growth = server.principal("growth", Role::Member).await;
    let cards = server.principal("cards", Role::Member).await;
    let fraud = server.principal("fraud", Role::Member).await;
    let event = |name: &str, classification| CreateEvent {
        name: name.to_owned(),
        classification,
        description: String::new(),
        owner: None,
    };
    growth
        .create_event(&event("user_signed_up", Classification::Pii))
        .await
        .expect("event");
    cards
        .create_event(&event("card_swiped", Classification::Internal))
        .await
        .expect("event");
    cards
        .create_event(&event("card_issued", Classification::Internal))
        .await
        .expect("event");
    fraud
        .create_event(&event("fraud_flagged", Classification::Internal))
        .await
        .expect("event");
    fraud
        .create_stream(&create("fraud-signals"))
        .await
        .expect("stream");
    let soon = Utc::now() + Duration::days(1);
    let grant = growth
        .create_grant(&CreateGrant {
            event: "user_signed_up".to_owned(),
            grantee: "fraud".to_owned(),
            reason: "Scoring.".to_owned(),
            expires_at: Some(soon),
            ..Default::default()
        })
        .await
        .expect("grant");
    cards
        .create_grant(&CreateGrant {
            event: "card_issued".to_owned(),
            grantee: "fraud".to_owned(),
            reason: "Scoring.".to_owned(),
            expires_at: Some(Utc::now() + Duration::seconds(30)),
            ..Default::default()
        })
        .await
        .expect("grant");
    server
        .cp
        .clock()
        .advance(std::time::Duration::from_secs(60));

    let events: Vec<String> = [
        "user_signed_up",
        "card_swiped",
        "card_issued",
        "ghost_event",
        "fraud_flagged",
    ]
    .map(String::from)
    .into();
    let expected = vec![
        ("card_issued".to_owned(), DenialReason::GrantExpired),
        ("card_swiped".to_owned(), DenialReason::NotGranted),
        ("ghost_event".to_owned(), DenialReason::Unknown),
    ];

    // The dry run and the real thing give the same verdict; the dry run writes nothing.
    let verdict = fraud
        .check_subscription(&CheckSubscription {
            stream: "fraud-signals".to_owned(),
            events: events.clone(),
            ..Default::default()
        })
        .await
        .expect("check");
    assert!(!verdict.allowed);
    assert_eq!(verdict.owner, "fraud");
    assert_eq!(
        verdict
            .problems
            .iter()
            .map(|p| (p.event.clone(), p.reason))
            .collect::<Vec<_>>(),
        expected
    );
    assert!(
        fraud
            .list_subscriptions(None)
            .await
            .expect("list")
            .is_empty()
    );

    let refused = fraud
        .create_subscription(&CreateSubscription {
            stream: "fraud-signals".to_owned(),
            events: events.clone(),
            ..Default::default()
        })
        .await;
    let error = refused.expect_err("refused");
    assert_eq!(error.status(), Some(403));
    assert_eq!(
        error
            .problems()
            .iter()
            .map(|p| (p.event.clone(), p.reason))
            .collect::<Vec<_>>(),
        expected
    );
    for needle in [
        "card_issued (grant expired)",
        "card_swiped (not granted)",
        "ghost_event (unknown)",
    ] {
        assert!(
            error.to_string().contains(needle),
            "{error} should name {needle}"
        );
    }
    assert!(
        fraud
            .list_subscriptions(None)
            .await
            .expect("list")
            .is_empty()
    );

    // Another member cannot subscribe someone else's stream, even to their own events.
    let subscribe = |events: &[&str]| CreateSubscription {
        stream: "fraud-signals".to_owned(),
        events: events.iter().map(|e| (*e).to_owned()).collect(),
        ..Default::default()
    };
    assert_status(
        cards
            .create_subscription(&subscribe(&["card_swiped"]))
            .await,
        403,
        "belongs to",
    );

    let created = fraud
        .create_subscription(&subscribe(&[
            "user_signed_up",
            "fraud_flagged",
            "user_signed_up",
        ]))
        .await
        .expect("allowed");
    assert_eq!(
        created.events,
        ["fraud_flagged", "user_signed_up"],
        "sorted and de-duplicated"
    );
    assert_eq!(created.owner, "fraud");

    // Updating to an ungranted event is refused and changes nothing; a stale revision too.
    let widen = UpdateSubscription {
        events: vec!["user_signed_up".to_owned(), "card_swiped".to_owned()],
        revision: Some(1),
        ..Default::default()
    };
    assert_status(
        fraud.update_subscription(&created.id, &widen).await,
        403,
        "card_swiped (not granted)",
    );
    assert_eq!(
        fraud.get_subscription(&created.id).await.expect("get"),
        Some(created.clone())
    );
    let narrow = UpdateSubscription {
        events: vec!["user_signed_up".to_owned()],
        revision: Some(1),
        ..Default::default()
    };
    let narrowed = fraud
        .update_subscription(&created.id, &narrow)
        .await
        .expect("update");
    assert_eq!(
        (narrowed.events.clone(), narrowed.revision),
        (vec!["user_signed_up".to_owned()], 2)
    );
    assert_status(
        fraud.update_subscription(&created.id, &narrow).await,
        409,
        "revision 2, not 1",
    );

    // Once the grant is revoked, the same subscription can no longer be created.
    growth.revoke_grant(&grant.id).await.expect("revoke");
    let verdict = fraud
        .check_subscription(&CheckSubscription {
            stream: "fraud-signals".to_owned(),
            events: vec!["user_signed_up".to_owned()],
            ..Default::default()
        })
        .await
        .expect("check");
    assert_eq!(verdict.problems[0].reason, DenialReason::NotGranted);

    assert_status(
        cards.delete_subscription(&created.id).await,
        403,
        "belongs to",
    );
    fraud
        .delete_subscription(&created.id)
        .await
        .expect("delete");
    assert_status(
        fraud.delete_subscription(&created.id).await,
        404,
        "does not exist",
    );
}
