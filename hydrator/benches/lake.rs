//! Hydration's own work per event, before the receiving stream's limit: reading lake objects
//! back (decompress, decode) and choosing what a subscription takes (decode, route, window,
//! mark). One thread, so the figure is per core.
//!
//! `cargo bench -p hydrator --bench lake` (`FANNER_BENCH_EVENTS` sets the number of events).

use std::time::Instant;

use api::{HydrationKind, HydrationTask, Route, RouteTable, RouteTarget};
use bytes::Bytes;
use chrono::Utc;
use fanner::router::RouteIndex;
use persister::{Encoding, ObjectFormat, lake};
use prost::Message;

const EVENT: &str = "page_viewed";
const PER_OBJECT: usize = 10_000;

fn envelopes(n: usize) -> Vec<Bytes> {
    let now = Utc::now();
    (0..n)
        .map(|i| {
            let payload = format!(
                r#"{{"page":"/products/{i}","referrer":"https://example.com/search?q=shoes","user_agent":"Mozilla/5.0 (X11; Linux x86_64)","viewport":[1280,720],"session":"s-{}","n":{i}}}"#,
                i % 977
            );
            Bytes::from(
                proto::Envelope {
                    event_id: format!("{:032x}", i as u128 * 7919),
                    event_name: EVENT.to_owned(),
                    event_time: Some(api::envelope::utc_to_timestamp(now)),
                    ingest_time: Some(api::envelope::utc_to_timestamp(now)),
                    producer: "web".to_owned(),
                    trace_id: format!("{:016x}", i),
                    user_id: format!("user-{}", i % 10_000),
                    device_id: String::new(),
                    attributes: [("region".to_owned(), "eu-west-1".to_owned())].into(),
                    content_type: "application/json".to_owned(),
                    payload: payload.into_bytes(),
                    history_id: String::new(),
                }
                .encode_to_vec(),
            )
        })
        .collect()
}

fn main() {
    let n: usize = std::env::var("FANNER_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    let records = envelopes(n);
    let raw: usize = records.iter().map(Bytes::len).sum();
    let table = RouteIndex::compile(&RouteTable {
        revision: 1,
        generated_at: Utc::now(),
        known_events: vec![EVENT.to_owned()],
        routes: vec![Route {
            event: EVENT.to_owned(),
            payload_schema: None,
            targets: vec![RouteTarget {
                subscription_id: "s1".to_owned(),
                stream: "analytics".to_owned(),
                backing_name: "fanner-analytics".to_owned(),
                owner: "analytics".to_owned(),
                ..RouteTarget::default()
            }],
        }],
    });
    let task = HydrationTask {
        id: "h1".to_owned(),
        subscription_id: "s1".to_owned(),
        stream: "analytics".to_owned(),
        backing_name: "fanner-analytics".to_owned(),
        events: vec![EVENT.to_owned()],
        kind: HydrationKind::Start,
        from: None,
        to: None,
        finished_shards: Vec::new(),
    };
    println!(
        "{n} events, {:.0} bytes each, {PER_OBJECT} per object",
        raw as f64 / n as f64
    );
    for format in [
        ObjectFormat::NdjsonGzip,
        ObjectFormat::Ndjson,
        ObjectFormat::Parquet,
    ] {
        let encoding = Encoding {
            format,
            ..Encoding::default()
        };
        let objects: Vec<Vec<u8>> = records
            .chunks(PER_OBJECT)
            .map(|chunk| {
                let bytes = chunk.iter().map(Bytes::len).sum();
                persister::encode::encode_envelopes(&encoding, chunk, bytes).expect("encodes")
            })
            .collect();
        let stored: usize = objects.iter().map(Vec::len).sum();
        let started = Instant::now();
        let mut read = 0;
        let mut taken = 0;
        for object in &objects {
            let envelopes = lake::decode(format, object).expect("decodes");
            read += envelopes.len();
            taken += hydrator::select(&task, &table, Utc::now(), envelopes.iter())
                .records
                .len();
        }
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!((read, taken), (n, n));
        println!(
            "{:<12} read + decode + select: {:>9.0} events/s/core  ({:.1} MB/s of lake objects, {:.1} MB/s raw envelopes)",
            format!("{format:?}"),
            n as f64 / seconds,
            stored as f64 / seconds / 1e6,
            raw as f64 / seconds / 1e6,
        );
    }
}
