//! `fanner serve` under sustained load, as an operator runs it: the release binary on a fresh
//! data dir (embedded log, SQLite, local lake), one event, one subscribed stream, events
//! published at a fixed rate through the HTTP API. Prints the process's resident memory over the
//! run and checks that the stream and the lake kept up.
//!
//! `cargo bench -p cli --bench serve` runs 10,000 and 50,000 events/s for 60 s each;
//! `FANNER_BENCH_RATES=10000` and `FANNER_BENCH_SECONDS=300` choose others.
//!
//! `cargo bench -p cli --bench serve -- kinesis-local` instead runs `fanner serve` on
//! kinesis-local (`FANNER_KINESIS_LOCAL`, installed by `scripts/setup-tools`) with a one-shard
//! GES, once reading it by polling and once by enhanced fan-out, and prints for each: publish →
//! consumer-stream latency (envelope ingest time to the consumer record's arrival time) at a
//! trickle, the sustained events/s through the engine under a burst, and the `GetRecords` calls
//! per second the engine and the persister made on the GES shard together.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use api::{
    Classification, Client, CreateEvent, CreateStream, CreateSubscription, PublishEvent,
    PublishRequest,
};

const EVENT: &str = "page_viewed";
/// Events per publish request: a producer batching as the API allows.
const BATCH: usize = 500;

struct Serve {
    child: Child,
    endpoint: String,
    token: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &std::path::Path, env: &[(&str, String)]) -> Serve {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fanner"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("FANNER_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fanner serve starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let endpoint = loop {
        let line = lines.next().expect("serve exited early").expect("line");
        if let Some(url) = line.strip_prefix("Fanner is listening on ") {
            break url.trim().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let token = std::fs::read_to_string(dir.join("admin.token"))
        .expect("admin token")
        .trim()
        .to_owned();
    Serve {
        child,
        endpoint,
        token,
    }
}

/// Resident memory of `pid` in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn lake_events(lake: &std::path::Path) -> usize {
    use std::io::Read;
    let mut count = 0;
    let mut dirs = vec![lake.join("events").join(EVENT)];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Ok(file) = std::fs::File::open(&path) {
                let mut text = String::new();
                if flate2::read::MultiGzDecoder::new(file)
                    .read_to_string(&mut text)
                    .is_ok()
                {
                    count += text.lines().count();
                }
            }
        }
    }
    count
}

/// The bench's event, and the stream `views` (`shards` shards) subscribed to it.
async fn set_up(client: &Client, shards: u32) {
    client
        .create_event(&CreateEvent {
            name: EVENT.to_owned(),
            classification: Classification::Internal,
            description: String::new(),
            owner: None,
        })
        .await
        .expect("event");
    client
        .create_stream(&CreateStream {
            name: "views".to_owned(),
            shard_count: Some(shards),
            retention_hours: None,
            tags: Default::default(),
        })
        .await
        .expect("stream");
    client
        .create_subscription(&CreateSubscription {
            stream: "views".to_owned(),
            events: vec![EVENT.to_owned()],
            ..Default::default()
        })
        .await
        .expect("subscription");
}

async fn run(rate: u64, seconds: u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let serve = start(dir.path(), &[]);
    let pid = serve.child.id();
    let client = Client::new(&serve.endpoint, Some(serve.token.clone())).expect("client");
    set_up(&client, 2).await;
    let started_rss = rss_mib(pid);

    let batch: Vec<PublishEvent> = (0..BATCH)
        .map(|i| PublishEvent {
            event: EVENT.to_owned(),
            payload: Some(serde_json::json!({"page": format!("/p/{}", i % 50), "ms": i})),
            user_id: Some(format!("user-{}", i % 1000)),
            ..PublishEvent::default()
        })
        .collect();
    let request = PublishRequest { events: batch };
    let interval = Duration::from_secs_f64(BATCH as f64 / rate as f64);
    let start = Instant::now();
    let mut next = tokio::time::Instant::now();
    let mut published = 0u64;
    let mut samples = Vec::new();
    let mut last_sample = Instant::now();
    // A few requests in flight keep the rate when one is slow.
    let mut in_flight = tokio::task::JoinSet::new();
    while start.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep_until(next).await;
        next += interval;
        while in_flight.len() >= 4 {
            if let Some(done) = in_flight.join_next().await {
                published += done.ok().and_then(Result::ok).unwrap_or(0) as u64;
            }
        }
        let client = client.clone();
        let request = request.clone();
        in_flight.spawn(async move { client.publish(&request).await.map(|r| r.accepted) });
        while let Some(done) = in_flight.try_join_next() {
            published += done.ok().and_then(Result::ok).unwrap_or(0) as u64;
        }
        if last_sample.elapsed() >= Duration::from_secs(1) {
            samples.push(rss_mib(pid));
            last_sample = Instant::now();
        }
    }
    while let Some(done) = in_flight.join_next().await {
        published += done.ok().and_then(Result::ok).unwrap_or(0) as u64;
    }
    let achieved = published as f64 / start.elapsed().as_secs_f64();
    // Let the persister write its last partitions (5 s by age).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let lake = lake_events(&dir.path().join("lake"));
    samples.sort_by(f64::total_cmp);
    let peak = samples.last().copied().unwrap_or(0.0);
    let median = samples.get(samples.len() / 2).copied().unwrap_or(0.0);
    println!(
        "serve: {rate} events/s asked, {achieved:.0} published for {seconds} s; RSS at start \
         {started_rss:.0} MiB, median {median:.0} MiB, peak {peak:.0} MiB; lake holds {lake} of \
         {published}"
    );
}

/// The sum of a counter's series whose labels contain `labels`, from a `/metrics` text.
fn counter_sum(metrics: &str, name: &str, labels: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with('{'))
        .filter(|line| line.contains(labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Trickle and burst sizes on kinesis-local (a few hundred records a second at best).
const TRICKLE_EVENTS: usize = 150;
const TRICKLE_GAP: Duration = Duration::from_millis(100);
const BURST_EVENTS: usize = 3000;

/// One `fanner serve` on `emulator` reading its one-shard GES as `read`.
async fn kinesis_local(emulator: &testkit::kinesis_local::KinesisLocal, read: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ges = testkit::unique_name("ges");
    let mut env = vec![
        ("FANNER__STREAMS__BACKEND", "kinesis".to_owned()),
        ("FANNER__STREAMS__GES", ges.clone()),
        ("FANNER__STREAMS__GES_SHARDS", "1".to_owned()),
        ("FANNER__STREAMS__KINESIS__READ", read.to_owned()),
        (
            "FANNER__STREAMS__BACKING_PREFIX",
            format!("{}-", testkit::unique_name("bench")),
        ),
    ];
    env.extend(emulator.env());
    let serve = start(dir.path(), &env);
    let client = Client::new(&serve.endpoint, Some(serve.token.clone())).expect("client");
    set_up(&client, 1).await;
    let delivered =
        |metrics: &str| counter_sum(metrics, "fanner_engine_delivered_records_total", "");
    let get_records = |metrics: &str| {
        counter_sum(
            metrics,
            "fanner_kinesis_get_records_total",
            &format!("stream=\"{ges}\""),
        )
    };
    let metrics = || async { client.metrics().await.unwrap_or_default() };
    let wait_delivered = |want: usize| async move {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let text = metrics().await;
            if delivered(&text) as usize >= want || Instant::now() > deadline {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };

    // The trickle: one event per request, the consumer record's arrival time against the
    // envelope's ingest time. Calls to the GES shard are counted over the same stretch.
    let event = |n: usize, user: &str| PublishEvent {
        event: EVENT.to_owned(),
        payload: Some(serde_json::json!({ "n": n })),
        user_id: Some(user.to_owned()),
        ..PublishEvent::default()
    };
    let calls_before = get_records(&metrics().await);
    let trickle_started = Instant::now();
    for n in 0..TRICKLE_EVENTS {
        client
            .publish(&PublishRequest {
                events: vec![event(n, "trickle")],
            })
            .await
            .expect("publish");
        tokio::time::sleep(TRICKLE_GAP).await;
    }
    wait_delivered(TRICKLE_EVENTS).await;
    let calls = get_records(&metrics().await) - calls_before;
    let calls_per_second = calls / trickle_started.elapsed().as_secs_f64();

    // The burst: as fast as the API takes it; events/s from the burst's start until the engine
    // delivered the last one.
    let burst_started = Instant::now();
    for first in (0..BURST_EVENTS).step_by(BATCH) {
        let events = (first..(first + BATCH).min(BURST_EVENTS))
            .map(|n| event(n, &format!("user-{}", n % 100)))
            .collect();
        client
            .publish(&PublishRequest { events })
            .await
            .expect("publish");
    }
    let published_in = burst_started.elapsed();
    let done = wait_delivered(TRICKLE_EVENTS + BURST_EVENTS).await;
    let through = BURST_EVENTS as f64 / done.duration_since(burst_started).as_secs_f64();

    let backend = streams::kinesis::KinesisBackend::new(&emulator.sdk_config().await);
    let mut latencies = Vec::new();
    let stream = format!(
        "{}views",
        env.iter()
            .find(|(k, _)| *k == "FANNER__STREAMS__BACKING_PREFIX")
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    );
    use streams::StreamBackend;
    for shard in backend.list_shards(&stream).await.expect("shards") {
        let mut reader = backend
            .open_reader(&stream, &shard.id, streams::StartPosition::TrimHorizon)
            .await
            .expect("reader");
        loop {
            let batch = reader.next_batch(10_000).await.expect("read");
            if batch.records.is_empty() {
                break;
            }
            for record in batch.records {
                use proto::Message;
                let Ok(envelope) = proto::Envelope::decode(record.data.as_ref()) else {
                    continue;
                };
                let (Some(ingest), Some(arrival)) = (envelope.ingest_time, record.arrival_time)
                else {
                    continue;
                };
                if envelope.user_id != "trickle" {
                    continue;
                }
                let ingest_ms = ingest.seconds * 1000 + i64::from(ingest.nanos / 1_000_000);
                latencies.push(arrival.timestamp_millis() - ingest_ms);
            }
        }
    }
    latencies.sort_unstable();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(-1)
    };
    println!(
        "kinesis-local, read = {read}: publish -> consumer latency p50 {} ms, p90 {} ms ({} \
         events, one every {} ms); burst of {BURST_EVENTS}: published in {:.1} s, {through:.0} \
         events/s through the engine; GetRecords on the GES shard (engine + persister) \
         {calls_per_second:.2} calls/s",
        percentile(0.5),
        percentile(0.9),
        latencies.len(),
        TRICKLE_GAP.as_millis(),
        published_in.as_secs_f64(),
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if std::env::args().any(|a| a == "kinesis-local") {
        let Some(script) = testkit::kinesis_local::installed() else {
            println!(
                "kinesis-local: skipped: set {} (`bash scripts/setup-tools` installs it)",
                testkit::kinesis_local::SCRIPT_VAR
            );
            return;
        };
        let emulator =
            testkit::kinesis_local::KinesisLocal::start(&script).expect("kinesis-local starts");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        for read in ["polling", "efo"] {
            runtime.block_on(kinesis_local(&emulator, read));
        }
        return;
    }
    let rates: Vec<u64> = std::env::var("FANNER_BENCH_RATES")
        .unwrap_or_else(|_| "10000,50000".to_owned())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let seconds = std::env::var("FANNER_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for rate in rates {
        runtime.block_on(run(rate, seconds));
    }
}
