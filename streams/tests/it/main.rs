//! The stream backends against real storage: the embedded store in a temporary directory, and
//! Kinesis on a moto server (`FANNER_IT=1` and `FANNER_MOTO_SERVER`) and on kinesis-local for
//! resharding and enhanced fan-out (`FANNER_KINESIS_LOCAL`).

mod embedded;
mod kinesis;
mod kinesis_local;
mod story;

use std::collections::BTreeMap;

use bytes::Bytes;
use streams::{PutRecord, Record, StartPosition, StreamBackend, StreamSpec};

fn spec(name: &str, shard_count: u32, retention_hours: u32) -> StreamSpec {
    StreamSpec {
        name: name.to_owned(),
        shard_count,
        retention_hours,
        tags: BTreeMap::from([("team".to_owned(), "payments".to_owned())]),
    }
}

fn record(partition_key: &str, data: impl Into<String>) -> PutRecord {
    PutRecord {
        partition_key: partition_key.to_owned(),
        data: Bytes::from(data.into()),
    }
}

fn text(record: &Record) -> String {
    String::from_utf8_lossy(&record.data).into_owned()
}

/// Everything a new reader at `from` gets until the first empty batch (or the shard's end).
async fn read_all(
    backend: &dyn StreamBackend,
    stream: &str,
    shard: &str,
    from: StartPosition,
    limit: usize,
) -> anyhow::Result<Vec<Record>> {
    let mut reader = backend.open_reader(stream, shard, from).await?;
    let mut records = Vec::new();
    loop {
        let batch = reader.next_batch(limit).await?;
        let empty = batch.records.is_empty();
        records.extend(batch.records);
        if empty || batch.shard_end {
            return Ok(records);
        }
    }
}

/// Every record of every shard, from the trim horizon.
async fn read_stream(backend: &dyn StreamBackend, stream: &str) -> anyhow::Result<Vec<Record>> {
    let mut records = Vec::new();
    for shard in backend.list_shards(stream).await? {
        records
            .extend(read_all(backend, stream, &shard.id, StartPosition::TrimHorizon, 1000).await?);
    }
    Ok(records)
}
