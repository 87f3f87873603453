//! The pure part: which records of a batch a hydration delivers, and in what form. The filter,
//! redaction and delivery format are live delivery's own (`fanner::gate`), applied to the same
//! slot, so history is exactly what live delivery would have sent.

use api::{DeliveryFormat, HydrationTask};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use fanner::gate::{Decision, RecordGate};
use fanner::router::RouteIndex;
use streams::PutRecord;

use crate::deliver;

/// What [`select`] takes of a batch.
#[derive(Debug, Default)]
pub struct Selection {
    /// Marked with the task's id, keyed by event id as live delivery keys them.
    pub records: Vec<PutRecord>,
    /// Some record's event is no longer readable by the stream (a grant revoked or expired).
    pub denied: bool,
    /// Records the subscription's filter did not match.
    pub filtered: u64,
}

/// The records of `data` that `task` delivers as of `table` at `now`: its events, still
/// readable by its stream, with event times in its window and at or after what the grant allows,
/// passing the stream's filter, redacted and formatted as live delivery does.
pub fn select<'a>(
    task: &HydrationTask,
    table: &RouteIndex,
    now: DateTime<Utc>,
    data: impl Iterator<Item = &'a Bytes>,
) -> Selection {
    let mut selection = Selection::default();
    for record in data {
        let Ok(envelope) = proto::EnvelopeRef::decode(record) else {
            continue;
        };
        if !task.events.iter().any(|e| e == envelope.event_name) {
            continue;
        }
        let Some(slot) = table.permits(envelope.event_name.as_bytes(), &task.backing_name, now)
        else {
            selection.denied = true;
            continue;
        };
        let event_time = envelope
            .event_time
            .as_ref()
            .and_then(api::envelope::timestamp_to_utc);
        if !in_window(event_time, task.from, task.to, slot.history_from) {
            continue;
        }
        let Decision::Deliver(bytes) = RecordGate::new(record).decide(slot) else {
            selection.filtered += 1;
            continue;
        };
        // A payload alone has no envelope to carry the mark.
        let envelope_format = slot
            .gate
            .as_deref()
            .is_none_or(|gate| gate.format() == DeliveryFormat::Envelope);
        let key = fanner::partition_key(record, envelope.event_id.as_bytes());
        selection.records.push(PutRecord {
            partition_key: String::from_utf8_lossy(&key).into_owned(),
            data: if envelope_format {
                deliver::mark(&bytes, &task.id)
            } else {
                bytes
            },
        });
    }
    selection
}

/// Whether an event time lies in the task's window and in what the grant allows.
fn in_window(
    event_time: Option<DateTime<Utc>>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    history_from: Option<DateTime<Utc>>,
) -> bool {
    let lower = match (from, history_from) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    match event_time {
        Some(at) => lower.is_none_or(|lower| at >= lower) && to.is_none_or(|to| at < to),
        None => lower.is_none() && to.is_none(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn windows() {
        let at = |h: u32| Utc.with_ymd_and_hms(2026, 1, 1, h, 0, 0).single();
        let check = |time, from, to, history, expected: bool| {
            assert_eq!(
                in_window(time, from, to, history),
                expected,
                "{time:?} in [{from:?}, {to:?}) from {history:?}"
            );
        };
        check(at(5), None, None, None, true);
        check(at(5), at(5), None, None, true);
        check(at(4), at(5), None, None, false);
        check(at(5), None, at(5), None, false);
        check(at(5), at(1), None, at(6), false);
        check(at(6), at(1), None, at(6), true);
        check(at(6), at(7), None, at(1), false);
        check(None, None, None, None, true);
        check(None, at(1), None, None, false);
        check(None, None, None, at(1), false);
    }
}
