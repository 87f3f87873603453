//! One behaviour per function, run against every backend.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use streams::{
    MAX_RECORD_BYTES, PutRecord, StartPosition, StreamBackend, StreamError, cmp_sequence,
};

use crate::{read_all, read_stream, record, spec, text};

/// Create, describe, create again, update in place, delete.
pub async fn lifecycle(backend: &dyn StreamBackend) -> anyhow::Result<()> {
    let name = testkit::unique_name("lifecycle");
    ensure!(backend.describe_stream(&name).await?.is_none());

    let created = backend.create_stream(&spec(&name, 1, 24)).await?;
    assert_eq!(created.name, name);
    assert!(created.active);
    assert_eq!(created.shard_count, 1);
    assert_eq!(created.retention_hours, 24);
    assert!(!created.backing_id.is_empty());
    assert_eq!(backend.describe_stream(&name).await?, Some(created.clone()));

    let again = backend.create_stream(&spec(&name, 1, 24)).await?;
    assert_eq!(again, created, "a repeated create returns the same stream");
    let conflict = backend.create_stream(&spec(&name, 3, 24)).await;
    assert!(
        matches!(conflict, Err(StreamError::AlreadyExists(ref n)) if *n == name),
        "{conflict:?}"
    );

    let updated = backend.update_stream(&spec(&name, 2, 48)).await?;
    assert_eq!(updated.shard_count, 2);
    assert_eq!(updated.retention_hours, 48);
    assert_eq!(updated.backing_id, created.backing_id, "updated in place");
    assert_eq!(backend.describe_stream(&name).await?, Some(updated.clone()));
    let open = backend
        .list_shards(&name)
        .await?
        .into_iter()
        .filter(|shard| !shard.closed)
        .count();
    assert_eq!(open, 2);

    let shorter = backend.update_stream(&spec(&name, 2, 24)).await?;
    assert_eq!(shorter.retention_hours, 24);

    backend.delete_stream(&name).await?;
    assert_eq!(backend.describe_stream(&name).await?, None);
    backend.delete_stream(&name).await?;
    let missing = backend.update_stream(&spec(&name, 1, 24)).await;
    assert!(
        matches!(missing, Err(StreamError::NotFound(_))),
        "{missing:?}"
    );
    Ok(())
}

/// Invalid settings are refused before anything is created.
pub async fn invalid_spec(backend: &dyn StreamBackend) -> anyhow::Result<()> {
    let name = testkit::unique_name("invalid");
    for bad in [spec(&name, 0, 24), spec(&name, 1, 23), spec(&name, 1, 8761)] {
        let result = backend.create_stream(&bad).await;
        assert!(matches!(result, Err(StreamError::Invalid(_))), "{result:?}");
    }
    ensure!(backend.describe_stream(&name).await?.is_none());
    Ok(())
}

/// Records come back once each, in the order written per partition key, at the sequence numbers
/// the put returned, with sequence numbers increasing within a shard.
pub async fn put_and_read_in_order(backend: &dyn StreamBackend) -> anyhow::Result<()> {
    let name = testkit::unique_name("order");
    backend.create_stream(&spec(&name, 2, 24)).await?;
    let records: Vec<PutRecord> = (0..60)
        .map(|i| record(&format!("user-{}", i % 7), format!("event-{i}")))
        .collect();
    let outcome = backend.put_records(&name, &records).await?;
    assert_eq!(outcome.len(), records.len());
    let mut written = BTreeMap::new();
    for (sent, result) in records.iter().zip(&outcome) {
        let sequence = result
            .clone()
            .map_err(|failure| anyhow::anyhow!("{failure:?}"))?;
        written.insert(String::from_utf8_lossy(&sent.data).into_owned(), sequence);
    }

    let shards = backend.list_shards(&name).await?;
    assert_eq!(shards.len(), 2);
    let mut seen = Vec::new();
    for shard in &shards {
        assert!(!shard.closed);
        let read = read_all(backend, &name, &shard.id, StartPosition::TrimHorizon, 1000).await?;
        for pair in read.windows(2) {
            assert_eq!(
                cmp_sequence(&pair[0].sequence, &pair[1].sequence),
                std::cmp::Ordering::Less
            );
        }
        for record in &read {
            assert_eq!(written.get(&text(record)), Some(&record.sequence));
            assert!(record.arrival_time.is_some());
        }
        seen.extend(read);
    }
    assert_eq!(seen.len(), records.len(), "every record once");
    let mut per_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for record in &seen {
        let index: usize = text(record)
            .strip_prefix("event-")
            .context("data")?
            .parse()?;
        assert_eq!(record.partition_key, format!("user-{}", index % 7));
        per_key
            .entry(record.partition_key.clone())
            .or_default()
            .push(index);
    }
    for (key, indexes) in per_key {
        assert!(indexes.is_sorted(), "{key}: {indexes:?}");
    }
    backend.delete_stream(&name).await?;
    Ok(())
}

/// Trim horizon, latest, after and at a sequence number.
pub async fn start_positions(backend: &dyn StreamBackend) -> anyhow::Result<()> {
    let name = testkit::unique_name("positions");
    backend.create_stream(&spec(&name, 1, 24)).await?;
    let shard = backend.list_shards(&name).await?.remove(0).id;
    let first: Vec<PutRecord> = (0..5).map(|i| record("k", format!("r{i}"))).collect();
    let sequences: Vec<String> = backend
        .put_records(&name, &first)
        .await?
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|failure| anyhow::anyhow!("{failure:?}"))?;

    let mut latest = backend
        .open_reader(&name, &shard, StartPosition::Latest)
        .await?;
    let second: Vec<PutRecord> = (5..8).map(|i| record("k", format!("r{i}"))).collect();
    backend.put_records(&name, &second).await?;

    let texts = |records: Vec<streams::Record>| records.iter().map(text).collect::<Vec<_>>();
    let all = read_all(backend, &name, &shard, StartPosition::TrimHorizon, 100).await?;
    assert_eq!(texts(all), ["r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7"]);

    let mut from_latest = Vec::new();
    loop {
        let batch = latest.next_batch(100).await?;
        if batch.records.is_empty() {
            break;
        }
        from_latest.extend(batch.records);
    }
    assert_eq!(texts(from_latest), ["r5", "r6", "r7"]);

    let after = StartPosition::AfterSequence(sequences[1].clone());
    let read = read_all(backend, &name, &shard, after, 100).await?;
    assert_eq!(texts(read), ["r2", "r3", "r4", "r5", "r6", "r7"]);

    let at = StartPosition::AtSequence(sequences[1].clone());
    let read = read_all(backend, &name, &shard, at, 100).await?;
    assert_eq!(texts(read), ["r1", "r2", "r3", "r4", "r5", "r6", "r7"]);
    backend.delete_stream(&name).await?;
    Ok(())
}

/// Readers of one shard do not disturb each other, whatever their batch sizes.
pub async fn several_readers(backend: &dyn StreamBackend) -> anyhow::Result<()> {
    let name = testkit::unique_name("readers");
    backend.create_stream(&spec(&name, 1, 24)).await?;
    let shard = backend.list_shards(&name).await?.remove(0).id;
    let records: Vec<PutRecord> = (0..20).map(|i| record("k", format!("r{i}"))).collect();
    backend.put_records(&name, &records).await?;

    let mut a = backend
        .open_reader(&name, &shard, StartPosition::TrimHorizon)
        .await?;
    let mut b = backend
        .open_reader(&name, &shard, StartPosition::TrimHorizon)
        .await?;
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    loop {
        let batch_a = a.next_batch(3).await?;
        let batch_b = b.next_batch(7).await?;
        let done = batch_a.records.is_empty() && batch_b.records.is_empty();
        got_a.extend(batch_a.records.iter().map(text));
        got_b.extend(batch_b.records.iter().map(text));
        if done {
            break;
        }
    }
    let expected: Vec<String> = (0..20).map(|i| format!("r{i}")).collect();
    assert_eq!(got_a, expected);
    assert_eq!(got_b, expected);
    backend.delete_stream(&name).await?;
    Ok(())
}

/// One outcome per entry, in order; entries of one batch land once each.
pub async fn per_entry_outcomes(backend: &dyn StreamBackend) -> anyhow::Result<()> {
    let name = testkit::unique_name("outcomes");
    backend.create_stream(&spec(&name, 3, 24)).await?;
    let records: Vec<PutRecord> = (0..25)
        .map(|i| record(&format!("device-{i}"), format!("d{i}")))
        .collect();
    let outcome = backend.put_records(&name, &records).await?;
    assert_eq!(outcome.len(), 25);
    let sequences: BTreeSet<(String, String)> = outcome
        .iter()
        .zip(&records)
        .map(|(result, sent)| {
            result
                .clone()
                .map(|sequence| (String::from_utf8_lossy(&sent.data).into_owned(), sequence))
        })
        .collect::<Result<_, _>>()
        .map_err(|failure| anyhow::anyhow!("{failure:?}"))?;
    let read: BTreeSet<(String, String)> = read_stream(backend, &name)
        .await?
        .iter()
        .map(|record| (text(record), record.sequence.clone()))
        .collect();
    assert_eq!(read, sequences);
    assert!(backend.put_records(&name, &[]).await?.is_empty());
    backend.delete_stream(&name).await?;
    Ok(())
}

/// A record over the limit fails the whole call with a message naming it; nothing is written.
pub async fn record_too_large(backend: &dyn StreamBackend) -> anyhow::Result<()> {
    let name = testkit::unique_name("large");
    backend.create_stream(&spec(&name, 1, 24)).await?;
    let records = vec![
        record("k", "small"),
        record("k", "x".repeat(MAX_RECORD_BYTES)),
    ];
    let result = backend.put_records(&name, &records).await;
    let Err(StreamError::Invalid(message)) = result else {
        anyhow::bail!("expected an invalid-request error, got {result:?}");
    };
    assert!(message.contains("record 1 is too large"), "{message}");
    assert!(message.contains(&MAX_RECORD_BYTES.to_string()), "{message}");
    assert!(read_stream(backend, &name).await?.is_empty());

    let just_fits = vec![record("k", "x".repeat(MAX_RECORD_BYTES - 1))];
    assert!(backend.put_records(&name, &just_fits).await?[0].is_ok());
    backend.delete_stream(&name).await?;
    Ok(())
}

/// Reads, writes and listings of a deleted stream fail with `NotFound`.
pub async fn deleted_stream(backend: &dyn StreamBackend) -> anyhow::Result<()> {
    let name = testkit::unique_name("deleted");
    backend.create_stream(&spec(&name, 1, 24)).await?;
    let shard = backend.list_shards(&name).await?.remove(0).id;
    backend.put_records(&name, &[record("k", "v")]).await?;
    let mut reader = backend
        .open_reader(&name, &shard, StartPosition::TrimHorizon)
        .await?;
    backend.delete_stream(&name).await?;

    let read = reader.next_batch(10).await;
    assert!(
        matches!(read, Err(StreamError::NotFound(ref n)) if *n == name),
        "{read:?}"
    );
    let open = backend
        .open_reader(&name, &shard, StartPosition::TrimHorizon)
        .await;
    assert!(
        matches!(open, Err(StreamError::NotFound(_))),
        "{:?}",
        open.err()
    );
    let put = backend.put_records(&name, &[record("k", "v")]).await;
    assert!(matches!(put, Err(StreamError::NotFound(_))), "{put:?}");
    let list = backend.list_shards(&name).await;
    assert!(matches!(list, Err(StreamError::NotFound(_))), "{list:?}");

    let missing_shard = {
        backend.create_stream(&spec(&name, 1, 24)).await?;
        let result = backend
            .open_reader(&name, "shardId-999999999999", StartPosition::TrimHorizon)
            .await;
        backend.delete_stream(&name).await?;
        result
    };
    assert!(
        matches!(missing_shard, Err(StreamError::ShardNotFound { .. })),
        "{:?}",
        missing_shard.err()
    );
    Ok(())
}

/// A reader waiting on an empty shard gets a record written after it started waiting.
pub async fn wait_for_records(backend: &dyn StreamBackend) -> anyhow::Result<()> {
    let name = testkit::unique_name("wait");
    backend.create_stream(&spec(&name, 1, 24)).await?;
    let shard = backend.list_shards(&name).await?.remove(0).id;
    let mut reader = backend
        .open_reader(&name, &shard, StartPosition::TrimHorizon)
        .await?;
    assert!(reader.next_batch(10).await?.records.is_empty());

    let max_wait = Duration::from_secs(20);
    let started = Instant::now();
    let (waited, put) = tokio::join!(reader.wait_for_records(max_wait), async {
        // Lets the reader start waiting first: the append must wake it, not precede it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        backend.put_records(&name, &[record("k", "late")]).await
    });
    let () = waited;
    put?;
    assert!(
        started.elapsed() < max_wait,
        "woken by the append, not the timeout"
    );
    let mut got = Vec::new();
    // A polling backend may need one more poll before the record shows.
    for _ in 0..5 {
        got.extend(reader.next_batch(10).await?.records);
        if !got.is_empty() {
            break;
        }
        reader.wait_for_records(Duration::from_secs(2)).await;
    }
    assert_eq!(got.iter().map(text).collect::<Vec<_>>(), ["late"]);
    backend.delete_stream(&name).await?;
    Ok(())
}

/// `put_all` splits a large input into calls within the limits and writes every record once.
pub async fn put_all_batches(backend: &dyn StreamBackend) -> anyhow::Result<()> {
    let name = testkit::unique_name("putall");
    backend.create_stream(&spec(&name, 2, 24)).await?;
    let records: Vec<PutRecord> = (0..1203)
        .map(|i| record(&format!("k{}", i % 11), format!("{i}")))
        .collect();
    let outcome = streams::put_all(backend, &name, &records, &Default::default()).await?;
    assert!(
        outcome.all_written(),
        "{:?}",
        outcome.failed().collect::<Vec<_>>()
    );
    assert_eq!(outcome.outcomes.len(), 1203);
    assert_eq!(outcome.retried, 0);
    let mut read: Vec<usize> = read_stream(backend, &name)
        .await?
        .iter()
        .map(|record| text(record).parse())
        .collect::<Result<_, _>>()?;
    read.sort_unstable();
    assert_eq!(read, (0..1203).collect::<Vec<_>>());
    backend.delete_stream(&name).await?;
    Ok(())
}
