//! `fanner serve` on kinesis-local (moto can neither reshard nor do enhanced fan-out): the GES
//! split and merged while events are published, read by polling and by enhanced fan-out.
//! `FANNER_IT=1` and `FANNER_KINESIS_LOCAL`; kept small, the emulator is slow.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use api::{PublishEvent, PublishRequest};
use aws_sdk_kinesis::Client;
use testkit::kinesis_local::{KinesisLocal, merge_shards, split_shard};

use crate::Server;
use crate::lifecycle::{
    EVENT, http_get, lake_ids, set_up, shards_held, stream_envelopes, until_complete, wait_until,
};

/// Events published, in batches, while the GES is resharded.
const EVENTS: usize = 600;
const BATCH: usize = 50;
/// Records the engine reads per call.
const READ_BATCH: usize = 20;
/// Partition keys (user ids): each key's events must reach the stream in publish order, which
/// they do only when every parent shard is finished before its children are read.
const KEYS: usize = 8;

/// The environment of a `fanner serve` whose GES (two shards) is on `server`, read as `read`;
/// its consumer streams are its own (the tests of this binary share the emulator).
fn env(server: &KinesisLocal, ges: &str, read: &str) -> Vec<(&'static str, String)> {
    [
        (
            "FANNER__STREAMS__BACKING_PREFIX",
            format!("{}-", testkit::unique_name("fanner")),
        ),
        ("FANNER__STREAMS__BACKEND", "kinesis".to_owned()),
        ("FANNER__STREAMS__GES", ges.to_owned()),
        ("FANNER__STREAMS__GES_SHARDS", "2".to_owned()),
        ("FANNER__STREAMS__KINESIS__READ", read.to_owned()),
        // Small reads keep the engine behind the publisher, so a parent still has records to
        // deliver when its children take new ones: reading a child early would show.
        ("FANNER__ENGINE__READ_BATCH", READ_BATCH.to_string()),
    ]
    .into_iter()
    .chain(server.env())
    .collect()
}

/// The GES's open shards, by where their hash key ranges start.
async fn open_shards(client: &Client, stream: &str) -> Vec<String> {
    let listed = client
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .expect("ListShards");
    let mut open: Vec<(u128, String)> = listed
        .shards()
        .iter()
        .filter(|shard| {
            shard
                .sequence_number_range()
                .is_some_and(|range| range.ending_sequence_number().is_none())
        })
        .map(|shard| {
            let start = shard
                .hash_key_range()
                .and_then(|range| range.starting_hash_key().parse().ok())
                .unwrap_or(0);
            (start, shard.shard_id().to_owned())
        })
        .collect();
    open.sort();
    open.into_iter().map(|(_, id)| id).collect()
}

fn reshard_while_publishing(test: &str, read: &str) {
    let Some(emulator) = testkit::kinesis_local::shared(test) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let client = Client::new(&runtime.block_on(emulator.sdk_config()));
    let ges = testkit::unique_name("ges");
    let dir = tempfile::tempdir().expect("temp dir");
    let env = env(emulator, &ges, read);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start_with(dir.path(), &env);
    set_up(&server);

    let published = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let published = published.clone();
        let api =
            api::Client::new(&server.endpoint, Some(server.admin_token.clone())).expect("client");
        let handle = runtime.handle().clone();
        std::thread::spawn(move || {
            for first in (0..EVENTS).step_by(BATCH) {
                let events = (first..first + BATCH)
                    .map(|n| PublishEvent {
                        event: EVENT.to_owned(),
                        payload: Some(serde_json::json!({ "n": n })),
                        user_id: Some(format!("user-{}", n % KEYS)),
                        ..PublishEvent::default()
                    })
                    .collect();
                let answer = handle
                    .block_on(api.publish(&PublishRequest { events }))
                    .expect("publish");
                assert_eq!(answer.accepted, BATCH);
                published.fetch_add(BATCH, Ordering::SeqCst);
                // Spread the batches over the resharding.
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let reached = |count: usize| {
        wait_until(
            &format!("{count} events are published"),
            Duration::from_secs(60),
            || published.load(Ordering::SeqCst) >= count,
        );
    };
    reached(EVENTS / 4);
    let before = runtime.block_on(open_shards(&client, &ges));
    runtime.block_on(split_shard(&client, &ges, &before[0]));
    reached(EVENTS / 2);
    // The upper child of the split and the shard next to it.
    let after_split = runtime.block_on(open_shards(&client, &ges));
    assert_eq!(after_split.len(), 3, "{after_split:?}");
    runtime.block_on(merge_shards(
        &client,
        &ges,
        &after_split[1],
        &after_split[2],
    ));
    publisher.join().expect("the publisher finishes");
    assert_eq!(runtime.block_on(open_shards(&client, &ges)).len(), 2);

    let lake = dir.path().join("lake");
    let (lake_took, stream_took) = until_complete(&server, &lake, EVENTS, Instant::now());
    assert!(
        lake_ids(&lake).values().all(|&count| count == 1),
        "every event is in the lake exactly once"
    );
    // First deliveries per key in publish order: a child read before its parent was finished
    // would put later events of a key before earlier ones.
    let mut order: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for envelope in stream_envelopes(&server, EVENTS) {
        if seen.insert(envelope.event_id.clone()) {
            let n = envelope.payload.as_ref().and_then(|p| p["n"].as_u64());
            order
                .entry(envelope.user_id.clone())
                .or_default()
                .push(n.expect("payload n"));
        }
    }
    assert_eq!(order.len(), KEYS);
    for (key, numbers) in &order {
        assert!(
            numbers.windows(2).all(|pair| pair[0] < pair[1]),
            "{key}'s events reached the stream out of order: {numbers:?}"
        );
    }
    // Enhanced fan-out is what read the GES: a consumer per reader role, and subscriptions.
    let summary = runtime
        .block_on(client.describe_stream_summary().stream_name(&ges).send())
        .expect("DescribeStreamSummary");
    let stream_arn = summary
        .stream_description_summary()
        .map(|summary| summary.stream_arn().to_owned())
        .expect("a stream ARN");
    let consumers = runtime
        .block_on(client.list_stream_consumers().stream_arn(stream_arn).send())
        .expect("ListStreamConsumers");
    let mut names: Vec<&str> = consumers
        .consumers()
        .iter()
        .map(|consumer| consumer.consumer_name())
        .collect();
    names.sort_unstable();
    let subscribed = http_get(&server.endpoint, "/metrics")
        .lines()
        .any(|line| line.starts_with("fanner_kinesis_subscriptions_total{"));
    if read == "efo" {
        assert_eq!(names, ["fanner", "persister"]);
        assert!(subscribed, "the GES was read by subscription");
    } else {
        assert!(names.is_empty(), "{names:?}");
        assert!(!subscribed, "polling subscribes to nothing");
    }
    eprintln!(
        "{test}: after the last publish, lake complete in {lake_took:?}, stream in {stream_took:?}"
    );
    server.stop();
}

#[test]
fn a_split_and_a_merge_while_publishing_lose_nothing_by_polling() {
    reshard_while_publishing("kinesis_local::resharding_polling", "polling");
}

#[test]
fn a_split_and_a_merge_while_publishing_lose_nothing_by_enhanced_fan_out() {
    reshard_while_publishing("kinesis_local::resharding_efo", "efo");
}

/// Two replicas on one PostgreSQL reading the GES by enhanced fan-out; one is killed and the
/// survivor subscribes to its shards as the same consumers once Kinesis lets the dead
/// subscriptions go.
#[test]
fn a_replica_killed_mid_stream_hands_its_subscriptions_over() {
    let test = "kinesis_local::replica_takeover_efo";
    let Some(emulator) = testkit::kinesis_local::shared(test) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let Some(database) = runtime.block_on(testkit::postgres::fresh_database(test)) else {
        return;
    };
    let lake = tempfile::tempdir().expect("lake dir");
    let ges = testkit::unique_name("ges");
    let mut env = env(emulator, &ges, "efo");
    env.extend([
        ("FANNER_DATABASE_URL", database),
        ("FANNER__LAKE__SINK", "local".to_owned()),
        (
            "FANNER__LAKE__PATH",
            lake.path().to_string_lossy().into_owned(),
        ),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("temp dir"),
        tempfile::tempdir().expect("temp dir"),
    );
    let a = Server::start_with(dir_a.path(), &env);
    let b = Server::start_with(dir_b.path(), &env);
    set_up(&a);
    for group in ["fanner", "persister"] {
        wait_until(
            &format!("the replicas share the {group} job's shards 1 + 1"),
            Duration::from_secs(60),
            || shards_held(&a, group) == Some(1) && shards_held(&b, group) == Some(1),
        );
    }
    let n = 300;
    crate::lifecycle::publish(&a, n);
    b.kill();
    let killed = Instant::now();
    wait_until(
        "the survivor holds every shard of both jobs",
        Duration::from_secs(60),
        || shards_held(&a, "fanner") == Some(2) && shards_held(&a, "persister") == Some(2),
    );
    let (lake_took, stream_took) = until_complete(&a, lake.path(), n, killed);
    assert!(
        lake_ids(lake.path()).values().all(|&count| count == 1),
        "every event is in the lake exactly once"
    );
    eprintln!("{test}: after kill -9, lake complete in {lake_took:?}, stream in {stream_took:?}");
    a.stop();
}
