//! Append and read throughput of the backends, printed as records/s and MB/s.
//!
//! `cargo bench -p streams --bench throughput` measures the embedded store; with
//! `FANNER_MOTO_SERVER` set it also measures Kinesis `PutRecords`/`GetRecords` on moto (kept to
//! a few thousand records: moto slows down as a shard grows).
//! `STREAMS_BENCH_RECORDS` changes the embedded record count (default 200 000).

use std::time::{Duration, Instant};

use bytes::Bytes;
use streams::embedded::EmbeddedBackend;
use streams::kinesis::{KinesisBackend, KinesisOptions};
use streams::{PutRecord, StartPosition, StreamBackend, StreamSpec};

const RECORD_BYTES: usize = 1024;
const BATCH: usize = 500;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let records: usize = std::env::var("STREAMS_BENCH_RECORDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(200_000);
    let dir = tempfile::tempdir()?;
    let backend = EmbeddedBackend::open(dir.path().join("bench.redb"))?;
    println!("embedded: {records} records of {RECORD_BYTES} B in batches of {BATCH}");

    backend.create_stream(&spec("sequential", 4)).await?;
    let elapsed = append(&backend, "sequential", records, 1).await?;
    report("embedded append, 1 writer", records, elapsed);

    backend.create_stream(&spec("concurrent", 4)).await?;
    let elapsed = append(&backend, "concurrent", records, 4).await?;
    report("embedded append, 4 writers", records, elapsed);

    let (read, elapsed) = read_everything(&backend, "sequential", 1000).await?;
    report("embedded read, 1 reader per shard", read, elapsed);

    match std::env::var_os("FANNER_MOTO_SERVER") {
        None => println!("moto: skipped (set FANNER_MOTO_SERVER to measure Kinesis on moto)"),
        Some(_) => moto().await?,
    }
    Ok(())
}

async fn moto() -> anyhow::Result<()> {
    let server = testkit::moto::MotoServer::start()?;
    let backend = KinesisBackend::new(&server.sdk_config().await).with_options(KinesisOptions {
        min_poll_gap: Duration::ZERO,
        ..KinesisOptions::default()
    });
    let records = 10_000;
    println!("moto: {records} records of {RECORD_BYTES} B in batches of {BATCH}");
    let name = testkit::unique_name("bench");
    backend.create_stream(&spec(&name, 2)).await?;
    let elapsed = append(&backend, &name, records, 1).await?;
    report("moto PutRecords", records, elapsed);
    let (read, elapsed) = read_everything(&backend, &name, 1000).await?;
    report("moto GetRecords", read, elapsed);
    backend.delete_stream(&name).await?;
    Ok(())
}

fn spec(name: &str, shard_count: u32) -> StreamSpec {
    StreamSpec {
        name: name.to_owned(),
        shard_count,
        retention_hours: 24,
        tags: Default::default(),
    }
}

/// Appends `total` records from `writers` concurrent tasks, each putting whole batches.
async fn append<B: StreamBackend + Clone>(
    backend: &B,
    stream: &str,
    total: usize,
    writers: usize,
) -> anyhow::Result<Duration> {
    let payload = Bytes::from(vec![b'x'; RECORD_BYTES]);
    let batches = total / BATCH;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let backend = backend.clone();
        let stream = stream.to_owned();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            for batch in (writer..batches).step_by(writers) {
                let records: Vec<PutRecord> = (0..BATCH)
                    .map(|i| PutRecord {
                        partition_key: format!("key-{}", (batch * BATCH + i) % 1000),
                        data: payload.clone(),
                    })
                    .collect();
                let outcome = backend.put_records(&stream, &records).await?;
                anyhow::ensure!(outcome.iter().all(Result::is_ok), "a record failed");
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed())
}

/// Reads every shard from the trim horizon, all shards at once; returns the record count.
async fn read_everything<B: StreamBackend + Clone>(
    backend: &B,
    stream: &str,
    limit: usize,
) -> anyhow::Result<(usize, Duration)> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for shard in backend.list_shards(stream).await? {
        let mut reader = backend
            .open_reader(stream, &shard.id, StartPosition::TrimHorizon)
            .await?;
        tasks.push(tokio::spawn(async move {
            let mut count = 0;
            loop {
                let batch = reader.next_batch(limit).await?;
                if batch.records.is_empty() {
                    return anyhow::Ok(count);
                }
                count += batch.records.len();
            }
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok((total, started.elapsed()))
}

fn report(what: &str, records: usize, elapsed: Duration) {
    let seconds = elapsed.as_secs_f64();
    let per_second = records as f64 / seconds;
    let megabytes = per_second * RECORD_BYTES as f64 / 1_000_000.0;
    println!(
        "{what:<36} {records:>8} records in {seconds:>7.2} s: {per_second:>10.0} records/s, \
         {megabytes:>7.1} MB/s"
    );
}
