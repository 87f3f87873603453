//! Crashes, restarts, shutdowns and several engines on one store: at least once, never twice by
//! design.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use fanner::checkpoint::Checkpoint;
use shard_runtime::Coordinator;
use streams::StartPosition;

use crate::support::{Harness, Kind, backend_tests, counts, events, eventually, ids};

/// GES records per shard whose sequence is at or before each shard's checkpointed main cursor.
async fn covered_by_checkpoints(h: &Harness) -> usize {
    let leases = h.store.leases("fanner").await.expect("leases");
    let mut covered = 0;
    for shard in h.backend.list_shards(&h.ges).await.expect("shards") {
        let key = format!("{}/{}", h.ges, shard.id);
        let Some(main) = leases
            .iter()
            .find(|l| l.key == key)
            .and_then(|l| l.checkpoint.as_deref())
            .and_then(|c| Checkpoint::parse(c).ok())
            .and_then(|c| c.main)
        else {
            continue;
        };
        let mut reader = h
            .backend
            .open_reader(&h.ges, &shard.id, StartPosition::TrimHorizon)
            .await
            .expect("reader");
        loop {
            let batch = reader.next_batch(10_000).await.expect("read");
            if batch.records.is_empty() {
                break;
            }
            covered += batch
                .records
                .iter()
                .filter(|r| streams::cmp_sequence(&r.sequence, &main).is_le())
                .count();
        }
    }
    covered
}

/// The number of records on `stream` once it stops changing (a write sent before a crash may
/// still land).
async fn settled_count(h: &Harness, stream: &str) -> usize {
    let mut last = h.records(stream).await.len();
    for _ in 0..50 {
        // Polling: there is no event for "a write that was already sent has landed".
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = h.records(stream).await.len();
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("{stream} kept changing after the engine was killed");
}

backend_tests!(a_killed_engine_loses_nothing);

async fn a_killed_engine_loses_nothing(kind: Kind) {
    let Some(h) = Harness::start(kind, "a_killed_engine_loses_nothing", 2).await else {
        return;
    };
    let growth = h.team("growth").await;
    h.event(&growth, "signup").await;
    let stream = h.stream(&growth, "growth-own", 1).await;
    h.subscribe(&growth, "growth-own", &["signup"]).await;
    let mut config = h.config("engine-a");
    config.read_batch = 50;
    // Slow writes, so the kill lands while batches are being written.
    h.faults.delay_puts(Some(Duration::from_millis(20)));
    let engine = h.engine(config.clone());

    // Events keep coming before, during and after the crash.
    let all = ids("event", 1000);
    let publisher = async {
        for chunk in all.chunks(20) {
            h.publish(&events("signup", chunk)).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let crash_and_restart = async {
        eventually(
            Duration::from_secs(30),
            "part of the events are delivered",
            || async { (h.records(&stream).await.len() >= 200).then_some(()) },
        )
        .await;
        engine.kill().await;
        let delivered = settled_count(&h, &stream).await;
        let covered = covered_by_checkpoints(&h).await;
        assert!(
            covered <= delivered,
            "a checkpoint never passes an undelivered record"
        );
        h.faults.delay_puts(None);
        // The same owner takes its leases back at once (the crashed holder is fenced off).
        (h.engine(config), delivered, covered)
    };
    let ((), (engine, delivered, covered)) = tokio::join!(publisher, crash_and_restart);
    let got = h.wait_for_ids(&stream, &all).await;
    let duplicates = got.len() - all.len();
    eprintln!(
        "killed after {delivered} deliveries, {covered} checkpointed: {duplicates} duplicates"
    );
    assert!(delivered < all.len(), "the crash happened mid-stream");
    assert!(
        duplicates <= delivered - covered,
        "only records delivered after the last checkpoint are delivered again \
         ({duplicates} duplicates, {} delivered after the checkpoint)",
        delivered - covered
    );
    assert!(
        counts(&got).keys().all(|id| all.iter().any(|a| a == id)),
        "nothing unexpected"
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_drains_and_hands_over_at_once() {
    let (h, stream) = Harness::own_signups("graceful", 2, 1).await;
    let mut config = h.config("engine-a");
    // Long leases: the second engine only gets the shards this quickly if they were released.
    config.lease_ttl = Duration::from_secs(60);
    let a = h.engine(config.clone());

    let first = ids("first", 300);
    h.publish(&events("signup", &first)).await;
    h.wait_for_ids(&stream, &first).await;
    a.shutdown().await;

    let leases = h.store.leases("fanner").await.expect("leases");
    let shard_leases: Vec<_> = leases.iter().filter(|l| !l.key.contains('#')).collect();
    assert_eq!(shard_leases.len(), 2);
    for lease in &shard_leases {
        assert!(lease.expires_at <= Utc::now(), "{} was released", lease.key);
        let checkpoint =
            Checkpoint::parse(lease.checkpoint.as_deref().expect("checkpointed")).expect("valid");
        assert!(
            checkpoint.behind.is_empty(),
            "everything was drained: {checkpoint:?}"
        );
    }

    config.owner = "engine-b".to_owned();
    let b = h.engine(config);
    eventually(
        Duration::from_secs(5),
        "engine b takes both released shards",
        || async { (b.shards().len() == 2).then_some(()) },
    )
    .await;
    let second = ids("second", 100);
    h.publish(&events("signup", &second)).await;
    let mut all = first.clone();
    all.extend(second.iter().cloned());
    let got = h.wait_for_ids(&stream, &all).await;
    assert_eq!(
        got.len(),
        all.len(),
        "a drained handover delivers nothing twice"
    );
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_share_shards_and_one_takes_over_when_the_other_dies() {
    let (h, stream) = Harness::own_signups("two", 4, 2).await;

    let a = h.engine(h.config("engine-a"));
    eventually(
        Duration::from_secs(10),
        "engine a takes every shard",
        || async { (a.shards().len() == 4).then_some(()) },
    )
    .await;
    let b = h.engine(h.config("engine-b"));
    eventually(
        Duration::from_secs(15),
        "the engines share the shards",
        || async { (a.shards().len() == 2 && b.shards().len() == 2).then_some(()) },
    )
    .await;
    let mut held: Vec<String> = a.shards();
    held.extend(b.shards());
    held.sort();
    held.dedup();
    assert_eq!(held.len(), 4, "each shard has one holder");

    let first = ids("first", 400);
    let keyed = first
        .iter()
        .enumerate()
        .map(|(n, id)| ("signup", id.clone(), format!("user-{}", n % 37)));
    h.publish_keyed(keyed).await;
    let got = h.wait_for_ids(&stream, &first).await;
    assert!(
        counts(&got).values().all(|&n| n == 1),
        "two engines deliver nothing twice"
    );

    let died = tokio::time::Instant::now();
    a.kill().await;
    eventually(
        Duration::from_secs(10),
        "engine b takes over the dead engine's shards",
        || async { (b.shards().len() == 4).then_some(()) },
    )
    .await;
    eprintln!("takeover after {:?} (lease ttl 1.5 s)", died.elapsed());
    let second = ids("second", 400);
    h.publish(&events("signup", &second)).await;
    let mut all = first.clone();
    all.extend(second.iter().cloned());
    let got = h.wait_for_ids(&stream, &all).await;
    let per_id: HashMap<&str, usize> = counts(&got);
    assert!(all.iter().all(|id| per_id.get(id.as_str()) >= Some(&1)));
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_written_by_another_version_is_refused_not_replayed() {
    let (h, stream) = Harness::own_signups("refused", 1, 1).await;
    let a = h.engine(h.config("engine-a"));
    let first = ids("first", 200);
    h.publish(&events("signup", &first)).await;
    h.wait_for_ids(&stream, &first).await;
    a.shutdown().await;

    // A newer release wrote this shard's checkpoint in a format this one cannot read.
    let key = h
        .store
        .leases("fanner")
        .await
        .expect("leases")
        .into_iter()
        .find(|l| !l.key.contains('#'))
        .expect("the shard's lease")
        .key;
    let lease = h
        .store
        .try_acquire("fanner", &key, "a-newer-release", Duration::from_millis(1))
        .await
        .expect("acquire")
        .expect("released, so free");
    h.store
        .checkpoint(&lease, r#"{"v":2,"main":"7","cursors":{}}"#)
        .await
        .expect("checkpoint");
    tokio::time::sleep(Duration::from_millis(10)).await;

    let b = h.engine(h.config("engine-b"));
    eventually(
        Duration::from_secs(10),
        "the shard is reported refused",
        || async {
            b.runtime
                .snapshot()
                .refused
                .contains_key(&key)
                .then_some(())
        },
    )
    .await;
    let second = ids("second", 50);
    h.publish(&events("signup", &second)).await;
    // Give a (wrong) replay time to happen.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(b.shards().is_empty(), "a refused shard is not read");
    let got = h.ids(&stream).await;
    assert_eq!(
        got.len(),
        first.len(),
        "nothing replayed, nothing read past the unreadable checkpoint"
    );
    let reason = &b.runtime.snapshot().refused[&key];
    assert!(reason.contains("format 2"), "{reason}");
    b.shutdown().await;
}
