//! Persister figures, printed (no asserts):
//!
//! 1. Throughput on one core: raw envelope bytes per second through decode → partition →
//!    encode → local file sink, on one thread, for each format and gzip level. "Per
//!    CPU-second" divides by the thread's CPU time (the file writes' fsync waits are not CPU,
//!    and the persister overlaps them, several writes in flight per shard); "wall" includes
//!    waiting for each write in turn and for other work on the machine.
//! 2. Lake freshness at default settings on the embedded backend: the time from publishing an
//!    event until an object holding it is visible in the lake (p50, p99, max).
//!
//! `cargo bench -p persister` (add `-- throughput` or `-- freshness` for one part;
//! `FANNER_BENCH_ENVELOPES` sets the throughput input, 200,000 envelopes by default, and
//! `FANNER_BENCH_CASE=parquet` picks the cases whose label contains it).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use control_plane::Store;
use persister::encode::{Encoding, encode_envelopes};
use persister::{Config, LocalFsSink, ObjectFormat, ObjectSink, ParquetCompression, Persister};
use proto::Message;
use streams::embedded::EmbeddedBackend;
use streams::{PutRecord, StreamBackend, StreamSpec};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A realistic envelope: ~0.9 KB, a JSON payload with a dozen fields.
fn envelope(i: usize, names: &[String]) -> proto::Envelope {
    let now = Utc::now();
    let payload = format!(
        r#"{{"order_id":"ord-{i:010}","customer_id":"cus-{:08}","currency":"EUR","total_cents":{},"items":[{{"sku":"sku-{:05}","qty":{},"price_cents":{}}},{{"sku":"sku-{:05}","qty":1,"price_cents":{}}}],"channel":"web","coupon":null,"shipping":{{"country":"DE","city":"Berlin","postcode":"10{:03}"}},"created_at":"{}","notes":"customer asked for a gift wrap and delivery after six in the evening"}}"#,
        i % 100_000,
        i % 50_000,
        i % 9973,
        1 + i % 4,
        i % 2999,
        i % 7919,
        i % 1511,
        i % 1000,
        now.to_rfc3339()
    );
    proto::Envelope {
        event_id: format!("0b6f3c2e-9f6a-4a51-8d1e-{i:012}"),
        event_name: names[i % names.len()].clone(),
        event_time: Some(proto::Timestamp {
            seconds: now.timestamp() - (i % 7200) as i64,
            nanos: (i % 1_000_000_000) as i32,
        }),
        ingest_time: Some(proto::Timestamp {
            seconds: now.timestamp(),
            nanos: 0,
        }),
        producer: "svc:checkout".into(),
        trace_id: format!("4bf92f3577b34da6a3ce929d0e0e{i:04}"),
        user_id: format!("user-{}", i % 100_000),
        device_id: String::new(),
        attributes: [
            ("region".to_owned(), "eu-central-1".to_owned()),
            ("schema".to_owned(), "v3".to_owned()),
        ]
        .into(),
        content_type: "application/json".into(),
        payload: payload.into_bytes(),
        history_id: Default::default(),
    }
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("commerce.event_{i:02}")).collect()
}

/// CPU time this thread has used, from `/proc/thread-self/schedstat` (Linux): the figure that
/// other work on the machine does not distort.
fn thread_cpu() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

/// Time spent per stage of [`pipeline`].
#[derive(Default)]
struct Stages {
    decode: Duration,
    encode: Duration,
    write: Duration,
    written: usize,
    objects: usize,
}

/// Decode, partition, group and encode `records` into objects written to `sink`, all on the
/// calling thread (the file writes are awaited one at a time). Records are taken in rounds of
/// `round_records`, and each round ends with one object per partition it touched, as when all
/// of a shard's partitions reach their age together.
fn pipeline(
    runtime: &tokio::runtime::Runtime,
    sink: &LocalFsSink,
    prefix: &str,
    encoding: &Encoding,
    records: &[Bytes],
    round_records: usize,
) -> Result<Stages> {
    let mut stages = Stages::default();
    for (chunk_no, chunk) in records.chunks(round_records).enumerate() {
        let started = Instant::now();
        let mut partitions: HashMap<String, (Vec<Bytes>, usize)> = HashMap::new();
        let now = Utc::now();
        for data in chunk {
            let envelope = proto::EnvelopeRef::decode(data)?;
            let key = persister::partition(envelope.event_name, envelope.event_time.as_ref(), now)
                .map_err(|r| r.to_string())?;
            let entry = partitions.entry(key.path()).or_default();
            entry.1 += data.len();
            entry.0.push(Bytes::copy_from_slice(data));
        }
        stages.decode += started.elapsed();
        for (path, (envelopes, raw)) in partitions {
            let started = Instant::now();
            let body = encode_envelopes(encoding, &envelopes, raw)?;
            stages.encode += started.elapsed();
            stages.written += body.len();
            stages.objects += 1;
            let key = format!(
                "{prefix}/{path}/shard-{chunk_no}.{}",
                encoding.format.extension()
            );
            let started = Instant::now();
            runtime.block_on(sink.put(&key, Bytes::from(body)))?;
            stages.write += started.elapsed();
        }
    }
    Ok(stages)
}

/// Records per flush round in the throughput passes: ~50 partitions a round (20 names over
/// two hours of event time, which touch three clock hours), so objects of ~800 records,
/// ~0.5 MB raw.
const ROUND_RECORDS: usize = 40_000;

/// Measured passes per throughput case.
const PASSES: usize = 3;

fn throughput() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let names = names(20);
    let count = std::env::var("FANNER_BENCH_ENVELOPES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    let records: Vec<Bytes> = (0..count)
        .map(|i| Bytes::from(envelope(i, &names).encode_to_vec()))
        .collect();
    let raw: usize = records.iter().map(Bytes::len).sum();
    println!(
        "throughput, one thread: {} envelopes, {:.1} MB raw ({} B each), 20 names over 2 hours, best of {PASSES} passes",
        records.len(),
        raw as f64 / 1e6,
        raw / records.len()
    );
    let mut cases = vec![(
        "ndjson".to_owned(),
        Encoding {
            format: ObjectFormat::Ndjson,
            ..Encoding::default()
        },
    )];
    for level in [1, 3, 6] {
        cases.push((
            format!("ndjson.gz level {level}"),
            Encoding {
                format: ObjectFormat::NdjsonGzip,
                gzip_level: level,
                ..Encoding::default()
            },
        ));
    }
    cases.push((
        "parquet snappy".into(),
        Encoding {
            format: ObjectFormat::Parquet,
            ..Encoding::default()
        },
    ));
    cases.push((
        "parquet uncompressed".into(),
        Encoding {
            format: ObjectFormat::Parquet,
            parquet_compression: ParquetCompression::None,
            ..Encoding::default()
        },
    ));
    if let Ok(wanted) = std::env::var("FANNER_BENCH_CASE") {
        cases.retain(|(label, _)| label.contains(&wanted));
    }
    // Nothing is deleted until the end: ext4 spends a lot of CPU allocating inodes next to
    // freshly deleted ones, which a lake that only grows never sees.
    let dir = tempfile::tempdir()?;
    let sink = LocalFsSink::new(dir.path())?;
    for (case, (label, encoding)) in cases.into_iter().enumerate() {
        // One warm-up pass over a tenth of the input.
        pipeline(
            &runtime,
            &sink,
            &format!("case-{case}/warm-up"),
            &encoding,
            &records[..records.len() / 10],
            ROUND_RECORDS,
        )?;
        // The best of three passes: on a shared machine the slow ones measure the neighbours.
        let mut best: Option<(Duration, f64, Stages)> = None;
        for pass in 0..PASSES {
            let started = Instant::now();
            let cpu_before = thread_cpu();
            let stages = pipeline(
                &runtime,
                &sink,
                &format!("case-{case}/pass-{pass}"),
                &encoding,
                &records,
                ROUND_RECORDS,
            )?;
            let wall = started.elapsed();
            let cpu = match (cpu_before, thread_cpu()) {
                (Some(before), Some(after)) => (after - before).as_secs_f64(),
                _ => f64::NAN,
            };
            if best
                .as_ref()
                .is_none_or(|(w, c, _)| cpu < *c || (c.is_nan() && wall < *w))
            {
                best = Some((wall, cpu, stages));
            }
        }
        let Some((wall, cpu, stages)) = best else {
            continue;
        };
        let secs = wall.as_secs_f64();
        let cpu = if cpu.is_nan() {
            "  n/a".to_owned()
        } else {
            format!("{:>6.1}", raw as f64 / 1e6 / cpu)
        };
        let rate = |d: Duration| raw as f64 / 1e6 / d.as_secs_f64();
        println!(
            "  {label:<22} {cpu} MB/s per CPU-second, {:>6.1} MB/s wall, output {:>5.1}% of raw in {} objects of ~{} records   (wall per stage: decode+partition {:>6.1}, encode {:>6.1}, write+fsync {:>6.1} MB/s)",
            raw as f64 / 1e6 / secs,
            100.0 * stages.written as f64 / raw as f64,
            stages.objects,
            records.len() / stages.objects.max(1),
            rate(stages.decode),
            rate(stages.encode),
            rate(stages.write),
        );
    }
    Ok(())
}

/// Publishes at a steady rate and watches the lake: how long until each event is visible.
fn freshness() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        let backend = EmbeddedBackend::open(dir.path().join("streams.redb"))?;
        let store = Store::open_sqlite(&dir.path().join("fanner.db")).await?;
        let config = Config::default();
        backend
            .create_stream(&StreamSpec {
                name: config.stream.clone(),
                shard_count: 2,
                retention_hours: 24,
                tags: Default::default(),
            })
            .await?;
        let lake = LocalFsSink::new(dir.path().join("lake"))?;
        let persister = Persister::new(
            &config,
            Arc::new(backend.clone()),
            Arc::new(store.clone()),
            Arc::new(lake.clone()),
        )?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(persister.run(async move {
            let _ = stopped.await;
        }));

        const SECONDS: usize = 30;
        const RATE: usize = 1000;
        let names = names(20);
        let mut published: BTreeMap<String, Instant> = BTreeMap::new();
        let mut visible: BTreeMap<String, Instant> = BTreeMap::new();
        let mut seen_keys = std::collections::HashSet::new();
        let started = Instant::now();
        let mut next = 0;
        let deadline = started + Duration::from_secs(SECONDS as u64);
        while Instant::now() < deadline + Duration::from_secs(15)
            && (Instant::now() < deadline || visible.len() < published.len())
        {
            if Instant::now() < deadline {
                let due = (started.elapsed().as_secs_f64() * RATE as f64) as usize;
                let batch: Vec<PutRecord> = (next..due)
                    .map(|i| {
                        let env = envelope(i, &names);
                        PutRecord {
                            partition_key: env.event_id.clone(),
                            data: Bytes::from(env.encode_to_vec()),
                        }
                    })
                    .collect();
                let ids: Vec<String> = (next..due).map(|i| envelope(i, &names).event_id).collect();
                if !batch.is_empty() {
                    streams::put_all(&backend, &config.stream, &batch, &Default::default()).await?;
                    let at = Instant::now();
                    for id in ids {
                        published.insert(id, at);
                    }
                }
                next = due;
            }
            let keys = lake.list("events/").await?;
            for key in keys {
                if !seen_keys.insert(key.clone()) {
                    continue;
                }
                let Some(body) = lake.get(&key).await? else { continue };
                let at = Instant::now();
                let mut text = String::new();
                std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut text)?;
                for line in text.lines() {
                    let value: serde_json::Value = serde_json::from_str(line)?;
                    if let Some(id) = value["event_id"].as_str() {
                        visible.entry(id.to_owned()).or_insert(at);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = stop.send(());
        run.await?;
        let mut delays: Vec<f64> = published
            .iter()
            .filter_map(|(id, at)| visible.get(id).map(|v| v.duration_since(*at).as_secs_f64()))
            .collect();
        delays.sort_by(f64::total_cmp);
        let pct = |p: f64| delays.get(((delays.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(f64::NAN);
        println!(
            "freshness, default settings (max age {} ms), embedded backend, {RATE} events/s for {SECONDS} s, 2 shards, 20 names:",
            config.max_object_age_ms
        );
        println!(
            "  publish → object visible: p50 {:.2} s, p99 {:.2} s, max {:.2} s ({} of {} events seen)",
            pct(0.5),
            pct(0.99),
            delays.last().copied().unwrap_or(f64::NAN),
            delays.len(),
            published.len()
        );
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    })
}

fn main() -> Result<()> {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    if wanted("throughput") {
        throughput()?;
    }
    if wanted("freshness") {
        freshness()?;
    }
    Ok(())
}
