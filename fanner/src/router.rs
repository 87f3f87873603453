//! The pure core: what a GES record is, and which consumer streams receive it now.
//!
//! Nothing here does IO. [`RouteIndex`] is a route table compiled for lookups; [`read_head`]
//! reads the two envelope fields routing needs; [`route`] decides.

use std::collections::HashMap;
use std::sync::Arc;

use api::RouteTable;
use chrono::{DateTime, Utc};

/// A consumer stream that appears in a route table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The backing stream's name in the backend: the engine's identity for a target.
    pub backing_name: Arc<str>,
    /// The Fanner stream's name.
    pub stream: Arc<str>,
    /// Every subscription that delivers to this stream, for status reports.
    pub subscriptions: Vec<String>,
}

/// One consumer stream that may receive an event, and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Index into [`RouteIndex::targets`].
    pub target: usize,
    /// The subscription deliveries are counted against.
    pub subscription: Arc<str>,
    /// Delivery must stop at this instant; `None` never ends (the owner's own events).
    pub access_expires_at: Option<DateTime<Utc>>,
}

impl Slot {
    /// Deny by default: access that ends at or before `now` is over.
    pub fn allows(&self, now: DateTime<Utc>) -> bool {
        self.access_expires_at.is_none_or(|until| until > now)
    }
}

/// A route table ready for lookups by event name.
#[derive(Debug, Default)]
pub struct RouteIndex {
    pub revision: i64,
    pub generated_at: DateTime<Utc>,
    /// Every known event, with the streams that may receive it (possibly none). foldhash: the
    /// lookup runs once per GES record, and SipHash costs a third of it.
    events: HashMap<Box<[u8]>, Box<[Slot]>, foldhash::fast::RandomState>,
    targets: Vec<Target>,
    by_backing: HashMap<Arc<str>, usize>,
}

impl RouteIndex {
    /// Compiles `table`. A stream named by several subscriptions for the same event receives it
    /// once, under the subscription whose access lasts longest.
    pub fn compile(table: &RouteTable) -> RouteIndex {
        let mut index = RouteIndex {
            revision: table.revision,
            generated_at: table.generated_at,
            ..RouteIndex::default()
        };
        for event in &table.known_events {
            index
                .events
                .entry(event.as_bytes().into())
                .or_insert_with(|| Box::new([]));
        }
        for route in &table.routes {
            let mut slots: Vec<Slot> = Vec::with_capacity(route.targets.len());
            for target in &route.targets {
                let position = match index.by_backing.get(target.backing_name.as_str()) {
                    Some(&position) => position,
                    None => {
                        let name: Arc<str> = target.backing_name.as_str().into();
                        index.targets.push(Target {
                            backing_name: name.clone(),
                            stream: target.stream.as_str().into(),
                            subscriptions: Vec::new(),
                        });
                        index.by_backing.insert(name, index.targets.len() - 1);
                        index.targets.len() - 1
                    }
                };
                let subscriptions = &mut index.targets[position].subscriptions;
                if !subscriptions.contains(&target.subscription_id) {
                    subscriptions.push(target.subscription_id.clone());
                }
                let slot = Slot {
                    target: position,
                    subscription: target.subscription_id.as_str().into(),
                    access_expires_at: target.access_expires_at,
                };
                match slots.iter_mut().find(|s| s.target == position) {
                    Some(existing) if lasts_longer(&slot, existing) => *existing = slot,
                    Some(_) => {}
                    None => slots.push(slot),
                }
            }
            index
                .events
                .insert(route.event.as_bytes().into(), slots.into_boxed_slice());
        }
        index
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    pub fn target(&self, backing_name: &str) -> Option<&Target> {
        self.by_backing
            .get(backing_name)
            .map(|&position| &self.targets[position])
    }

    /// The slot through which `backing_name` receives `event` now, if it still may.
    pub fn permits(&self, event: &[u8], backing_name: &str, now: DateTime<Utc>) -> Option<&Slot> {
        let position = *self.by_backing.get(backing_name)?;
        self.events
            .get(event)?
            .iter()
            .find(|slot| slot.target == position && slot.allows(now))
    }

    fn slots(&self, event: &[u8]) -> Option<&[Slot]> {
        self.events.get(event).map(|slots| &**slots)
    }
}

fn lasts_longer(a: &Slot, b: &Slot) -> bool {
    match (a.access_expires_at, b.access_expires_at) {
        (None, Some(_)) => true,
        (Some(a), Some(b)) => a > b,
        _ => false,
    }
}

/// Where an event goes.
#[derive(Clone, Copy, Debug)]
pub enum Routing<'t> {
    /// The event is not in the catalog: the record is dead-lettered.
    Unknown,
    /// A catalog event, with every stream subscribed to it (possibly none).
    Known(Routed<'t>),
}

/// The subscribed streams of one event, judged at one instant.
#[derive(Clone, Copy, Debug)]
pub struct Routed<'t> {
    slots: &'t [Slot],
    now: DateTime<Utc>,
}

impl<'t> Routed<'t> {
    /// The streams that receive the event.
    pub fn deliveries(&self) -> impl Iterator<Item = &'t Slot> + use<'t> {
        let now = self.now;
        self.slots.iter().filter(move |slot| slot.allows(now))
    }

    /// The streams whose access to the event has ended.
    pub fn denied(&self) -> impl Iterator<Item = &'t Slot> + use<'t> {
        let now = self.now;
        self.slots.iter().filter(move |slot| !slot.allows(now))
    }
}

/// Routes an event by name at `now`.
pub fn route<'t>(event_name: &[u8], table: &'t RouteIndex, now: DateTime<Utc>) -> Routing<'t> {
    match table.slots(event_name) {
        None => Routing::Unknown,
        Some(slots) => Routing::Known(Routed { slots, now }),
    }
}

/// The routing fields of an envelope, borrowed from the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head<'a> {
    /// UTF-8, possibly empty.
    pub event_id: &'a [u8],
    /// UTF-8, never empty.
    pub event_name: &'a [u8],
}

/// The highest field number of `fanner.v1.Envelope`; every field up to it is length-delimited.
const ENVELOPE_FIELDS: u64 = 11;
const EVENT_ID: u64 = 1;
const EVENT_NAME: u64 = 2;

/// Reads the routing fields of a GES record without decoding (or copying) the rest, which is
/// what makes routing cheap: consumers get the bytes as they are and decode them themselves.
///
/// `Err` says why the record is not an envelope: its protobuf framing is broken, a field of
/// `fanner.v1.Envelope` has the wrong wire type, the event id or name is not UTF-8, or the name
/// is empty. Unknown fields are skipped, as protobuf readers do. The contents of the other
/// fields are not checked; a record the control plane's publish wrote always decodes in full.
pub fn read_head(data: &[u8]) -> Result<Head<'_>, String> {
    let mut rest = data;
    let mut head = Head {
        event_id: &[],
        event_name: &[],
    };
    // Field numbers of the groups being skipped (a deprecated encoding, but valid protobuf).
    let mut groups: Vec<u64> = Vec::new();
    while !rest.is_empty() {
        let key = varint(&mut rest).ok_or_else(|| broken("a truncated field key"))?;
        let (field, wire_type) = (key >> 3, key & 7);
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(broken(&format!("field number {field}")));
        }
        let top = groups.is_empty();
        if top && field <= ENVELOPE_FIELDS && wire_type != 2 {
            return Err(broken(&format!("field {field} with wire type {wire_type}")));
        }
        match wire_type {
            0 => {
                varint(&mut rest).ok_or_else(|| broken("a truncated varint"))?;
            }
            1 | 5 => {
                let width = if wire_type == 1 { 8 } else { 4 };
                rest = rest
                    .get(width..)
                    .ok_or_else(|| broken("a truncated fixed-width field"))?;
            }
            2 => {
                let length = varint(&mut rest)
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| broken("a truncated length"))?;
                if length > rest.len() {
                    return Err(broken(&format!("field {field} longer than the record")));
                }
                let (value, after) = rest.split_at(length);
                match field {
                    EVENT_ID if top => head.event_id = value,
                    EVENT_NAME if top => head.event_name = value,
                    _ => {}
                }
                rest = after;
            }
            3 => groups.push(field),
            4 if groups.last() == Some(&field) => {
                groups.pop();
            }
            _ => return Err(broken(&format!("wire type {wire_type}"))),
        }
    }
    if !groups.is_empty() {
        return Err(broken("an unterminated group"));
    }
    if head.event_name.is_empty() {
        return Err("the envelope has no event name".to_owned());
    }
    if std::str::from_utf8(head.event_name).is_err() {
        return Err("the envelope's event name is not UTF-8".to_owned());
    }
    if std::str::from_utf8(head.event_id).is_err() {
        return Err("the envelope's event id is not UTF-8".to_owned());
    }
    Ok(head)
}

fn broken(what: &str) -> String {
    format!("not a protobuf envelope: {what}")
}

/// A base-128 varint (at most 10 bytes), advancing `buf`.
fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (index, &byte) in buf.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte < 0x80 {
            *buf = &buf[index + 1..];
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use api::{Route, RouteTarget};
    use chrono::Duration;

    use super::*;

    fn target(subscription: &str, stream: &str, until: Option<DateTime<Utc>>) -> RouteTarget {
        RouteTarget {
            subscription_id: subscription.to_owned(),
            stream: stream.to_owned(),
            backing_name: format!("fanner-{stream}"),
            owner: "team".to_owned(),
            access_expires_at: until,
        }
    }

    /// What [`route`] should decide: `None` for unknown, else delivered and denied streams.
    type Expected<'a> = Option<(&'a [&'a str], &'a [&'a str])>;

    #[test]
    fn routing() {
        let now = Utc::now();
        let soon = now + Duration::seconds(5);
        let past = now - Duration::seconds(5);
        let odd = "你好/😊";
        let long = "e".repeat(1024 * 1024);
        let table = RouteIndex::compile(&RouteTable {
            revision: 7,
            generated_at: now,
            known_events: [
                "signup", "swipe", "quiet", "my table", odd, "../x", "dup", "order",
            ]
            .map(str::to_owned)
            .to_vec(),
            routes: vec![
                Route {
                    event: "signup".to_owned(),
                    targets: vec![
                        target("s1", "fraud", Some(soon)),
                        target("s2", "growth", None),
                    ],
                },
                Route {
                    event: "swipe".to_owned(),
                    targets: vec![target("s3", "fraud", Some(past))],
                },
                Route {
                    event: "my table".to_owned(),
                    targets: vec![target("s4", "weird", None)],
                },
                Route {
                    event: odd.to_owned(),
                    targets: vec![target("s5", "weird", None)],
                },
                Route {
                    event: "../x".to_owned(),
                    targets: vec![target("s6", "weird", Some(now))],
                },
                // Two subscriptions of one stream: delivered once, under the longer access.
                Route {
                    event: "dup".to_owned(),
                    targets: vec![
                        target("s7", "fraud", Some(past)),
                        target("s8", "fraud", Some(soon)),
                    ],
                },
                // Subscriptions of one stream, one expired, one for good: delivered once.
                Route {
                    event: "order".to_owned(),
                    targets: vec![
                        target("s9", "growth", Some(soon)),
                        target("s10", "growth", None),
                    ],
                },
            ],
        });

        #[track_caller]
        fn check(table: &RouteIndex, event: &str, now: DateTime<Utc>, expected: Expected<'_>) {
            let got = match route(event.as_bytes(), table, now) {
                Routing::Unknown => None,
                Routing::Known(routed) => {
                    let name = |slot: &Slot| table.targets()[slot.target].stream.to_string();
                    Some((
                        routed.deliveries().map(name).collect::<Vec<_>>(),
                        routed.denied().map(name).collect::<Vec<_>>(),
                    ))
                }
            };
            let expected = expected.map(|(delivered, denied)| {
                (
                    delivered
                        .iter()
                        .map(|s| (*s).to_owned())
                        .collect::<Vec<_>>(),
                    denied.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
                )
            });
            assert_eq!(got, expected, "routing {:.40?}", event);
        }

        check(&table, "signup", now, Some((&["fraud", "growth"], &[])));
        check(&table, "signup", soon, Some((&["growth"], &["fraud"])));
        check(&table, "swipe", now, Some((&[], &["fraud"])));
        check(&table, "quiet", now, Some((&[], &[])));
        check(&table, "my table", now, Some((&["weird"], &[])));
        check(&table, odd, now, Some((&["weird"], &[])));
        // Access ending exactly now has ended.
        check(&table, "../x", now, Some((&[], &["weird"])));
        check(&table, "../x", past, Some((&["weird"], &[])));
        check(&table, "dup", now, Some((&["fraud"], &[])));
        check(&table, "order", soon, Some((&["growth"], &[])));
        check(&table, "ghost", now, None);
        check(&table, "", now, None);
        check(&table, "Signup", now, None);
        check(&table, "signup ", now, None);
        check(&table, &long, now, None);

        assert_eq!(
            table
                .target("fanner-fraud")
                .map(|t| t.subscriptions.clone()),
            Some(vec![
                "s1".to_owned(),
                "s3".to_owned(),
                "s7".to_owned(),
                "s8".to_owned()
            ])
        );
        assert!(table.permits(b"signup", "fanner-fraud", now).is_some());
        assert!(table.permits(b"signup", "fanner-fraud", soon).is_none());
        assert!(table.permits(b"swipe", "fanner-growth", now).is_none());
        assert!(table.permits(b"ghost", "fanner-fraud", now).is_none());
    }

    #[test]
    fn heads() {
        use bytes::Bytes;
        use prost::Message;

        let envelope = |id: &str, name: &str| {
            Bytes::from(
                proto::Envelope {
                    event_id: id.to_owned(),
                    event_name: name.to_owned(),
                    producer: "growth".to_owned(),
                    payload: vec![7; 900],
                    attributes: [("k".to_owned(), "v".to_owned())].into(),
                    ..proto::Envelope::default()
                }
                .encode_to_vec(),
            )
        };
        #[track_caller]
        fn check(data: Bytes, expected: Result<(&str, &str), &str>) {
            let got = read_head(&data);
            match (got, expected) {
                (Ok(head), Ok((id, name))) => {
                    assert_eq!(
                        (head.event_id, head.event_name),
                        (id.as_bytes(), name.as_bytes())
                    );
                }
                (Err(message), Err(needle)) => {
                    assert!(
                        message.contains(needle),
                        "{message:?} should mention {needle:?}"
                    );
                }
                (got, expected) => panic!("got {got:?}, expected {expected:?}"),
            }
        }
        check(envelope("e1", "signup"), Ok(("e1", "signup")));
        check(envelope("", "signup"), Ok(("", "signup")));
        check(envelope("😊", "你好/😊"), Ok(("😊", "你好/😊")));
        check(envelope("e1", ""), Err("no event name"));
        check(Bytes::new(), Err("no event name"));
        check(
            Bytes::from_static(b"{\"event\":\"signup\"}"),
            Err("not a protobuf envelope"),
        );
        check(
            Bytes::from_static(&[0x12, 0x05, b's', b'i']),
            Err("not a protobuf envelope"),
        );
        check(
            Bytes::from_static(&[0x12, 0x02, 0xff, 0xfe]),
            Err("not UTF-8"),
        );
        check(
            Bytes::from_static(&[0x0a, 0x01, 0xff, 0x12, 0x01, b'a']),
            Err("event id is not UTF-8"),
        );
        // A known field with the wrong wire type; unknown fields of every wire type are skipped.
        check(
            Bytes::from_static(&[0x18, 0x01, 0x12, 0x01, b'a']),
            Err("field 3 with wire type 0"),
        );
        check(
            Bytes::from_static(&[
                0xa0, 0x01, 0x07, // field 20, varint
                0xa9, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, // field 21, fixed64
                0xb5, 0x01, 1, 2, 3, 4, // field 22, fixed32
                0xbb, 0x01, 0x12, 0x01, b'x', 0xbc,
                0x01, // field 23, a group holding a field 2
                0x12, 0x01, b'a',
            ]),
            Ok(("", "a")),
        );
        check(
            Bytes::from_static(&[0xbb, 0x01, 0x12, 0x01, b'a']),
            Err("unterminated group"),
        );
        check(
            Bytes::from_static(&[
                0x12, 0x01, b'a', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ]),
            Err("truncated"),
        );
        // Truncated anywhere, a real envelope is no longer one.
        let whole = envelope("e1", "signup");
        check(
            whole.slice(..whole.len() - 1),
            Err("not a protobuf envelope"),
        );
    }

    /// Whatever a full decode accepts as an envelope with an event name, `read_head` accepts,
    /// with the same id and name: the engine never dead-letters a real envelope. Random
    /// mutations of a real envelope find the corner cases.
    #[test]
    fn heads_agree_with_a_full_decode() {
        use prost::Message;
        use rand::{Rng, SeedableRng};

        let original = proto::Envelope {
            event_id: "4f1c".to_owned(),
            event_name: "signup".to_owned(),
            event_time: Some(proto::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            }),
            producer: "growth".to_owned(),
            attributes: [("k".to_owned(), "v".to_owned())].into(),
            payload: b"{}".to_vec(),
            ..proto::Envelope::default()
        }
        .encode_to_vec();
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut agreed = 0;
        for _ in 0..20_000 {
            let mut data = original.clone();
            for _ in 0..rng.random_range(1..4) {
                match rng.random_range(0..3) {
                    0 => {
                        let at = rng.random_range(0..data.len());
                        data[at] = rng.random();
                    }
                    1 => data.truncate(rng.random_range(0..data.len())),
                    _ => {
                        let at = rng.random_range(0..=data.len());
                        data.insert(at, rng.random());
                    }
                }
                if data.is_empty() {
                    break;
                }
            }
            if let Ok(full) = proto::Envelope::decode(data.as_slice())
                && !full.event_name.is_empty()
            {
                let head = match read_head(&data) {
                    Ok(head) => head,
                    // prost reads a map field (attributes, 9) whatever its wire type says;
                    // other protobuf readers, and this one, refuse it.
                    Err(error) if error.contains("field 9 with wire type") => continue,
                    Err(error) => panic!("{error}: {data:?} decodes as {full:?}"),
                };
                assert_eq!(head.event_name, full.event_name.as_bytes());
                assert_eq!(head.event_id, full.event_id.as_bytes());
                agreed += 1;
            }
        }
        assert!(
            agreed > 100,
            "the mutations leave enough envelopes intact ({agreed})"
        );
    }
}
