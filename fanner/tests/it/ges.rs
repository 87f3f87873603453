//! What the GES throws at the engine: resharding, and records that are not deliverable.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use fanner::checkpoint::Checkpoint;
use fanner::dead_letter::{self, Reason};
use shard_runtime::Coordinator;
use streams::{PutRecord, StreamSpec};

use crate::support::{Harness, Kind, backend_tests, counts, envelope, eventually, ids};

/// The embedded backend reshards like Kinesis (parents closed, children listing them); moto
/// does not, so this runs on the embedded backend only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resharded_ges_is_read_parents_first() {
    // One shard: the stream's order is the order of delivery.
    let (h, stream) = Harness::own_signups("reshard", 1, 1).await;
    let mut config = h.config("engine-a");
    config.read_batch = 20;
    // Slow writes: the parent is still being delivered when its children appear.
    h.faults.delay_puts(Some(Duration::from_millis(5)));
    let engine = h.engine(config);

    let keyed = |prefix: &str| {
        ids(prefix, 300)
            .into_iter()
            .enumerate()
            .map(|(n, id)| ("signup", id, format!("user-{}", n % 7)))
            .collect::<Vec<_>>()
    };
    let mut expected = Vec::new();
    for (generation, shards) in [("g0", 2), ("g1", 1), ("g2", 0)] {
        let batch = keyed(generation);
        expected.extend(batch.iter().map(|(_, id, _)| id.clone()));
        h.publish_keyed(batch).await;
        if shards > 0 {
            h.backend
                .update_stream(&StreamSpec {
                    name: h.ges.clone(),
                    shard_count: shards,
                    retention_hours: 24,
                    tags: Default::default(),
                })
                .await
                .expect("resharded");
        }
    }
    let got = h.wait_for_ids(&stream, &expected).await;
    assert!(counts(&got).values().all(|&n| n == 1), "each record once");

    // Per partition key, every record of an older generation precedes every newer one.
    let generation_of = |id: &str| id.split('-').next().unwrap_or_default().to_owned();
    let user_of = |id: &str| {
        let n: usize = id
            .rsplit('-')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        n % 7
    };
    let mut last: HashMap<usize, String> = HashMap::new();
    for id in &got {
        let generation = generation_of(id);
        if let Some(previous) = last.get(&user_of(id)) {
            assert!(
                *previous <= generation,
                "user {}: {id} delivered after a record of {previous}",
                user_of(id)
            );
        }
        last.insert(user_of(id), generation);
    }

    let leases = h.store.leases("fanner").await.expect("leases");
    let shards = h.backend.list_shards(&h.ges).await.expect("shards");
    for shard in shards.iter().filter(|s| s.closed) {
        let lease = leases
            .iter()
            .find(|l| l.key == format!("{}/{}", h.ges, shard.id))
            .expect("a closed shard was read");
        let checkpoint =
            Checkpoint::parse(lease.checkpoint.as_deref().expect("checkpointed")).expect("valid");
        assert!(
            checkpoint.finished(),
            "{} is finished: {checkpoint:?}",
            shard.id
        );
    }
    engine.shutdown().await;
}

backend_tests!(undeliverable_records_go_to_the_dead_letter_stream);

async fn undeliverable_records_go_to_the_dead_letter_stream(kind: Kind) {
    let Some(h) = Harness::start(kind, "undeliverable_records", 1).await else {
        return;
    };
    let growth = h.team("growth").await;
    h.event(&growth, "signup").await;
    let stream = h.stream(&growth, "growth-own", 1).await;
    h.subscribe(&growth, "growth-own", &["signup"]).await;
    let config = h.config("engine-a");
    let dead_letters = config.dead_letters();
    let engine = h.engine(config);

    let good = ids("good", 6);
    let garbage = Bytes::from_static(b"\xff\xfe not protobuf at all");
    let json = Bytes::from_static(b"{\"event\":\"signup\"}");
    let unnamed = envelope("", "no-name");
    let unknown = envelope("ghost", "ghost-1");
    // Fits the GES with a one-character key, but not a consumer stream with the event id.
    let mut big = proto::Envelope {
        event_id: "big-1".to_owned(),
        event_name: "signup".to_owned(),
        ..proto::Envelope::default()
    };
    let overhead = prost::Message::encoded_len(&big) + 4;
    big.payload = vec![b'x'; streams::MAX_RECORD_BYTES - 1 - overhead];
    let big = Bytes::from(prost::Message::encode_to_vec(&big));
    assert!(big.len() < streams::MAX_RECORD_BYTES && big.len() + 5 > streams::MAX_RECORD_BYTES);

    let mut records = Vec::new();
    for (n, bad) in [&garbage, &json, &unnamed, &unknown, &big]
        .into_iter()
        .enumerate()
    {
        records.push(PutRecord {
            partition_key: "k".to_owned(),
            data: envelope("signup", &good[n]),
        });
        records.push(PutRecord {
            partition_key: "k".to_owned(),
            data: bad.clone(),
        });
    }
    records.push(PutRecord {
        partition_key: "k".to_owned(),
        data: envelope("signup", &good[5]),
    });
    h.put_raw(records).await;

    let got = h.wait_for_ids(&stream, &good).await;
    assert_eq!(
        got, good,
        "good records around bad ones are delivered, in order"
    );
    let letters = eventually(
        Duration::from_secs(30),
        "five dead letters arrive",
        || async {
            let records = h.records(&dead_letters).await;
            (records.len() >= 5).then_some(records)
        },
    )
    .await;
    assert_eq!(letters.len(), 5, "each bad record once");
    let decoded: Vec<_> = letters
        .iter()
        .map(|r| dead_letter::decode(&r.data).expect("a dead-letter record"))
        .collect();
    let reasons: Vec<Reason> = decoded.iter().map(|(h, _)| h.reason).collect();
    assert_eq!(
        reasons,
        [
            Reason::NotAnEnvelope,
            Reason::NotAnEnvelope,
            Reason::NotAnEnvelope,
            Reason::UnknownEvent,
            Reason::Oversize
        ]
    );
    for ((header, body), original) in decoded
        .iter()
        .zip([&garbage, &json, &unnamed, &unknown, &big])
    {
        assert_eq!(header.ges, h.ges);
        assert_eq!(header.original_size, original.len());
        assert!(
            original.starts_with(body),
            "the original bytes follow the header"
        );
        assert_eq!(header.truncated, body.len() < original.len());
    }
    assert_eq!(decoded[3].0.event_name.as_deref(), Some("ghost"));
    assert!(decoded[4].0.truncated, "the oversize record is cut to fit");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_engine_creates_its_dead_letter_stream() {
    let h = Harness::start(Kind::Embedded, "dlq", 1)
        .await
        .expect("embedded is always available");
    let config = h.config("engine-a");
    let name = config.dead_letters();
    let engine = h.engine(config);
    eventually(
        Duration::from_secs(10),
        "the dead-letter stream exists",
        || async {
            h.backend
                .describe_stream(&name)
                .await
                .ok()
                .flatten()
                .map(drop)
        },
    )
    .await;
    assert!(name.starts_with(&h.ges) && !name.starts_with(&h.cp.backing_name("")));
    engine.shutdown().await;
}
