//! One stream's trouble is its own: throttled, deleted or failing streams do not hold back
//! the others, and get what they missed once they recover.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use api::SubscriptionStatus;
use fanner::TargetMode;
use fanner::checkpoint::Checkpoint;
use shard_runtime::Coordinator;
use streams::kinesis::KinesisBackend;
use streams::{StreamBackend, StreamSpec};

use crate::support::{Harness, Kind, backend_tests, counts, events, eventually, ids, moto_options};

backend_tests!(a_throttled_stream_does_not_hold_back_the_others);

async fn a_throttled_stream_does_not_hold_back_the_others(kind: Kind) {
    let Some(h) = Harness::start(kind, "a_throttled_stream_does_not_hold_back_the_others", 1).await
    else {
        return;
    };
    let growth = h.team("growth").await;
    let fraud = h.team("fraud").await;
    h.event(&growth, "signup").await;
    h.grant(&growth, "signup", "fraud", None).await;
    let slow = h.stream(&fraud, "fraud-signals", 1).await;
    let healthy = h.stream(&growth, "growth-own", 1).await;
    h.subscribe(&fraud, "fraud-signals", &["signup"]).await;
    h.subscribe(&growth, "growth-own", &["signup"]).await;
    let mut config = h.config("engine-a");
    config.max_backlog = 50;
    config.read_batch = 100;
    let engine = h.engine(config);

    h.faults.throttle(&slow, true);
    let all = ids("signup", 500);
    for chunk in all.chunks(100) {
        h.publish(&events("signup", chunk)).await;
    }
    let got = h.wait_for_ids(&healthy, &all).await;
    assert_eq!(
        got.len(),
        all.len(),
        "the healthy stream gets everything once"
    );
    assert!(h.ids(&slow).await.is_empty());

    let lag = eventually(
        Duration::from_secs(10),
        "the throttled stream is reported behind",
        || async {
            engine
                .status
                .shards()
                .into_iter()
                .flat_map(|s| s.targets)
                .find(|t| t.backing_name == slow && t.mode == TargetMode::Behind)
                .and_then(|t| t.lag_records.filter(|&n| n > 0))
        },
    )
    .await;
    eprintln!("throttled stream lags {lag} records");
    let checkpoint = eventually(
        Duration::from_secs(10),
        "the checkpoint moves on without it",
        || async {
            let leases = h.store.leases("fanner").await.ok()?;
            let lease = leases
                .into_iter()
                .find(|l| l.key.starts_with(&h.ges) && !l.key.contains('#'))?;
            let checkpoint = Checkpoint::parse(lease.checkpoint.as_deref()?).ok()?;
            let ges = h.records(&h.ges).await;
            (checkpoint.main.as_deref() == ges.last().map(|r| r.sequence.as_str()))
                .then_some(checkpoint)
        },
    )
    .await;
    assert!(
        checkpoint.behind.contains_key(&slow),
        "the throttled stream keeps its own position: {checkpoint:?}"
    );

    // Recovery while events keep coming: the stream's own reader and the main cursor race to
    // the newest record, and nothing may fall between them.
    h.faults.throttle(&slow, false);
    let later = ids("later", 500);
    for chunk in later.chunks(10) {
        h.publish(&events("signup", chunk)).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut everything = all.clone();
    everything.extend(later.iter().cloned());
    let got = h.wait_for_ids(&slow, &everything).await;
    eprintln!(
        "after recovery the throttled stream got {} records for {}",
        got.len(),
        everything.len()
    );
    let got = h.wait_for_ids(&healthy, &everything).await;
    assert_eq!(
        got.len(),
        everything.len(),
        "the healthy stream still gets everything once"
    );
    eventually(
        Duration::from_secs(10),
        "the recovered stream is attached again",
        || async {
            engine
                .status
                .shards()
                .into_iter()
                .flat_map(|s| s.targets)
                .any(|t| t.backing_name == slow && t.mode == TargetMode::Attached)
                .then_some(())
        },
    )
    .await;
    engine.shutdown().await;
}

backend_tests!(a_deleted_stream_is_marked_failed_and_gets_its_backlog_when_recreated);

async fn a_deleted_stream_is_marked_failed_and_gets_its_backlog_when_recreated(kind: Kind) {
    let Some(h) = Harness::start(kind, "a_deleted_stream_is_marked_failed", 1).await else {
        return;
    };
    let growth = h.team("growth").await;
    let fraud = h.team("fraud").await;
    h.event(&growth, "signup").await;
    h.grant(&growth, "signup", "fraud", None).await;
    let gone = h.stream(&fraud, "fraud-signals", 1).await;
    let healthy = h.stream(&growth, "growth-own", 1).await;
    let subscription = h.subscribe(&fraud, "fraud-signals", &["signup"]).await;
    h.subscribe(&growth, "growth-own", &["signup"]).await;
    let engine = h.engine(h.config("engine-a"));

    let before = ids("before", 20);
    h.publish(&events("signup", &before)).await;
    h.wait_for_ids(&gone, &before).await;

    // Deleted behind the control plane's back.
    h.backend.delete_stream(&gone).await.expect("deleted");
    let during = ids("during", 100);
    h.publish(&events("signup", &during)).await;
    let got = h.wait_for_ids(&healthy, &during).await;
    assert_eq!(got.len(), before.len() + during.len());
    let failed = eventually(
        Duration::from_secs(10),
        "the subscription is marked failed",
        || async {
            let s =
                h.cp.get_subscription(&h.admin, &subscription.id)
                    .await
                    .ok()?;
            (s.status == SubscriptionStatus::Failed).then_some(s)
        },
    )
    .await;
    let reason = failed.status_reason.unwrap_or_default();
    assert!(
        reason.contains("does not exist"),
        "the reason says why: {reason:?}"
    );
    // The subscription is marked failed before the status board shows the new mode.
    eventually(
        Duration::from_secs(10),
        "the stream is shown broken",
        || async {
            engine
                .status
                .shards()
                .iter()
                .flat_map(|s| s.targets.iter())
                .any(|t| t.backing_name == gone && t.mode == TargetMode::Broken)
                .then_some(())
        },
    )
    .await;

    h.backend
        .create_stream(&StreamSpec {
            name: gone.clone(),
            shard_count: 1,
            retention_hours: 24,
            tags: Default::default(),
        })
        .await
        .expect("recreated");
    let got = h.wait_for_ids(&gone, &during).await;
    assert!(
        !before.iter().any(|id| got.contains(id)),
        "the recreated stream gets what it missed, not what its predecessor had"
    );
    eventually(
        Duration::from_secs(10),
        "the subscription is active again",
        || async {
            let s =
                h.cp.get_subscription(&h.admin, &subscription.id)
                    .await
                    .ok()?;
            (s.status == SubscriptionStatus::Active).then_some(())
        },
    )
    .await;
    engine.shutdown().await;
}

/// Entry keys sent per call, flattened into how often each key was sent.
fn sends(calls: &[Vec<String>]) -> HashMap<String, usize> {
    let mut sends = HashMap::new();
    for key in calls.iter().flatten() {
        *sends.entry(key.clone()).or_insert(0) += 1;
    }
    sends
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_put_failures_resend_only_the_failed_entries_embedded() {
    let (h, stream) = Harness::own_signups("partial", 1, 1).await;
    h.faults.fail_key("e-3", 2);
    h.faults.fail_key("e-7", 1);
    let engine = h.engine(h.config("engine-a"));
    let all = ids("e", 10);
    h.publish(&events("signup", &all)).await;
    let got = h.wait_for_ids(&stream, &all).await;
    assert!(
        counts(&got).values().all(|&n| n == 1),
        "nothing written twice: {got:?}"
    );
    let sent = sends(&h.faults.calls(&stream));
    for id in &all {
        let expected = match id.as_str() {
            "e-3" => 3,
            "e-7" => 2,
            _ => 1,
        };
        assert_eq!(sent.get(id), Some(&expected), "{id} sent {expected} times");
    }
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_put_failures_resend_only_the_failed_entries_moto() {
    let faults = testkit::kinesis::PutRecordsFaults::new();
    let interceptor = faults.clone();
    let Some(h) = Harness::with_engine_backend("partial_moto", move |config| {
        let conf = aws_sdk_kinesis::config::Builder::from(config)
            .interceptor(interceptor)
            .build();
        Arc::new(
            KinesisBackend::from_client(aws_sdk_kinesis::Client::from_conf(conf))
                .with_options(moto_options()),
        ) as Arc<dyn StreamBackend>
    })
    .await
    else {
        return;
    };
    let growth = h.team("growth").await;
    h.event(&growth, "signup").await;
    let stream = h.stream(&growth, "growth-own", 1).await;
    h.subscribe(&growth, "growth-own", &["signup"]).await;
    faults.fail("e-3", 2);
    faults.fail("e-7", 1);
    let engine = h.engine(h.config("engine-a"));
    let all = ids("e", 10);
    h.publish(&events("signup", &all)).await;
    let got = h.wait_for_ids(&stream, &all).await;
    assert!(
        counts(&got).values().all(|&n| n == 1),
        "nothing written twice: {got:?}"
    );
    let sent = sends(&faults.calls());
    for id in &all {
        let expected = match id.as_str() {
            "e-3" => 3,
            "e-7" => 2,
            _ => 1,
        };
        assert_eq!(sent.get(id), Some(&expected), "{id} sent {expected} times");
    }
    engine.shutdown().await;
}

backend_tests!(a_stream_catching_up_misses_nothing_while_events_keep_coming);

/// A stream stays behind (one of its records keeps failing) while events keep coming, so its
/// own reader and the main cursor keep racing to the newest record; once the record goes
/// through, the stream has received everything.
async fn a_stream_catching_up_misses_nothing_while_events_keep_coming(kind: Kind) {
    let Some(h) = Harness::start(kind, "catching_up_misses_nothing", 1).await else {
        return;
    };
    let growth = h.team("growth").await;
    h.event(&growth, "signup").await;
    let stream = h.stream(&growth, "growth-own", 1).await;
    h.subscribe(&growth, "growth-own", &["signup"]).await;
    let mut config = h.config("engine-a");
    config.max_stall = Duration::from_millis(100);
    config.read_batch = 7;
    let engine = h.engine(config);

    let all = ids("event", 600);
    h.faults.fail_key(&all[0], u32::MAX);
    for chunk in all.chunks(3) {
        h.publish(&events("signup", chunk)).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    eventually(Duration::from_secs(10), "the stream is behind", || async {
        engine
            .status
            .shards()
            .into_iter()
            .flat_map(|s| s.targets)
            .any(|t| t.backing_name == stream && t.mode == TargetMode::Behind)
            .then_some(())
    })
    .await;
    h.faults.fail_key(&all[0], 0);
    let got = h.wait_for_ids(&stream, &all).await;
    assert!(counts(&got).len() == all.len());
    engine.shutdown().await;
}
