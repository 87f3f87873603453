//! The router alone, on one core: 1 KB envelopes, 1,000 event names, 100 subscriptions, about
//! one event in ten routed somewhere.
//!
//! `cargo bench -p fanner --bench router` (set `FANNER_BENCH_SECONDS` to run longer).

use std::hint::black_box;
use std::time::{Duration, Instant};

use api::{Route, RouteTable, RouteTarget};
use bytes::Bytes;
use chrono::Utc;
use fanner::router::{self, RouteIndex, Routing};
use prost::Message;
use rand::{Rng, SeedableRng};

const EVENTS: usize = 1000;
const ROUTED_EVENTS: usize = 100;
const SUBSCRIPTIONS: usize = 100;
const RECORDS: usize = 100_000;

fn table(rng: &mut impl Rng) -> RouteTable {
    let names: Vec<String> = (0..EVENTS)
        .map(|n| format!("domain.event_{n:04}"))
        .collect();
    let mut routes: Vec<Route> = names[..ROUTED_EVENTS]
        .iter()
        .map(|event| Route {
            event: event.clone(),
            targets: Vec::new(),
        })
        .collect();
    // Each subscription names one to three of the routed events; some access ends, some never.
    for s in 0..SUBSCRIPTIONS {
        for _ in 0..rng.random_range(1..=3) {
            let route = &mut routes[rng.random_range(0..ROUTED_EVENTS)];
            route.targets.push(RouteTarget {
                subscription_id: format!("sub-{s:03}"),
                stream: format!("stream-{s:03}"),
                backing_name: format!("fanner-stream-{s:03}"),
                owner: format!("team-{}", s % 20),
                access_expires_at: (s % 3 == 0).then(|| Utc::now() + chrono::Duration::days(30)),
            });
        }
    }
    RouteTable {
        revision: 1,
        generated_at: Utc::now(),
        known_events: names,
        routes,
    }
}

fn envelopes(table: &RouteTable, rng: &mut impl Rng) -> Vec<Bytes> {
    (0..RECORDS)
        .map(|n| {
            let event = &table.known_events[rng.random_range(0..EVENTS)];
            let mut envelope = proto::Envelope {
                event_id: uuid::Uuid::new_v4().to_string(),
                event_name: event.clone(),
                event_time: Some(proto::Timestamp {
                    seconds: 1_700_000_000 + n as i64,
                    nanos: 0,
                }),
                ingest_time: Some(proto::Timestamp {
                    seconds: 1_700_000_000 + n as i64,
                    nanos: 0,
                }),
                producer: "team-7".to_owned(),
                trace_id: format!("{:032x}", rng.random::<u128>()),
                user_id: format!("user-{}", rng.random_range(0..1_000_000)),
                device_id: format!("device-{}", rng.random_range(0..1_000_000)),
                attributes: [("region".to_owned(), "eu-west-1".to_owned())].into(),
                content_type: "application/json".to_owned(),
                payload: Vec::new(),
            };
            let room = 1024usize.saturating_sub(envelope.encoded_len() + 3);
            envelope.payload = vec![b'x'; room];
            Bytes::from(envelope.encode_to_vec())
        })
        .collect()
}

/// Runs `pass` over every record until `duration` is used up; returns records per second.
fn measure(
    records: &[Bytes],
    duration: Duration,
    mut pass: impl FnMut(&Bytes) -> usize,
) -> (f64, usize) {
    let started = Instant::now();
    let mut done = 0usize;
    let mut deliveries = 0usize;
    while started.elapsed() < duration {
        for record in records {
            deliveries += pass(record);
        }
        done += records.len();
    }
    (done as f64 / started.elapsed().as_secs_f64(), deliveries)
}

fn main() {
    let seconds: u64 = std::env::var("FANNER_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let duration = Duration::from_secs(seconds);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let table = table(&mut rng);
    let index = RouteIndex::compile(&table);
    let records = envelopes(&table, &mut rng);
    let now = Utc::now();
    let average = records.iter().map(Bytes::len).sum::<usize>() / records.len();

    let routed = records
        .iter()
        .filter(|r| match router::read_head(r) {
            Ok(head) => matches!(router::route(head.event_name, &index, now), Routing::Known(routed) if routed.deliveries().next().is_some()),
            Err(_) => false,
        })
        .count();
    println!(
        "router: {RECORDS} envelopes of {average} bytes, {EVENTS} events, {SUBSCRIPTIONS} subscriptions, \
         {:.1}% routed somewhere",
        100.0 * routed as f64 / RECORDS as f64
    );

    let (rate, deliveries) = measure(&records, duration, |record| {
        match router::read_head(black_box(record)) {
            Ok(head) => match router::route(head.event_name, &index, now) {
                Routing::Known(routed) => routed.deliveries().count(),
                Routing::Unknown => 0,
            },
            Err(_) => 0,
        }
    });
    println!(
        "router: read_head + route         {:>6.2} M events/s on one core ({deliveries} deliveries)",
        rate / 1e6
    );
    let names: Vec<Bytes> = records
        .iter()
        .filter_map(|r| router::read_head(r).ok().map(|h| r.slice_ref(h.event_name)))
        .collect();
    let (rate, _) = measure(&names, duration, |name| {
        match router::route(black_box(name), &index, now) {
            Routing::Known(routed) => routed.deliveries().count(),
            Routing::Unknown => 0,
        }
    });
    println!(
        "router: route only                {:>6.2} M events/s",
        rate / 1e6
    );
    let (rate, _) = measure(&records, duration, |record| {
        router::read_head(black_box(record)).map_or(0, |h| h.event_name.len())
    });
    println!(
        "router: read_head only            {:>6.2} M events/s",
        rate / 1e6
    );
    let (rate, _) = measure(&records, duration, |record| {
        proto::Envelope::decode(black_box(record.clone())).map_or(0, |e| e.event_name.len())
    });
    println!(
        "router: full prost decode (for comparison) {:>6.2} M events/s",
        rate / 1e6
    );
}
