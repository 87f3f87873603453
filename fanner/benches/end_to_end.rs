//! End to end on the embedded backend: publish → consumer stream latency at a steady 10 k
//! events/s, then sustained throughput. Half the events are routed (one subscription), half go
//! nowhere, as a GES carrying events nobody subscribed to does.
//!
//! `cargo bench -p fanner --bench end_to_end` (`FANNER_BENCH_SECONDS`, default 10, sets the
//! length of the steady run; `FANNER_BENCH_DIR` where the stream file goes, default a temporary
//! directory: put it on tmpfs to see the engine without the disk's flushes).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Setup;
use streams::StreamBackend;
use streams::embedded::EmbeddedBackend;

const RATE: usize = 10_000;
const TICK: Duration = Duration::from_millis(10);
const THROUGHPUT_EVENTS: usize = 200_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds: u64 = std::env::var("FANNER_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let dir = match std::env::var_os("FANNER_BENCH_DIR") {
        Some(parent) => tempfile::tempdir_in(parent),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    let backend: Arc<dyn StreamBackend> =
        Arc::new(EmbeddedBackend::open(dir.path().join("streams.redb")).expect("backend"));

    let setup = Setup::start(backend.clone(), 2, Duration::from_secs(1)).await;
    let tail = setup.tail().await;
    let per_tick = RATE * TICK.as_millis() as usize / 1000;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        setup.publish(sent, per_tick).await;
        sent += per_tick;
    }
    let rate = sent as f64 / started.elapsed().as_secs_f64();
    tail.wait_for(sent / 2, Duration::from_secs(60)).await;
    let (p50, p99, max) = tail.percentiles().await;
    println!(
        "end_to_end embedded: {sent} events at {rate:.0} events/s ({} delivered): \
         publish→consumer p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms",
        sent / 2
    );
    setup.stop().await;

    // Throughput: the engine starts on a GES already holding the events, so what is measured
    // is how fast it delivers, not how fast the benchmark publishes.
    let mut setup = Setup::start_paused(backend, 2, Duration::from_secs(1)).await;
    for first in (0..THROUGHPUT_EVENTS).step_by(500) {
        setup.publish(first, 500).await;
    }
    let tail = setup.tail().await;
    let started = Instant::now();
    setup.resume();
    let delivered_in = tail
        .wait_for(THROUGHPUT_EVENTS / 2, Duration::from_secs(300))
        .await;
    let elapsed = started.elapsed().min(delivered_in);
    println!(
        "end_to_end embedded: sustained {:.0} GES events/s ({:.0} deliveries/s): a backlog of \
         {THROUGHPUT_EVENTS} events delivered in {:.2} s",
        THROUGHPUT_EVENTS as f64 / elapsed.as_secs_f64(),
        (THROUGHPUT_EVENTS / 2) as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    setup.stop().await;
}
