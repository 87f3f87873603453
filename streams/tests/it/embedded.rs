//! The story against the embedded store, and what only a local file can show: durability across
//! reopen and `kill -9`, retention trims, resharding in place.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use streams::embedded::EmbeddedBackend;
use streams::{PutRecord, StartPosition, StreamBackend, cmp_sequence};

use crate::{read_all, read_stream, record, spec, story, text};

fn fresh() -> anyhow::Result<(tempfile::TempDir, EmbeddedBackend)> {
    let dir = tempfile::tempdir()?;
    let backend = EmbeddedBackend::open(dir.path().join("streams.redb"))?;
    Ok((dir, backend))
}

macro_rules! story_tests {
    ($($behaviour:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $behaviour() -> anyhow::Result<()> {
            let (_dir, backend) = fresh()?;
            story::$behaviour(&backend).await
        }
    )*};
}

story_tests!(
    lifecycle,
    invalid_spec,
    put_and_read_in_order,
    start_positions,
    several_readers,
    per_entry_outcomes,
    record_too_large,
    deleted_stream,
    wait_for_records,
    put_all_batches,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_reopen_and_sequences_continue() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("streams.redb");
    let before = {
        let backend = EmbeddedBackend::open(&path)?;
        backend.create_stream(&spec("orders", 1, 24)).await?;
        let records: Vec<PutRecord> = (0..10).map(|i| record("k", format!("r{i}"))).collect();
        backend.put_records("orders", &records).await?;
        read_stream(&backend, "orders").await?
    };
    let backend = EmbeddedBackend::open(&path)?;
    assert_eq!(read_stream(&backend, "orders").await?, before);
    let description = backend
        .describe_stream("orders")
        .await?
        .context("stream after reopen")?;
    assert_eq!(description.shard_count, 1);
    let next = backend.put_records("orders", &[record("k", "r10")]).await?;
    let next = next[0]
        .clone()
        .map_err(|failure| anyhow::anyhow!("{failure:?}"))?;
    let last = &before.last().context("records")?.sequence;
    assert_eq!(cmp_sequence(last, &next), std::cmp::Ordering::Less);
    Ok(())
}

const CRASH_DB_VAR: &str = "STREAMS_TEST_CRASH_DB";

/// Runs in a child process of `kill_9_loses_no_committed_record`: appends until killed, printing
/// the last index of every batch whose put returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the writer child process of kill_9_loses_no_committed_record"]
async fn crash_writer() -> anyhow::Result<()> {
    let path = std::env::var(CRASH_DB_VAR).context("run by kill_9_loses_no_committed_record")?;
    let backend = EmbeddedBackend::open(path)?;
    backend.create_stream(&spec("crash", 2, 24)).await?;
    for batch in 0u64.. {
        let records: Vec<PutRecord> = (0..50)
            .map(|i| {
                let index = batch * 50 + i;
                record(&format!("k{}", index % 13), index.to_string())
            })
            .collect();
        let outcome = backend.put_records("crash", &records).await?;
        anyhow::ensure!(outcome.iter().all(Result::is_ok));
        println!("committed {}", batch * 50 + 49);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_committed_record() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("streams.redb");
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "--ignored",
            "--exact",
            "embedded::crash_writer",
            "--nocapture",
        ])
        .env(CRASH_DB_VAR, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut committed = None;
    let mut batches = 0;
    while batches < 40 {
        let line = lines
            .next()
            .context("the writer stopped before being killed")??;
        if let Some(index) = line.strip_prefix("committed ") {
            committed = Some(index.parse::<u64>()?);
            batches += 1;
        }
    }
    // SIGKILL: no destructor, no clean close of the file, possibly mid-commit.
    child.kill()?;
    child.wait()?;
    for line in lines {
        if let Some(index) = line?.strip_prefix("committed ") {
            committed = Some(index.parse::<u64>()?);
        }
    }
    let committed = committed.context("no commit seen")?;

    let backend = EmbeddedBackend::open(&path)?;
    let mut indexes: Vec<u64> = read_stream(&backend, "crash")
        .await?
        .iter()
        .map(|record| text(record).parse())
        .collect::<Result<_, _>>()?;
    indexes.sort_unstable();
    // Every committed record is there once; a put is atomic, so whole batches only.
    assert!(
        indexes.len() as u64 > committed,
        "last committed {committed}, read {} records",
        indexes.len()
    );
    assert_eq!(indexes, (0..indexes.len() as u64).collect::<Vec<_>>());
    assert_eq!(indexes.len() % 50, 0);
    let outcome = backend
        .put_records("crash", &[record("k1", "after")])
        .await?;
    assert!(outcome[0].is_ok(), "the file takes writes after recovery");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_trims_expired_records() -> anyhow::Result<()> {
    let (_dir, backend) = fresh()?;
    backend.create_stream(&spec("events", 1, 24)).await?;
    let shard = backend.list_shards("events").await?.remove(0).id;
    let records: Vec<PutRecord> = (0..30).map(|i| record("k", format!("r{i}"))).collect();
    backend.put_records("events", &records).await?;

    let now = Utc::now();
    assert_eq!(
        backend
            .trim_expired(now + chrono::Duration::hours(23))
            .await?,
        0
    );
    assert_eq!(read_stream(&backend, "events").await?.len(), 30);

    backend.update_stream(&spec("events", 1, 48)).await?;
    assert_eq!(
        backend
            .trim_expired(now + chrono::Duration::hours(25))
            .await?,
        0,
        "retention raised"
    );
    assert_eq!(
        backend
            .trim_expired(now + chrono::Duration::hours(49))
            .await?,
        30
    );
    assert!(read_stream(&backend, "events").await?.is_empty());

    let outcome = backend
        .put_records("events", &[record("k", "fresh")])
        .await?;
    assert_eq!(
        outcome[0].as_deref().ok(),
        Some("31"),
        "numbering goes on after a trim"
    );
    let read = read_all(&backend, "events", &shard, StartPosition::TrimHorizon, 10).await?;
    assert_eq!(read.iter().map(text).collect::<Vec<_>>(), ["fresh"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_keeps_every_record_readable_parents_first() -> anyhow::Result<()> {
    let (_dir, backend) = fresh()?;
    backend.create_stream(&spec("clicks", 2, 24)).await?;
    let key = |i: usize| format!("user-{}", i % 9);
    let first: Vec<PutRecord> = (0..40).map(|i| record(&key(i), i.to_string())).collect();
    backend.put_records("clicks", &first).await?;

    let mut waiting = {
        let shard = backend.list_shards("clicks").await?.remove(0).id;
        let mut reader = backend
            .open_reader("clicks", &shard, StartPosition::Latest)
            .await?;
        assert!(reader.next_batch(100).await?.records.is_empty());
        reader
    };
    let described = backend.update_stream(&spec("clicks", 3, 24)).await?;
    assert_eq!(described.shard_count, 3);
    // The reader of a parent that was just closed learns it has reached the end.
    waiting.wait_for_records(Duration::from_secs(10)).await;
    assert!(waiting.next_batch(100).await?.shard_end);

    let second: Vec<PutRecord> = (40..100).map(|i| record(&key(i), i.to_string())).collect();
    backend.put_records("clicks", &second).await?;

    let shards = backend.list_shards("clicks").await?;
    let parents: Vec<_> = shards.iter().filter(|shard| shard.closed).collect();
    let children: Vec<_> = shards.iter().filter(|shard| !shard.closed).collect();
    assert_eq!((parents.len(), children.len()), (2, 3));
    for child in &children {
        assert!(!child.parents.is_empty());
        assert!(
            child
                .parents
                .iter()
                .all(|p| parents.iter().any(|s| &s.id == p))
        );
    }

    // Parents to their end first, then children: each key's records come out in write order.
    let mut per_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for shard in parents.iter().chain(&children) {
        let mut reader = backend
            .open_reader("clicks", &shard.id, StartPosition::TrimHorizon)
            .await?;
        loop {
            let batch = reader.next_batch(7).await?;
            for record in &batch.records {
                per_key
                    .entry(record.partition_key.clone())
                    .or_default()
                    .push(text(record).parse()?);
            }
            if batch.shard_end || batch.records.is_empty() {
                assert_eq!(batch.shard_end, shard.closed);
                break;
            }
        }
    }
    let mut all: Vec<usize> = per_key.values().flatten().copied().collect();
    for (key, indexes) in &per_key {
        assert!(indexes.is_sorted(), "{key}: {indexes:?}");
    }
    all.sort_unstable();
    assert_eq!(all, (0..100).collect::<Vec<_>>());

    // Once trimmed empty, closed parents leave the listing.
    backend
        .trim_expired(Utc::now() + chrono::Duration::hours(25))
        .await?;
    let after = backend.list_shards("clicks").await?;
    assert_eq!(after.len(), 3);
    assert!(after.iter().all(|shard| !shard.closed));
    Ok(())
}

/// Concurrent puts share commits and every one of them is answered with its own outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_all_land() -> anyhow::Result<()> {
    let (_dir, backend) = fresh()?;
    backend.create_stream(&spec("a", 2, 24)).await?;
    backend.create_stream(&spec("b", 1, 24)).await?;
    let mut tasks = Vec::new();
    for task in 0..16 {
        let backend = backend.clone();
        tasks.push(tokio::spawn(async move {
            let stream = if task % 2 == 0 { "a" } else { "b" };
            for batch in 0..10 {
                let records: Vec<PutRecord> = (0..20)
                    .map(|i| record(&format!("t{task}"), format!("{task}-{batch}-{i}")))
                    .collect();
                let outcome = backend.put_records(stream, &records).await?;
                anyhow::ensure!(outcome.iter().all(Result::is_ok));
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    assert_eq!(read_stream(&backend, "a").await?.len(), 8 * 10 * 20);
    assert_eq!(read_stream(&backend, "b").await?.len(), 8 * 10 * 20);
    Ok(())
}

/// Records are stored in chunks of many records: reads that start or stop inside a chunk, or at
/// its edge, still see every record once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_cross_chunk_boundaries() -> anyhow::Result<()> {
    let (_dir, backend) = fresh()?;
    backend.create_stream(&spec("wide", 1, 24)).await?;
    let shard = backend.list_shards("wide").await?.remove(0).id;
    let mut sequences = Vec::new();
    for batch in 0..3 {
        let records: Vec<PutRecord> = (0..500)
            .map(|i| record("k", format!("{:04}{}", batch * 500 + i, "x".repeat(2000))))
            .collect();
        for outcome in backend.put_records("wide", &records).await? {
            sequences.push(outcome.map_err(|failure| anyhow::anyhow!("{failure:?}"))?);
        }
    }
    let index = |record: &streams::Record| -> anyhow::Result<usize> {
        Ok(text(record).get(..4).context("prefix")?.parse()?)
    };
    for limit in [1, 333, 500, 1000] {
        let read = read_all(&backend, "wide", &shard, StartPosition::TrimHorizon, limit).await?;
        let indexes: Vec<usize> = read.iter().map(index).collect::<Result<_, _>>()?;
        assert_eq!(indexes, (0..1500).collect::<Vec<_>>(), "limit {limit}");
    }
    for after in [0, 254, 255, 256, 499, 500, 1498, 1499] {
        let from = StartPosition::AfterSequence(sequences[after].clone());
        let read = read_all(&backend, "wide", &shard, from, 200).await?;
        let indexes: Vec<usize> = read.iter().map(index).collect::<Result<_, _>>()?;
        assert_eq!(
            indexes,
            (after + 1..1500).collect::<Vec<_>>(),
            "after {after}"
        );
    }
    Ok(())
}
