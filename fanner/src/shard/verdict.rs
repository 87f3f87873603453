//! The pure part of a worker: what one record is (a delivery, unrouted, or a dead letter), the
//! partition key it gets, whether a queued delivery may still be written, and outcome counts.

use super::*;

/// Whether a queued delivery may still be written: access is re-checked against the newest
/// table, so a revoked or expired grant stops deliveries that were queued before it ended.
pub(super) fn still_allowed(
    table: &RouteIndex,
    now: DateTime<Utc>,
    delivery: &Delivery,
    target: &str,
) -> bool {
    if delivery.subscription.is_none() {
        return true;
    }
    if delivery.revision == table.revision {
        return delivery.access_expires_at.is_none_or(|until| until > now);
    }
    table.permits(&delivery.event, target, now).is_some()
}

/// What to do with one GES record.
pub(super) enum Verdict<'t> {
    Deliver {
        /// The event name, a slice of the record.
        event: Bytes,
        routed: router::Routed<'t>,
        key: Bytes,
    },
    /// A catalog event nobody subscribed to.
    Unrouted {
        /// The event name, a slice of the record.
        event: Bytes,
    },
    Bad {
        reason: Reason,
        detail: String,
        /// From the envelope, when it could be read.
        event_name: Option<String>,
        event_id: Option<String>,
        /// Subscribed streams that would have received it.
        intended: Vec<&'t router::Slot>,
    },
}

impl Verdict<'_> {
    /// The catalog event the record carries, whether or not it is delivered anywhere.
    pub(super) fn catalog_event(&self) -> Option<Bytes> {
        match self {
            Verdict::Deliver { event, .. } | Verdict::Unrouted { event } => Some(event.clone()),
            Verdict::Bad {
                reason: Reason::Oversize,
                event_name: Some(name),
                ..
            } => Some(Bytes::from(name.clone())),
            Verdict::Bad { .. } => None,
        }
    }
}

pub(super) fn judge<'t>(record: &Record, table: &'t RouteIndex, now: DateTime<Utc>) -> Verdict<'t> {
    let not_an_envelope = |detail: String| Verdict::Bad {
        reason: Reason::NotAnEnvelope,
        detail,
        event_name: None,
        event_id: None,
        intended: Vec::new(),
    };
    let head = match proto::EnvelopeHead::read(&record.data) {
        Ok(head) if head.event_name.is_empty() => {
            return not_an_envelope("the envelope has no event name".to_owned());
        }
        Ok(head) => head,
        Err(error) => return not_an_envelope(format!("not a protobuf envelope: {error}")),
    };
    let owned = |text: &str| Some(text.to_owned());
    let routed = match router::route(head.event_name.as_bytes(), table, now) {
        Routing::Unknown => {
            return Verdict::Bad {
                reason: Reason::UnknownEvent,
                detail: format!("event {:?} is not in the catalog", head.event_name),
                event_name: owned(head.event_name),
                event_id: owned(head.event_id),
                intended: Vec::new(),
            };
        }
        Routing::Known(routed) => routed,
    };
    if routed.deliveries().next().is_none() && routed.denied().next().is_none() {
        return Verdict::Unrouted {
            event: record.data.slice_ref(head.event_name.as_bytes()),
        };
    }
    let key = partition_key(&record.data, head.event_id.as_bytes());
    let size = record.data.len() + key.len();
    if size > MAX_RECORD_BYTES {
        return Verdict::Bad {
            reason: Reason::Oversize,
            detail: format!(
                "{size} bytes with the partition key; a stream record holds at most {MAX_RECORD_BYTES}"
            ),
            event_name: owned(head.event_name),
            event_id: owned(head.event_id),
            intended: routed.deliveries().collect(),
        };
    }
    Verdict::Deliver {
        event: record.data.slice_ref(head.event_name.as_bytes()),
        routed,
        key,
    }
}

/// The partition key on consumer streams: the envelope's event id (a slice of `data`), which
/// publishing makes a random UUID, so records spread evenly over shards and a record delivered
/// twice lands on the same shard as the first copy; a random key when the id is empty or too
/// long.
pub fn partition_key(data: &Bytes, event_id: &[u8]) -> Bytes {
    if !event_id.is_empty() && event_id.len() <= MAX_PARTITION_KEY_CHARS {
        data.slice_ref(event_id)
    } else {
        Bytes::from(format!("{:032x}", rand::random::<u128>()))
    }
}

#[derive(Clone, Copy)]
pub(super) enum Count {
    Delivered,
    Denied,
    Retried,
    DeadLettered,
    /// The subscription's filter did not match.
    Filtered,
}

/// Per-subscription counts of one batch, added to the metrics once.
#[derive(Default)]
pub(super) struct Tally {
    counts: HashMap<(Arc<str>, Arc<str>), [u64; 5]>,
}

impl Tally {
    pub(super) fn add(&mut self, subscription: &Arc<str>, stream: &Arc<str>, count: Count) {
        self.counts
            .entry((subscription.clone(), stream.clone()))
            .or_default()[count as usize] += 1;
    }

    pub(super) fn flush(self) {
        const NAMES: [&str; 5] = [
            "fanner_engine_delivered_records_total",
            "fanner_engine_denied_records_total",
            "fanner_engine_retried_records_total",
            "fanner_engine_dead_lettered_records_total",
            "fanner_engine_filtered_records_total",
        ];
        for ((subscription, stream), counts) in self.counts {
            for (name, count) in NAMES.iter().zip(counts) {
                if count > 0 {
                    metrics::counter!(*name, "subscription" => subscription.to_string(), "stream" => stream.to_string())
                        .increment(count);
                }
            }
        }
    }
}

pub(super) fn count_pairs(name: &'static str, pairs: Vec<(Arc<str>, Arc<str>)>) {
    for (subscription, stream) in pairs {
        metrics::counter!(name, "subscription" => subscription.to_string(), "stream" => stream.to_string())
            .increment(1);
    }
}
