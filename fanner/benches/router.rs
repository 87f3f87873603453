//! The router alone, on one core: 1 KB envelopes, 1,000 event names, 100 subscriptions, about
//! one event in ten routed somewhere. Then the gate ([`fanner::gate`]) on every delivery: with
//! no filter (the zero-copy path), with 20 of the 100 subscriptions filtering on 10 conditions
//! over JSON payload fields, with every grant hashing 3 JSON payload fields, and with protobuf
//! payloads under such a grant (decoded with the event's schema, redacted, re-encoded).
//!
//! Rates are per CPU second of the benchmark's thread, so they hold on a busy machine.
//!
//! `cargo bench -p fanner --bench router` (set `FANNER_BENCH_SECONDS` to run longer; `-- filter`
//! runs only the gate cases whose label holds `filter`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use api::{Route, RouteTable, RouteTarget};
use bytes::Bytes;
use chrono::Utc;
use fanner::gate::{Decision, RecordGate};
use fanner::router::{self, RouteIndex, Routing};
use prost::Message;
use rand::{Rng, SeedableRng};

const EVENTS: usize = 1000;
const ROUTED_EVENTS: usize = 100;
const SUBSCRIPTIONS: usize = 100;
const RECORDS: usize = 100_000;
const BATCH: usize = 1000;

fn table(
    rng: &mut impl Rng,
    schema: Option<&api::RouteSchema>,
    dress: impl Fn(usize, &mut RouteTarget),
) -> RouteTable {
    let names: Vec<String> = (0..EVENTS)
        .map(|n| format!("domain.event_{n:04}"))
        .collect();
    let mut routes: Vec<Route> = names[..ROUTED_EVENTS]
        .iter()
        .map(|event| Route {
            event: event.clone(),
            payload_schema: schema.cloned(),
            targets: Vec::new(),
        })
        .collect();
    // Each subscription names one to three of the routed events; some access ends, some never.
    for s in 0..SUBSCRIPTIONS {
        for _ in 0..rng.random_range(1..=3) {
            let route = &mut routes[rng.random_range(0..ROUTED_EVENTS)];
            let mut target = RouteTarget {
                subscription_id: format!("sub-{s:03}"),
                stream: format!("stream-{s:03}"),
                backing_name: format!("fanner-stream-{s:03}"),
                owner: format!("team-{}", s % 20),
                access_expires_at: (s % 3 == 0).then(|| Utc::now() + chrono::Duration::days(30)),
                ..Default::default()
            };
            dress(s, &mut target);
            route.targets.push(target);
        }
    }
    RouteTable {
        revision: 1,
        generated_at: Utc::now(),
        known_events: names,
        routes,
    }
}

/// What a payload is: filler, a JSON object of a signup, or opaque (protobuf) bytes.
#[derive(Clone, Copy)]
enum Payload {
    Filler,
    Json,
    Protobuf,
}

fn json_payload(rng: &mut impl Rng, room: usize) -> Vec<u8> {
    let country = ["US", "CA", "GB", "DE", "FR", "JP"][rng.random_range(0..6)];
    let plan = ["pro", "professional", "free"][rng.random_range(0..3)];
    let mut payload = serde_json::json!({
        "country": country,
        "age": rng.random_range(12..90),
        "plan": plan,
        "email": format!("user{}@example.com", rng.random_range(0..1_000_000)),
        "ssn": format!("{:03}-{:02}-{:04}", rng.random_range(0..1000), rng.random_range(0..100), rng.random_range(0..10000)),
        "card": {"number": "4111111111111111", "exp": "12/30"},
        "flags": {"beta": rng.random_bool(0.5)},
        "notes": "",
    });
    let size = payload.to_string().len();
    payload["notes"] = serde_json::Value::String("n".repeat(room.saturating_sub(size)));
    payload.to_string().into_bytes()
}

/// The signup of [`json_payload`] as a `bench.Signup` (see [`signup_schema`]).
fn protobuf_payload(rng: &mut impl Rng, room: usize) -> Vec<u8> {
    use prost::encoding::{bool as boolean, bytes, int32, string};
    let mut card = Vec::new();
    string::encode(1, &"4111111111111111".to_owned(), &mut card);
    string::encode(2, &"12/30".to_owned(), &mut card);
    let mut flags = Vec::new();
    boolean::encode(1, &rng.random_bool(0.5), &mut flags);
    let mut payload = Vec::new();
    let country = ["US", "CA", "GB", "DE", "FR", "JP"][rng.random_range(0..6)];
    string::encode(1, &country.to_owned(), &mut payload);
    int32::encode(2, &rng.random_range(12..90), &mut payload);
    string::encode(3, &"pro".to_owned(), &mut payload);
    let email = format!("user{}@example.com", rng.random_range(0..1_000_000));
    string::encode(4, &email, &mut payload);
    let ssn = format!(
        "{:03}-{:02}-{:04}",
        rng.random_range(0..1000),
        rng.random_range(0..100),
        rng.random_range(0..10000)
    );
    string::encode(5, &ssn, &mut payload);
    bytes::encode(6, &card, &mut payload);
    bytes::encode(7, &flags, &mut payload);
    let notes = "n".repeat(room.saturating_sub(payload.len() + 3));
    string::encode(8, &notes, &mut payload);
    payload
}

/// `bench.Signup { country, age, plan, email, ssn, Card card, Flags flags, notes }`.
fn signup_schema() -> api::RouteSchema {
    use base64::Engine as _;
    use prost_types::field_descriptor_proto::{Label, Type};
    use prost_types::{
        DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet,
    };
    let field = |name: &str, number: i32, ty: Type, message: Option<&str>| FieldDescriptorProto {
        name: Some(name.to_owned()),
        json_name: Some(name.to_owned()),
        number: Some(number),
        r#type: Some(ty as i32),
        type_name: message.map(str::to_owned),
        label: Some(Label::Optional as i32),
        ..Default::default()
    };
    let message = |name: &str, fields: Vec<FieldDescriptorProto>| DescriptorProto {
        name: Some(name.to_owned()),
        field: fields,
        ..Default::default()
    };
    let file = FileDescriptorProto {
        name: Some("bench.proto".to_owned()),
        package: Some("bench".to_owned()),
        syntax: Some("proto3".to_owned()),
        message_type: vec![
            message(
                "Card",
                vec![
                    field("number", 1, Type::String, None),
                    field("exp", 2, Type::String, None),
                ],
            ),
            message("Flags", vec![field("beta", 1, Type::Bool, None)]),
            message(
                "Signup",
                vec![
                    field("country", 1, Type::String, None),
                    field("age", 2, Type::Int32, None),
                    field("plan", 3, Type::String, None),
                    field("email", 4, Type::String, None),
                    field("ssn", 5, Type::String, None),
                    field("card", 6, Type::Message, Some(".bench.Card")),
                    field("flags", 7, Type::Message, Some(".bench.Flags")),
                    field("notes", 8, Type::String, None),
                ],
            ),
        ],
        ..Default::default()
    };
    api::RouteSchema {
        message: "bench.Signup".to_owned(),
        descriptor_set: base64::engine::general_purpose::STANDARD
            .encode(FileDescriptorSet { file: vec![file] }.encode_to_vec()),
    }
}

fn envelopes(table: &RouteTable, rng: &mut impl Rng, payload: Payload) -> Vec<Bytes> {
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
                history_id: Default::default(),
            };
            let room = 1024usize.saturating_sub(envelope.encoded_len() + 3);
            envelope.payload = match payload {
                Payload::Filler => vec![b'x'; room],
                Payload::Json => json_payload(rng, room),
                Payload::Protobuf => protobuf_payload(rng, room),
            };
            if matches!(payload, Payload::Json) {
                envelope.content_type = "application/json".to_owned();
            } else if matches!(payload, Payload::Protobuf) {
                envelope.content_type = "application/x-protobuf".to_owned();
            }
            Bytes::from(envelope.encode_to_vec())
        })
        .collect()
}

/// CPU time this thread has used, from `/proc/thread-self/stat` (user + system, in the
/// kernel's 100 Hz ticks): rates per CPU second hold on a busy machine, wall-clock rates do not.
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Runs `pass` over every record until `duration` is used up; returns records per CPU second
/// of this thread (per wall-clock second where CPU time cannot be read).
fn measure(records: &[Bytes], duration: Duration, mut pass: impl FnMut(&Bytes) -> usize) -> f64 {
    let started = Instant::now();
    let cpu_before = thread_cpu();
    let mut done = 0usize;
    let mut deliveries = 0usize;
    while started.elapsed() < duration {
        for record in records {
            deliveries += pass(record);
        }
        done += records.len();
    }
    black_box(deliveries);
    let spent = match (cpu_before, thread_cpu()) {
        (Some(before), Some(after)) if after > before => after - before,
        _ => started.elapsed(),
    };
    done as f64 / spent.as_secs_f64()
}

fn main() {
    let seconds: u64 = std::env::var("FANNER_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let duration = Duration::from_secs(seconds);
    // `cargo bench --bench router -- <words>`: only the gate cases whose label holds them.
    if let Some(only) = std::env::args().skip(1).find(|a| !a.starts_with("--")) {
        gated(duration, &only);
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let table = table(&mut rng, None, |_, _| {});
    let index = RouteIndex::compile(&table);
    let records = envelopes(&table, &mut rng, Payload::Filler);
    let now = Utc::now();
    let average = records.iter().map(Bytes::len).sum::<usize>() / records.len();

    let routed = records
        .iter()
        .filter(|r| match proto::EnvelopeHead::read(r) {
            Ok(head) => matches!(router::route(head.event_name.as_bytes(), &index, now), Routing::Known(routed) if routed.deliveries().next().is_some()),
            Err(_) => false,
        })
        .count();
    println!(
        "router: {RECORDS} envelopes of {average} bytes, {EVENTS} events, {SUBSCRIPTIONS} subscriptions, \
         {:.1}% routed somewhere",
        100.0 * routed as f64 / RECORDS as f64
    );

    // Hot: the engine routes a read batch right after reading it, so its records are in cache.
    // Cold: every record comes from memory (100 MB of envelopes), the worst case.
    let hot = &records[..BATCH];
    for (label, set) in [
        ("hot, one 1,000-record batch", hot),
        ("cold, 100 MB of records", &records[..]),
    ] {
        let rate = measure(set, duration, |record| {
            match proto::EnvelopeHead::read(black_box(record)) {
                Ok(head) => match router::route(head.event_name.as_bytes(), &index, now) {
                    Routing::Known(routed) => routed.deliveries().count(),
                    Routing::Unknown => 0,
                },
                Err(_) => 0,
            }
        });
        println!(
            "router: EnvelopeHead + route ({label}): {:>6.2} M events/s on one core",
            rate / 1e6
        );
        let rate = measure(set, duration, |record| {
            proto::EnvelopeHead::read(black_box(record)).map_or(0, |h| h.event_name.len())
        });
        println!(
            "router:   EnvelopeHead only   ({label}): {:>6.2} M events/s",
            rate / 1e6
        );
        let rate = measure(set, duration, |record| {
            proto::Envelope::decode(black_box(record.clone())).map_or(0, |e| e.event_name.len())
        });
        println!(
            "router:   a full prost decode ({label}): {:>6.2} M events/s, for comparison",
            rate / 1e6
        );
    }
    let names: Vec<Bytes> = records
        .iter()
        .filter_map(|r| {
            proto::EnvelopeHead::read(r)
                .ok()
                .map(|h| r.slice_ref(h.event_name.as_bytes()))
        })
        .collect();
    let rate = measure(&names, duration, |name| {
        match router::route(black_box(name), &index, now) {
            Routing::Known(routed) => routed.deliveries().count(),
            Routing::Unknown => 0,
        }
    });
    println!(
        "router:   route only, by name: {:>6.2} M events/s",
        rate / 1e6
    );

    gated(duration, "");
}

/// Route, then judge every delivery at the gate, as the engine does: deliveries per record.
fn route_and_gate(record: &Bytes, index: &RouteIndex, now: chrono::DateTime<Utc>) -> usize {
    match proto::EnvelopeHead::read(black_box(record)) {
        Ok(head) => match router::route(head.event_name.as_bytes(), index, now) {
            Routing::Known(routed) => {
                let mut gate = RecordGate::new(record);
                routed
                    .deliveries()
                    .filter(|slot| matches!(gate.decide(slot), Decision::Deliver(_)))
                    .count()
            }
            Routing::Unknown => 0,
        },
        Err(_) => 0,
    }
}

fn routes_somewhere(record: &Bytes, index: &RouteIndex, now: chrono::DateTime<Utc>) -> bool {
    proto::EnvelopeHead::read(record).is_ok_and(|head| {
        matches!(router::route(head.event_name.as_bytes(), index, now),
            Routing::Known(routed) if routed.deliveries().next().is_some())
    })
}

fn gated(duration: Duration, only: &str) {
    // Ten conditions over JSON payload fields.
    let filter = serde_json::json!({"payload": {
        "country": ["US", "CA", "GB", "DE", "FR"],
        "age": [{"numeric": [">=", 18, "<", 120]}],
        "plan": [{"prefix": "pro"}],
        "email": [{"suffix": "@example.com"}],
        "card": {"exp": [{"exists": true}]},
        "flags": {"beta": [true]},
    }});
    let filtered = |s: usize, target: &mut RouteTarget| {
        if s.is_multiple_of(5) {
            target.filter = Some(filter.clone());
        }
    };
    let redacted = |_: usize, target: &mut RouteTarget| {
        target.redact = ["payload.card.number", "payload.email", "payload.ssn"]
            .map(str::to_owned)
            .to_vec();
        target.redact_mode = api::RedactMode::Hash;
        target.redact_key = Some("00112233445566778899aabbccddeeff".to_owned());
    };
    type Dress<'a> = &'a dyn Fn(usize, &mut RouteTarget);
    let cases: [(&str, Dress<'_>, Payload); 4] = [
        (
            "no filters, no redaction (zero-copy)",
            &|_, _| {},
            Payload::Json,
        ),
        (
            "20 of 100 subscriptions with a 10-condition JSON filter",
            &filtered,
            Payload::Json,
        ),
        (
            "every grant hashes 3 JSON payload fields",
            &redacted,
            Payload::Json,
        ),
        (
            "protobuf payloads under that grant, with the event's schema",
            &redacted,
            Payload::Protobuf,
        ),
    ];
    for (label, dress, payload) in cases.into_iter().filter(|(label, ..)| label.contains(only)) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let schema = matches!(payload, Payload::Protobuf).then(signup_schema);
        let table = table(&mut rng, schema.as_ref(), dress);
        let index = RouteIndex::compile(&table);
        let records = envelopes(&table, &mut rng, payload);
        let now = Utc::now();
        // Records some stream receives: the gate's whole cost lands on them.
        let routed: Vec<Bytes> = records
            .iter()
            .filter(|r| routes_somewhere(r, &index, now))
            .take(BATCH)
            .cloned()
            .collect();
        let rate = measure(&records[..BATCH], duration, |record| {
            route_and_gate(record, &index, now)
        });
        let routed_rate = measure(&routed, duration, |record| {
            route_and_gate(record, &index, now)
        });
        println!(
            "gate: EnvelopeHead + route + gate, {label}: {:>6.2} M events/s on one core \
             ({:.2} M/s over records routed somewhere)",
            rate / 1e6,
            routed_rate / 1e6
        );
    }
}
