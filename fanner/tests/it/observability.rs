//! What an operator sees: the counters and gauges at `/metrics` (the process-wide Prometheus
//! recorder the control plane serves), labelled by subscription and stream.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use streams::PutRecord;

use crate::support::{Harness, Kind, events, eventually, ids};

/// The value of the sample of `name` whose labels include every one of `labels`.
fn sample(rendered: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    rendered
        .lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter(|line| {
            labels
                .iter()
                .all(|(key, value)| line.contains(&format!("{key}=\"{value}\"")))
        })
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_is_counted_per_subscription() {
    let metrics = control_plane::http::metrics_handle();
    let h = Harness::start(Kind::Embedded, "metrics", 1)
        .await
        .expect("embedded is always available");
    let growth = h.team("growth").await;
    let fraud = h.team("fraud").await;
    h.event(&growth, "signup").await;
    h.grant(
        &growth,
        "signup",
        "fraud",
        Some(h.cp.now() + chrono::Duration::hours(1)),
    )
    .await;
    let fraud_stream = h.stream(&fraud, "fraud-signals", 1).await;
    let canary = h.stream(&growth, "growth-own", 1).await;
    let subscription = h.subscribe(&fraud, "fraud-signals", &["signup"]).await;
    let own = h.subscribe(&growth, "growth-own", &["signup"]).await;
    // One of the two copies of this record (one per stream) fails once.
    h.faults.fail_key("first-3", 1);
    let engine = h.engine(h.config("engine-a"));

    let first = ids("first", 10);
    h.publish(&events("signup", &first)).await;
    h.wait_for_ids(&fraud_stream, &first).await;
    h.cp.clock().advance(Duration::from_secs(2 * 3600));
    let second = ids("second", 4);
    h.publish(&events("signup", &second)).await;
    h.put_raw(vec![PutRecord {
        partition_key: "k".to_owned(),
        data: Bytes::from_static(b"garbage"),
    }])
    .await;
    h.wait_for_ids(&canary, &second).await;

    let of = |name: &str, subscription: &str| {
        sample(&metrics.render(), name, &[("subscription", subscription)])
    };
    eventually(
        Duration::from_secs(10),
        "the counters are recorded",
        || async {
            let retried = of("fanner_engine_retried_records_total", &subscription.id)
                .unwrap_or(0.0)
                + of("fanner_engine_retried_records_total", &own.id).unwrap_or(0.0);
            (of("fanner_engine_delivered_records_total", &subscription.id) == Some(10.0)
                && of("fanner_engine_delivered_records_total", &own.id) == Some(14.0)
                && of("fanner_engine_denied_records_total", &subscription.id) == Some(4.0)
                && retried == 1.0)
                .then_some(())
        },
    )
    .await;
    assert!(
        metrics
            .render()
            .lines()
            .any(|l| l.contains(&subscription.id) && l.contains("stream=\"fraud-signals\"")),
        "counters name the stream"
    );
    let rendered = metrics.render();
    assert!(
        sample(
            &rendered,
            "fanner_engine_dead_letter_records_total",
            &[("reason", "not_an_envelope")]
        )
        .is_some_and(|n| n >= 1.0)
    );
    let shard = format!("{}/shardId-000000000000", h.ges);
    let lag = eventually(Duration::from_secs(10), "lag is reported", || async {
        sample(
            &metrics.render(),
            "fanner_engine_target_lag_records",
            &[("shard", &shard), ("stream", "fraud-signals")],
        )
    })
    .await;
    assert_eq!(lag, 0.0, "a stream that received everything lags nothing");
    for name in [
        "fanner_engine_routes_revision",
        "fanner_engine_read_batch_records",
        "fanner_engine_put_batch_records",
        "fanner_engine_delivery_latency_seconds",
        "fanner_engine_ges_records_total",
        "fanner_shards_held{group=\"fanner\"}",
    ] {
        assert!(
            rendered.lines().any(|line| line.starts_with(name)),
            "{name} is exported"
        );
    }
    engine.shutdown().await;
}

/// Every catalog event the main cursors read is counted by name, delivered or not (a producer
/// writing straight to the GES is seen as well as one publishing through the API); records that
/// are not catalog events are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_board_counts_every_catalog_event_read() {
    let (h, stream) = Harness::own_signups("seen", 2, 1).await;
    let growth = h.team("growth").await;
    h.event(&growth, "page_viewed").await;
    let engine = h.engine(h.config("engine-a"));
    let delivered = ids("signup", 30);
    h.publish(&events("signup", &delivered)).await;
    h.publish(&events("page_viewed", &ids("view", 12))).await;
    h.put_raw(vec![PutRecord {
        partition_key: "k".to_owned(),
        data: Bytes::from_static(b"not an envelope"),
    }])
    .await;
    h.wait_for_ids(&stream, &delivered).await;
    let mut counted: BTreeMap<String, u64> = BTreeMap::new();
    eventually(Duration::from_secs(10), "both events are counted", || {
        for seen in engine.status.take_events() {
            assert!(seen.last_arrival.is_some(), "{seen:?}");
            *counted.entry(seen.event).or_default() += seen.count;
        }
        let done = counted.get("page_viewed") == Some(&12);
        async move { done.then_some(()) }
    })
    .await;
    assert_eq!(
        counted,
        BTreeMap::from([("page_viewed".to_owned(), 12), ("signup".to_owned(), 30)]),
        "unrouted events count, bad records do not"
    );
    assert!(engine.status.take_events().is_empty(), "taken once");
    let delivered = engine.status.take_delivered();
    assert_eq!(
        delivered
            .iter()
            .find(|(name, _)| *name == stream)
            .map(|(_, n)| *n),
        Some(30),
        "every signup written to the stream once: {delivered:?}"
    );
    engine.shutdown().await;
}
