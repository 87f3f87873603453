//! Enhanced fan-out and resharding on kinesis-local (moto has neither): `FANNER_IT=1` and
//! `FANNER_KINESIS_LOCAL`.

use std::time::Duration;

use streams::kinesis::{KinesisBackend, KinesisOptions};
use streams::{Record, ShardReader, StartPosition, StreamBackend};

use crate::{record, spec, text};

/// kinesis-local's state changes are made quick by the test helper; its calls take milliseconds.
fn options() -> KinesisOptions {
    KinesisOptions {
        settle_timeout: Duration::from_secs(60),
        min_poll_gap: Duration::from_millis(20),
        idle_poll: Duration::from_millis(100),
        // Subscriptions renewed often, so reading across a renewal is part of every test.
        resubscribe_after: Duration::from_secs(1),
        ..KinesisOptions::default()
    }
}

async fn put(
    backend: &dyn StreamBackend,
    stream: &str,
    from: usize,
    to: usize,
) -> anyhow::Result<()> {
    let records: Vec<_> = (from..to).map(|i| record("key", i.to_string())).collect();
    for outcome in backend.put_records(stream, &records).await? {
        outcome.map_err(|failure| anyhow::anyhow!("{failure:?}"))?;
    }
    Ok(())
}

/// Reads until `want` records arrived or the shard ended; every batch's end flag in order.
async fn read_until(
    reader: &mut dyn ShardReader,
    want: usize,
) -> anyhow::Result<(Vec<Record>, bool)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut records = Vec::new();
    loop {
        let batch = reader.next_batch(7).await?;
        records.extend(batch.records);
        if batch.shard_end || records.len() >= want {
            return Ok((records, batch.shard_end));
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{} of {want} records after a minute",
            records.len()
        );
        reader.wait_for_records(Duration::from_millis(500)).await;
    }
}

fn texts(records: &[Record]) -> Vec<String> {
    records.iter().map(text).collect()
}

fn numbers(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| i.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enhanced_fan_out_reads_in_order_across_renewals_to_the_end_of_a_split_shard()
-> anyhow::Result<()> {
    let Some(server) = testkit::kinesis_local::shared("kinesis_local::enhanced_fan_out") else {
        return Ok(());
    };
    let config = server.sdk_config().await;
    let backend = KinesisBackend::new(&config).with_options(options());
    let client = backend.client().clone();
    let name = testkit::unique_name("efo");
    backend.create_stream(&spec(&name, 1, 24)).await?;
    let parent = backend.list_shards(&name).await?.remove(0).id;
    put(&backend, &name, 0, 30).await?;

    let engine = backend.with_enhanced_fan_out("engine");
    let mut reader = engine
        .open_reader(&name, &parent, StartPosition::TrimHorizon)
        .await?;
    let (first, ended) = read_until(reader.as_mut(), 30).await?;
    assert_eq!(texts(&first), numbers(0..30));
    assert!(!ended);
    // Past a renewal: the next subscription goes on after the last record handed over.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    put(&backend, &name, 30, 60).await?;
    let (second, _) = read_until(reader.as_mut(), 30).await?;
    assert_eq!(
        texts(&second),
        numbers(30..60),
        "nothing lost, nothing twice"
    );

    testkit::kinesis_local::split_shard(&client, &name, &parent).await;
    put(&backend, &name, 60, 80).await?;
    let (rest, ended) = read_until(reader.as_mut(), usize::MAX).await?;
    assert!(ended, "a split parent read by subscription reports its end");
    assert!(
        rest.is_empty(),
        "records after the split go to the children: {rest:?}"
    );

    // Another process of the same role registers the same consumer again (idempotent) and reads
    // the children: every record written after the split, once.
    let other = KinesisBackend::new(&config)
        .with_options(options())
        .with_enhanced_fan_out("engine");
    let shards = other.list_shards(&name).await?;
    let children: Vec<_> = shards
        .iter()
        .filter(|shard| shard.parents.contains(&parent))
        .collect();
    assert_eq!(children.len(), 2, "{shards:?}");
    let mut readers = Vec::new();
    for child in children {
        readers.push(
            other
                .open_reader(&name, &child.id, StartPosition::TrimHorizon)
                .await?,
        );
    }
    // Every record written after the split has the same key: one child holds all 20, in order.
    let mut after_split = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while after_split.len() < 20 {
        anyhow::ensure!(std::time::Instant::now() < deadline, "{after_split:?}");
        for reader in &mut readers {
            after_split.extend(reader.next_batch(100).await?.records);
        }
        // Subscriptions push records as they come; give them a moment between rounds.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(texts(&after_split), numbers(60..80));

    // A reader that starts after a sequence number goes on from just there (subscribing once
    // the first reader, and with it its claim on the shard, is gone).
    drop(reader);
    let mut from_middle = engine
        .open_reader(
            &name,
            &parent,
            StartPosition::AfterSequence(first[9].sequence.clone()),
        )
        .await?;
    let (tail, ended) = read_until(from_middle.as_mut(), usize::MAX).await?;
    assert!(ended);
    assert_eq!(texts(&tail), numbers(10..60));
    backend.delete_stream(&name).await?;
    Ok(())
}

/// `update_stream` reshards with `UpdateShardCount`; a polling reader of a parent gets every
/// record written before, then the shard's end, and the children name their parents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_reader_reaches_the_end_of_a_shard_closed_by_update_shard_count()
-> anyhow::Result<()> {
    let Some(server) = testkit::kinesis_local::shared("kinesis_local::update_shard_count") else {
        return Ok(());
    };
    let backend = KinesisBackend::new(&server.sdk_config().await).with_options(options());
    let name = testkit::unique_name("scale");
    backend.create_stream(&spec(&name, 1, 24)).await?;
    let parent = backend.list_shards(&name).await?.remove(0).id;
    put(&backend, &name, 0, 20).await?;
    let mut reader = backend
        .open_reader(&name, &parent, StartPosition::TrimHorizon)
        .await?;

    let scaled = backend.update_stream(&spec(&name, 2, 24)).await?;
    assert_eq!(scaled.shard_count, 2);
    put(&backend, &name, 20, 30).await?;
    let (records, ended) = read_until(reader.as_mut(), usize::MAX).await?;
    assert!(ended, "the parent reports its end");
    assert_eq!(texts(&records), numbers(0..20));
    let shards = backend.list_shards(&name).await?;
    let children: Vec<_> = shards.iter().filter(|shard| !shard.closed).collect();
    assert_eq!(children.len(), 2, "{shards:?}");
    assert!(
        children.iter().all(|child| child.parents.contains(&parent)),
        "{shards:?}"
    );
    backend.delete_stream(&name).await?;
    Ok(())
}
