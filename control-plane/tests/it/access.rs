use std::collections::BTreeMap;

use api::*;
use chrono::{Duration, Utc};

use crate::support::{Db, TestServer, assert_status, db_tests};

db_tests!(who_can_read_an_event);

async fn who_can_read_an_event(db: Db) {
    let Some(server) = TestServer::start(db).await else {
        return;
    };
    let growth = server.principal("growth", Role::Member).await;
    let fraud = server.principal("fraud", Role::Member).await;
    let ads = server.principal("ads", Role::Member).await;
    let auditor = server.principal("security", Role::Auditor).await;
    growth
        .create_event(&CreateEvent {
            name: "user_signed_up".to_owned(),
            classification: Classification::Pii,
            description: String::new(),
            owner: None,
        })
        .await
        .expect("event");
    let expires = control_plane::service::to_stored_precision(Utc::now()) + Duration::days(90);
    let grant = growth
        .create_grant(&CreateGrant {
            event: "user_signed_up".to_owned(),
            grantee: "fraud".to_owned(),
            reason: "Fraud scoring at signup.".to_owned(),
            expires_at: Some(expires),
            ..Default::default()
        })
        .await
        .expect("grant");
    let old = growth
        .create_grant(&CreateGrant {
            event: "user_signed_up".to_owned(),
            grantee: "ads".to_owned(),
            reason: "Attribution.".to_owned(),
            expires_at: Some(expires),
            ..Default::default()
        })
        .await
        .expect("grant");
    for (client, stream) in [(&fraud, "fraud-signals"), (&ads, "ads-attribution")] {
        client
            .create_stream(&CreateStream {
                name: stream.to_owned(),
                shard_count: None,
                retention_hours: None,
                tags: BTreeMap::new(),
            })
            .await
            .expect("stream");
        client
            .create_subscription(&CreateSubscription {
                stream: stream.to_owned(),
                events: vec!["user_signed_up".to_owned()],
                ..Default::default()
            })
            .await
            .expect("subscription");
    }
    growth.revoke_grant(&old.id).await.expect("revoke");

    let view = auditor
        .access("user_signed_up")
        .await
        .expect("auditor reads the access view");
    assert_eq!(view.event.owner, "growth");
    let grants: Vec<(&str, &str, &str, GrantStatus)> = view
        .grants
        .iter()
        .map(|g| {
            (
                g.grantee.as_str(),
                g.granted_by.as_str(),
                g.reason.as_str(),
                g.status,
            )
        })
        .collect();
    assert_eq!(
        grants,
        [
            (
                "fraud",
                "growth",
                "Fraud scoring at signup.",
                GrantStatus::Active
            ),
            ("ads", "growth", "Attribution.", GrantStatus::Revoked)
        ]
    );
    assert_eq!(view.grants[0].expires_at, Some(expires));
    assert_eq!(view.grants[0].created_at, grant.created_at);
    let receivers: Vec<(&str, &str, bool)> = view
        .subscriptions
        .iter()
        .map(|s| (s.stream.as_str(), s.owner.as_str(), s.delivering))
        .collect();
    assert_eq!(
        receivers,
        [
            ("fraud-signals", "fraud", true),
            ("ads-attribution", "ads", false)
        ]
    );

    assert_eq!(
        growth
            .access("user_signed_up")
            .await
            .expect("owner reads it"),
        view
    );
    assert_status(
        fraud.access("user_signed_up").await,
        403,
        "visible to its owner",
    );
    assert_status(auditor.access("nope").await, 404, "does not exist");
}
