//! Who receives what: only granted events, bytes unchanged, and delivery stops when access ends.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fanner::{Http, RouteSource};

use crate::support::{Harness, Kind, backend_tests, events, eventually, ids};

backend_tests!(only_granted_events_are_delivered_unchanged);

async fn only_granted_events_are_delivered_unchanged(kind: Kind) {
    let Some(h) = Harness::start(kind, "only_granted_events_are_delivered_unchanged", 2).await
    else {
        return;
    };
    let growth = h.team("growth").await;
    let fraud = h.team("fraud").await;
    let cards = h.team("cards").await;
    h.event(&growth, "signup").await;
    h.event(&growth, "login").await;
    h.event(&cards, "payment").await;
    h.grant(&growth, "signup", "fraud", None).await;
    let fraud_stream = h.stream(&fraud, "fraud-signals", 2).await;
    let growth_stream = h.stream(&growth, "growth-own", 1).await;
    h.subscribe(&fraud, "fraud-signals", &["signup"]).await;
    h.subscribe(&growth, "growth-own", &["signup", "login"])
        .await;
    let engine = h.engine(h.config("engine-a"));

    let signups = ids("signup", 50);
    let logins = ids("login", 50);
    let payments = ids("payment", 50);
    let mut all = events("signup", &signups);
    all.extend(events("login", &logins));
    all.extend(events("payment", &payments));
    h.publish(&all).await;

    let mut growth_expected = signups.clone();
    growth_expected.extend(logins.iter().cloned());
    let growth_got = h.wait_for_ids(&growth_stream, &growth_expected).await;
    let fraud_got = h.wait_for_ids(&fraud_stream, &signups).await;
    let mut sorted = fraud_got.clone();
    sorted.sort();
    let mut want = signups.clone();
    want.sort();
    assert_eq!(
        sorted, want,
        "fraud receives exactly the signups, once each"
    );
    assert_eq!(
        growth_got.len(),
        growth_expected.len(),
        "no duplicates, nothing else"
    );

    // The consumer's record is the GES record: same bytes, keyed by the event id.
    let ges: Vec<_> = h.records(&h.ges).await;
    for record in h.records(&fraud_stream).await {
        let original = ges
            .iter()
            .find(|r| r.data == record.data)
            .expect("every delivered record is byte-for-byte a GES record");
        let envelope = <proto::Envelope as prost::Message>::decode(original.data.clone())
            .expect("an envelope");
        assert_eq!(record.partition_key, envelope.event_id);
    }
    engine.shutdown().await;
}

backend_tests!(revoked_and_expired_grants_stop_delivery);

async fn revoked_and_expired_grants_stop_delivery(kind: Kind) {
    let Some(h) = Harness::start(kind, "revoked_and_expired_grants_stop_delivery", 1).await else {
        return;
    };
    let growth = h.team("growth").await;
    let fraud = h.team("fraud").await;
    h.event(&growth, "signup").await;
    h.event(&growth, "login").await;
    let signup_grant = h
        .grant(
            &growth,
            "signup",
            "fraud",
            Some(h.cp.now() + chrono::Duration::hours(1)),
        )
        .await;
    let login_grant = h.grant(&growth, "login", "fraud", None).await;
    let fraud_stream = h.stream(&fraud, "fraud-signals", 1).await;
    let canary = h.stream(&growth, "growth-own", 1).await;
    h.subscribe(&fraud, "fraud-signals", &["signup", "login"])
        .await;
    h.subscribe(&growth, "growth-own", &["signup", "login"])
        .await;
    let engine = h.engine(h.config("engine-a"));

    let round = |n: usize| {
        let mut ids = ids(&format!("signup-{n}"), 20);
        ids.extend(crate::support::ids(&format!("login-{n}"), 20));
        ids
    };
    let publish_round = |n: usize| {
        let all = round(n);
        let (signups, logins) = all.split_at(20);
        let mut list = events("signup", signups);
        list.extend(events("login", logins));
        list
    };

    h.publish(&publish_round(1)).await;
    h.wait_for_ids(&fraud_stream, &round(1)).await;

    // Revocation: the engine swaps in the new table within 5 s, and deliveries stop.
    h.cp.revoke_grant(&growth, &login_grant.id)
        .await
        .expect("revoked");
    let revision = *h.cp.route_revisions().borrow();
    eventually(
        Duration::from_secs(5),
        "the engine loads the table without the grant",
        || async { (engine.status.routes_revision() >= revision).then_some(()) },
    )
    .await;
    h.publish(&publish_round(2)).await;
    h.wait_for_ids(&canary, &round(2)).await;
    let fraud_ids = h.ids(&fraud_stream).await;
    let second = round(2);
    let (signups, logins) = second.split_at(20);
    assert!(
        signups.iter().all(|id| fraud_ids.contains(id)),
        "signups still flow"
    );
    assert!(
        !logins.iter().any(|id| fraud_ids.contains(id)),
        "revoked logins do not"
    );

    // Expiry needs no new table: the route carries the instant access ends.
    h.cp.clock().advance(Duration::from_secs(2 * 3600));
    h.publish(&publish_round(3)).await;
    h.wait_for_ids(&canary, &round(3)).await;
    let fraud_ids = h.ids(&fraud_stream).await;
    assert!(
        !round(3).iter().any(|id| fraud_ids.contains(id)),
        "nothing reaches fraud after its signup grant {} expired",
        signup_grant.id
    );
    engine.shutdown().await;
}

/// Records queued for a stream that cannot take them are checked again before they are
/// written: a grant revoked meanwhile stops them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_records_are_checked_again_before_writing() {
    let h = Harness::start(Kind::Embedded, "queued", 1)
        .await
        .expect("embedded is always available");
    let growth = h.team("growth").await;
    let fraud = h.team("fraud").await;
    h.event(&growth, "signup").await;
    let grant = h.grant(&growth, "signup", "fraud", None).await;
    let fraud_stream = h.stream(&fraud, "fraud-signals", 1).await;
    h.subscribe(&fraud, "fraud-signals", &["signup"]).await;
    let mut config = h.config("engine-a");
    config.max_stall = Duration::from_secs(60);
    let engine = h.engine(config);

    h.faults.throttle(&fraud_stream, true);
    let queued = ids("queued", 30);
    h.publish(&events("signup", &queued)).await;
    eventually(
        Duration::from_secs(10),
        "the records are queued for fraud",
        || async {
            engine
                .status
                .shards()
                .iter()
                .flat_map(|s| s.targets.iter())
                .any(|t| t.backing_name == fraud_stream && t.owed == queued.len())
                .then_some(())
        },
    )
    .await;
    h.cp.revoke_grant(&growth, &grant.id)
        .await
        .expect("revoked");
    let revision = *h.cp.route_revisions().borrow();
    eventually(
        Duration::from_secs(5),
        "the engine loads the new table",
        || async { (engine.status.routes_revision() >= revision).then_some(()) },
    )
    .await;
    h.faults.throttle(&fraud_stream, false);
    eventually(Duration::from_secs(10), "fraud's queue is gone", || async {
        engine
            .status
            .shards()
            .iter()
            .flat_map(|s| s.targets.iter())
            .all(|t| t.backing_name != fraud_stream)
            .then_some(())
    })
    .await;
    assert!(
        h.ids(&fraud_stream).await.is_empty(),
        "nothing queued before the revocation was written after it"
    );
    engine.shutdown().await;
}

/// A standalone engine follows the route table over the HTTP API (long poll, admin token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_linked_over_http_follows_revocations() {
    let h = Harness::start(Kind::Embedded, "http", 1)
        .await
        .expect("embedded is always available");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(control_plane::http::serve(
        listener,
        control_plane::http::app(h.cp.clone()),
        async move {
            let _ = api_stopped.await;
        },
        Duration::from_secs(1),
    ));
    let client = api::Client::new(&endpoint, Some(h.admin_token.clone())).expect("client");
    let link = Arc::new(Http::new(client));
    assert!(
        link.current().await.is_ok(),
        "the admin token reads the route table"
    );

    let growth = h.team("growth").await;
    let fraud = h.team("fraud").await;
    h.event(&growth, "signup").await;
    let grant = h.grant(&growth, "signup", "fraud", None).await;
    let fraud_stream = h.stream(&fraud, "fraud-signals", 1).await;
    let canary = h.stream(&growth, "growth-own", 1).await;
    let subscription = h.subscribe(&fraud, "fraud-signals", &["signup"]).await;
    h.subscribe(&growth, "growth-own", &["signup"]).await;
    let engine = h.engine_with(h.config("standalone"), link.clone(), link);

    let before = ids("before", 10);
    h.publish(&events("signup", &before)).await;
    h.wait_for_ids(&fraud_stream, &before).await;

    let revoked_at = tokio::time::Instant::now();
    h.cp.revoke_grant(&growth, &grant.id)
        .await
        .expect("revoked");
    let revision = *h.cp.route_revisions().borrow();
    eventually(
        Duration::from_secs(5),
        "the long poll brings the new table",
        || async { (engine.status.routes_revision() >= revision).then_some(()) },
    )
    .await;
    eprintln!(
        "revocation reached the engine over HTTP in {:?}",
        revoked_at.elapsed()
    );
    let after = ids("after", 10);
    h.publish(&events("signup", &after)).await;
    h.wait_for_ids(&canary, &after).await;
    let got = h.ids(&fraud_stream).await;
    assert!(
        !after.iter().any(|id| got.contains(id)),
        "nothing after the revocation"
    );

    // Over HTTP too, a missing stream marks its subscription failed.
    h.backend
        .delete_stream(&fraud_stream)
        .await
        .expect("deleted");
    h.grant(
        &growth,
        "signup",
        "fraud",
        Some(Utc::now() + chrono::Duration::days(1)),
    )
    .await;
    let revision = *h.cp.route_revisions().borrow();
    eventually(
        Duration::from_secs(5),
        "the engine sees the new grant",
        || async { (engine.status.routes_revision() >= revision).then_some(()) },
    )
    .await;
    let more = ids("more", 5);
    h.publish(&events("signup", &more)).await;
    eventually(
        Duration::from_secs(10),
        "the subscription is marked failed",
        || async {
            let s =
                h.cp.get_subscription(&h.admin, &subscription.id)
                    .await
                    .ok()?;
            (s.status == api::SubscriptionStatus::Failed).then_some(())
        },
    )
    .await;
    engine.shutdown().await;
    let _ = stop_api.send(());
}
