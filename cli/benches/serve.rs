//! `fanner serve` under sustained load, as an operator runs it: the release binary on a fresh
//! data dir (embedded log, SQLite, local lake), one event, one subscribed stream, events
//! published at a fixed rate through the HTTP API. Prints the process's resident memory over the
//! run and checks that the stream and the lake kept up.
//!
//! `cargo bench -p cli --bench serve` runs 10,000 and 50,000 events/s for 60 s each;
//! `FANNER_BENCH_RATES=10000` and `FANNER_BENCH_SECONDS=300` choose others.

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

fn start(dir: &std::path::Path) -> Serve {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fanner"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("FANNER_LOG", "warn")
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

async fn run(rate: u64, seconds: u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let serve = start(dir.path());
    let pid = serve.child.id();
    let client = Client::new(&serve.endpoint, Some(serve.token.clone())).expect("client");
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
            shard_count: Some(2),
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

fn main() {
    if std::env::args().any(|a| a == "--list") {
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
