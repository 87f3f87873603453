//! Throughput against Kinesis on moto, to size the integration tests. Runs only with
//! `FANNER_IT=1` and `FANNER_MOTO_SERVER` set (`bash scripts/setup-tools` prints it).
//!
//! `FANNER_IT=1 FANNER_MOTO_SERVER=... cargo bench -p fanner --bench moto`

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Setup;
use streams::StreamBackend;
use streams::kinesis::{KinesisBackend, KinesisOptions};

/// moto slows down as a shard grows (see the notes on emulators): stay well under 20 k.
const EVENTS: usize = 10_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(moto) = testkit::moto::shared("bench moto") else {
        return;
    };
    let metrics = control_plane::http::metrics_handle();
    let backend: Arc<dyn StreamBackend> = Arc::new(
        KinesisBackend::new(&moto.sdk_config().await).with_options(KinesisOptions {
            settle_timeout: Duration::from_secs(30),
            min_poll_gap: Duration::from_millis(20),
            idle_poll: Duration::from_millis(50),
            read_attempts: 6,
            ..KinesisOptions::default()
        }),
    );
    // One GES shard: moto's PutRecords loses records when two calls write one shard at once,
    // and each GES shard has its own worker writing to the consumer stream.
    let setup = Setup::start(backend, 1, Duration::from_millis(100)).await;
    let tail = setup.tail().await;
    let started = Instant::now();
    let publisher = async {
        for first in (0..EVENTS).step_by(500) {
            setup.publish(first, 500).await;
        }
        started.elapsed()
    };
    let (published_in, delivered_in) = tokio::join!(
        publisher,
        tail.wait_for(EVENTS / 2, Duration::from_secs(60))
    );
    let (p50, p99, _) = tail.percentiles().await;
    let received = tail.received.load(std::sync::atomic::Ordering::Relaxed);
    if received < EVENTS / 2 {
        let delivered: f64 = metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("fanner_engine_delivered_records_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        println!(
            "moto: only {received} of {} reached the consumer's reader; the stream holds {}; \
             the engine counted {delivered} written",
            EVENTS / 2,
            setup.count_consumer().await
        );
    }
    println!(
        "moto: {EVENTS} GES events published in {:.2} s ({:.0}/s); {} delivered after {:.2} s: \
         {:.0} GES events/s through the engine, publish→consumer p50 {p50:.0} ms, p99 {p99:.0} ms",
        published_in.as_secs_f64(),
        EVENTS as f64 / published_in.as_secs_f64(),
        EVENTS / 2,
        delivered_in.as_secs_f64(),
        EVENTS as f64 / delivered_in.as_secs_f64(),
    );
    setup.stop().await;
}
