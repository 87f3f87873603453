//! The pure core: what a GES record is, and which consumer streams receive it now.
//!
//! Nothing here does IO. [`RouteIndex`] is a route table compiled for lookups; [`route`]
//! decides. The envelope fields routing needs come from [`proto::EnvelopeHead`].

use std::collections::HashMap;
use std::sync::Arc;

use api::{Handover, RouteTable};
use chrono::{DateTime, Utc};

use crate::gate::{Gate, Redactions, share_payload_reads};

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

/// One consumer stream that may receive an event, until when, and what it receives of it.
#[derive(Clone, Debug)]
pub struct Slot {
    /// Index into [`RouteIndex::targets`].
    pub target: usize,
    /// The subscription deliveries are counted against.
    pub subscription: Arc<str>,
    /// Delivery must stop at this instant; `None` never ends (the owner's own events).
    pub access_expires_at: Option<DateTime<Utc>>,
    /// History older than this (by event time) is not the stream's to receive.
    pub history_from: Option<DateTime<Utc>>,
    /// Set while (and after) the subscription is hydrated: live delivery begins per GES shard
    /// where its hydration ends.
    pub hydration: Option<Arc<api::RouteHydration>>,
    /// Filter, redaction and format ([`crate::gate`]); `None`: the GES bytes, unchanged.
    pub gate: Option<Arc<Gate>>,
}

impl Slot {
    /// Deny by default: access that ends at or before `now` is over.
    pub fn allows(&self, now: DateTime<Utc>) -> bool {
        self.access_expires_at.is_none_or(|until| until > now)
    }

    /// Whether the record at `sequence` of GES shard `shard` is live delivery's to make, not
    /// the hydration's: only records after the shard's hand-over; none before it is chosen;
    /// every record of a shard the finished hydration never reached.
    pub fn live_at(&self, shard: &str, sequence: &str) -> bool {
        let Some(hydration) = &self.hydration else {
            return true;
        };
        match hydration.shards.get(shard) {
            Some(Handover {
                live: true,
                live_after,
                ..
            }) => {
                streams::cmp_position(Some(sequence), live_after.as_deref())
                    == std::cmp::Ordering::Greater
            }
            Some(_) => false,
            None => hydration.done,
        }
    }
}

/// A hydration waiting for the engine to choose where live delivery begins on a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandoverRequest {
    pub hydration: String,
    /// Live delivery must begin after this position, at the earliest (`None`: the start).
    pub after: Option<String>,
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
    /// By GES shard.
    handover_requests: HashMap<String, Vec<HandoverRequest>>,
    /// Start hydrations by id.
    hydrations: HashMap<String, Arc<api::RouteHydration>>,
}

impl RouteIndex {
    /// Compiles `table`. A stream named by several subscriptions for the same event receives it
    /// once, under the subscription whose access lasts longest, when any of their filters
    /// matches. A target whose filter or redaction cannot be applied is left out (deny by
    /// default), and logged.
    pub fn compile(table: &RouteTable) -> RouteIndex {
        let mut redactions = Redactions::default();
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
        let mut hydrations: HashMap<&str, Arc<api::RouteHydration>> = HashMap::new();
        for route in &table.routes {
            let schema = route.payload_schema.as_ref().and_then(|schema| {
                decode_schema(schema)
                    .inspect_err(|error| {
                        // Its protobuf payloads are then withheld from redacting slots.
                        tracing::error!(%error, event = %route.event, "An event's payload schema cannot be read.");
                    })
                    .ok()
                    .map(Arc::new)
            });
            let mut slots: Vec<Slot> = Vec::with_capacity(route.targets.len());
            for target in &route.targets {
                let hydration = target.hydration.as_ref().map(|h| {
                    hydrations
                        .entry(h.id.as_str())
                        .or_insert_with(|| Arc::new(h.clone()))
                        .clone()
                });
                let gate = match Gate::compile(target, schema.as_ref(), &mut redactions) {
                    Ok(gate) => gate.map(Arc::new),
                    Err(error) => {
                        tracing::error!(%error, event = %route.event, subscription = %target.subscription_id, "A route target cannot be served; nothing is delivered to it.");
                        metrics::counter!("fanner_engine_unservable_targets_total").increment(1);
                        continue;
                    }
                };
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
                    history_from: target.history_from,
                    hydration,
                    gate,
                };
                match slots.iter_mut().find(|s| s.target == position) {
                    Some(existing) if lasts_longer(&slot, existing) => {
                        let other = existing.gate.take();
                        *existing = Slot {
                            gate: Gate::merge(slot.gate.clone(), other),
                            ..slot
                        };
                    }
                    Some(existing) => {
                        existing.gate = Gate::merge(existing.gate.take(), slot.gate);
                    }
                    None => slots.push(slot),
                }
            }
            share_payload_reads(&mut slots);
            index
                .events
                .insert(route.event.as_bytes().into(), slots.into_boxed_slice());
        }
        index.hydrations = hydrations
            .iter()
            .map(|(id, h)| ((*id).to_owned(), h.clone()))
            .collect();
        for hydration in hydrations.values().filter(|h| !h.done) {
            for (shard, handover) in hydration.shards.iter().filter(|(_, h)| !h.live) {
                index
                    .handover_requests
                    .entry(shard.clone())
                    .or_default()
                    .push(HandoverRequest {
                        hydration: hydration.id.clone(),
                        after: handover.after.clone(),
                    });
            }
        }
        index
    }

    /// A start hydration by id, while any of its subscription's events is routed.
    pub fn hydration(&self, id: &str) -> Option<&api::RouteHydration> {
        self.hydrations.get(id).map(|h| &**h)
    }

    /// Hydrations waiting for live delivery's start on GES shard `shard`.
    pub fn handover_requests(&self, shard: &str) -> &[HandoverRequest] {
        self.handover_requests
            .get(shard)
            .map(Vec::as_slice)
            .unwrap_or_default()
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

/// Which of two subscriptions of one stream delivers an event: one not waiting for a hydration
/// (it takes every record), else the one whose access lasts longer.
fn decode_schema(schema: &api::RouteSchema) -> Result<proto::PayloadSchema, String> {
    use base64::Engine as _;
    let set = base64::engine::general_purpose::STANDARD
        .decode(&schema.descriptor_set)
        .map_err(|e| format!("descriptor_set is not base64: {e}"))?;
    proto::PayloadSchema::decode(&set, &schema.message).map_err(|e| e.to_string())
}

fn lasts_longer(a: &Slot, b: &Slot) -> bool {
    match (a.hydration.is_some(), b.hydration.is_some()) {
        (false, true) => return true,
        (true, false) => return false,
        _ => {}
    }
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
            history_from: Default::default(),
            hydration: Default::default(),
            ..RouteTarget::default()
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
                    payload_schema: None,
                    targets: vec![
                        target("s1", "fraud", Some(soon)),
                        target("s2", "growth", None),
                    ],
                },
                Route {
                    event: "swipe".to_owned(),
                    payload_schema: None,
                    targets: vec![target("s3", "fraud", Some(past))],
                },
                Route {
                    event: "my table".to_owned(),
                    payload_schema: None,
                    targets: vec![target("s4", "weird", None)],
                },
                Route {
                    event: odd.to_owned(),
                    payload_schema: None,
                    targets: vec![target("s5", "weird", None)],
                },
                Route {
                    event: "../x".to_owned(),
                    payload_schema: None,
                    targets: vec![target("s6", "weird", Some(now))],
                },
                // Two subscriptions of one stream: delivered once, under the longer access.
                Route {
                    event: "dup".to_owned(),
                    payload_schema: None,
                    targets: vec![
                        target("s7", "fraud", Some(past)),
                        target("s8", "fraud", Some(soon)),
                    ],
                },
                // Subscriptions of one stream, one expired, one for good: delivered once.
                Route {
                    event: "order".to_owned(),
                    payload_schema: None,
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
}
