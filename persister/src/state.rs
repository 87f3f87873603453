//! One shard's buffers and its checkpoint: the bookkeeping behind exactly-once objects.
//!
//! # The invariant
//!
//! A *cut* is the set of a shard's records of one target (partition or error directory) whose
//! sequence numbers lie in `first..=last`. Its object key is a function of the shard, the
//! target, `first`, `last` and the format, so writing the same cut twice replaces the object
//! instead of adding one. The checkpoint stored in the shard's lease is
//!
//! * `after`: the low-water mark. Every record at or before it is in a written object.
//! * `cuts`: every cut with `last > after`, each marked written (`done`) or not.
//!
//! and the rules that keep "every record in exactly one object" true across crashes are:
//!
//! 1. A cut is recorded in the checkpoint **before** its object is written, so an object
//!    written by a process that then died is always known to the next owner. Checkpoint
//!    writes are fenced by the lease: a process that lost its lease cannot record a cut, and so
//!    never writes an object the next owner does not know about.
//! 2. A cut takes *all* buffered records of its target, so a target's records after the
//!    low-water mark are, in order: recorded cuts, then records that are in no object.
//! 3. The low-water mark only passes a record once the cut holding it is written.
//!
//! On restart the shard is read again after `after`, and every record is classified by the
//! same pure function as before (its reference time is the record's arrival time, not the
//! clock). A record inside a written cut is skipped; a record inside an unwritten cut is
//! collected again and, once the cut's `last` record is back, the identical object is written
//! under the identical key; any other record is buffered as new. Partitions may be written at
//! different times, in any order, and a crash may come between any two steps.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use streams::{Record, cmp_sequence};

use crate::encode::{ErrorRecord, ObjectFormat};
use crate::partition::{ErrorReason, MAX_OBJECT_NAME, Target, encode_segment, partition};

/// A position in a shard: after a sequence number, or `None` for "before the first record we
/// start from".
pub(crate) type Position = Option<String>;

fn cmp_position(a: &Position, b: &Position) -> Ordering {
    streams::cmp_position(a.as_deref(), b.as_deref())
}

/// The checkpoint as stored (JSON) in the shard's lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub v: u32,
    /// The low-water mark: resume reading after this sequence number.
    pub after: Option<String>,
    /// The shard is closed and every record of it is written.
    #[serde(default)]
    pub end: bool,
    #[serde(default)]
    pub cuts: Vec<CutRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CutRecord {
    /// [`Target::path`].
    pub target: String,
    pub first: String,
    pub last: String,
    /// The lake format the cut is written in (its key depends on it).
    pub format: ObjectFormat,
    pub done: bool,
}

pub const CHECKPOINT_VERSION: u32 = 1;

impl Checkpoint {
    /// Reads a stored checkpoint of this version, whose every cut names a lake target.
    pub fn parse(text: &str) -> Result<Checkpoint, StateError> {
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        let unreadable =
            |e: serde_json::Error| StateError::BadCheckpoint(format!("{text:.200?}: {e}"));
        let version: Version = serde_json::from_str(text).map_err(unreadable)?;
        if version.v != CHECKPOINT_VERSION {
            return Err(StateError::BadCheckpoint(format!(
                "format {} is not {CHECKPOINT_VERSION}: written by another version",
                version.v
            )));
        }
        let checkpoint: Checkpoint = serde_json::from_str(text).map_err(unreadable)?;
        if let Some(cut) = checkpoint
            .cuts
            .iter()
            .find(|c| Target::parse(&c.target).is_none())
        {
            return Err(StateError::BadCheckpoint(format!(
                "target {:?} is not a lake target",
                cut.target
            )));
        }
        Ok(checkpoint)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("checkpoint is not a persister checkpoint: {0}")]
    BadCheckpoint(String),
    #[error("object name for shard {shard:?} is longer than {MAX_OBJECT_NAME} bytes")]
    NameTooLong { shard: String },
}

/// One record, ready for its object.
#[derive(Clone, Debug)]
pub(crate) enum Row {
    /// The bytes of an envelope that decodes; the encoder reads them in place.
    Lake(Bytes),
    Error(ErrorRecord),
}

#[derive(Debug, Default)]
pub(crate) struct Rows {
    pub lake: Vec<Bytes>,
    pub errors: Vec<ErrorRecord>,
}

impl Rows {
    fn push(&mut self, row: Row) {
        match row {
            Row::Lake(e) => self.lake.push(e),
            Row::Error(e) => self.errors.push(e),
        }
    }

    pub fn len(&self) -> usize {
        self.lake.len() + self.errors.len()
    }
}

/// The open buffer of one target.
#[derive(Debug)]
struct Buffer {
    rows: Rows,
    first: String,
    last: String,
    /// The position just before `first`: where to resume if this buffer is lost.
    prev: Position,
    opened: Instant,
    bytes: usize,
}

/// A cut of this run or of the checkpoint we started from.
#[derive(Clone, Debug)]
struct Cut {
    id: u64,
    target: String,
    first: String,
    last: String,
    prev: Position,
    format: ObjectFormat,
    done: bool,
    bytes: usize,
    opened: Instant,
}

/// A cut from the checkpoint whose range we have not read past yet.
#[derive(Debug)]
struct Restored {
    cut_id: u64,
    first: String,
    last: String,
    done: bool,
    /// Records collected again for an unwritten cut.
    rows: Rows,
    bytes: usize,
    saw_first: bool,
}

/// An object to write: the records of one cut.
#[derive(Debug)]
pub(crate) struct Flush {
    pub cut_id: u64,
    pub key: String,
    pub target: Target,
    /// The format the key names; the object must be encoded in it.
    pub format: ObjectFormat,
    pub rows: Rows,
    pub bytes: usize,
    /// When the oldest record was buffered.
    pub opened: Instant,
    /// Write only if no object is there yet: a cut rebuilt without its first records (they
    /// left the stream) must not replace a complete object written before the crash.
    pub only_if_absent: bool,
}

/// What became of one record.
#[derive(Debug)]
pub(crate) enum Applied {
    /// Already in a written object.
    Skipped,
    /// Buffered in its target's open partition; `full` when the partition reached its size.
    Buffered { full: bool },
    /// Collected for a restored, unwritten cut.
    Rebuilding,
}

/// A record after decoding and partitioning, before it is applied to the state.
#[derive(Debug)]
pub(crate) struct Classified {
    seq: String,
    pub target: Target,
    target_path: String,
    row: Row,
    raw_len: usize,
    /// The restored cut the record belongs to.
    restored: Option<u64>,
}

impl Classified {
    pub fn target_path(&self) -> &str {
        &self.target_path
    }

    /// Whether the record goes to an open partition (rather than a restored cut).
    pub fn needs_buffer(&self) -> bool {
        self.restored.is_none()
    }
}

pub(crate) struct ShardState {
    shard: String,
    shard_segment: String,
    base_prefix: String,
    format: ObjectFormat,
    max_object_bytes: usize,
    /// Position after the last record applied.
    last_read: Position,
    buffers: HashMap<String, Buffer>,
    cuts: Vec<Cut>,
    next_cut_id: u64,
    /// By target path.
    restored: HashMap<String, Vec<Restored>>,
    /// The largest `last` among restored cuts: past it, restored cuts need no more lookups.
    restored_until: Option<String>,
    /// Flushes of restored cuts that are complete (or were passed).
    ready: Vec<Flush>,
    end: bool,
}

impl ShardState {
    /// The state of a shard from its stored checkpoint (`None` for a fresh shard).
    pub fn restore(
        shard: &str,
        base_prefix: &str,
        format: ObjectFormat,
        max_object_bytes: usize,
        checkpoint: Option<&str>,
    ) -> Result<ShardState, StateError> {
        let shard_segment = encode_segment(shard);
        let mut state = ShardState {
            shard: shard.to_owned(),
            shard_segment,
            base_prefix: base_prefix.to_owned(),
            format,
            max_object_bytes,
            last_read: None,
            buffers: HashMap::new(),
            cuts: Vec::new(),
            next_cut_id: 0,
            restored: HashMap::new(),
            restored_until: None,
            ready: Vec::new(),
            end: false,
        };
        let Some(text) = checkpoint else {
            return Ok(state);
        };
        let cp = Checkpoint::parse(text)?;
        state.last_read = cp.after.clone();
        state.end = cp.end;
        let now = Instant::now();
        for c in cp.cuts {
            let id = state.next_cut_id;
            state.next_cut_id += 1;
            state.cuts.push(Cut {
                id,
                target: c.target.clone(),
                first: c.first.clone(),
                last: c.last.clone(),
                prev: cp.after.clone(),
                // A rebuilt cut keeps the format it was recorded with, and so its key.
                format: c.format,
                done: c.done,
                bytes: 0,
                opened: now,
            });
            if state
                .restored_until
                .as_ref()
                .is_none_or(|u| cmp_sequence(&c.last, u) == Ordering::Greater)
            {
                state.restored_until = Some(c.last.clone());
            }
            state.restored.entry(c.target).or_default().push(Restored {
                cut_id: id,
                first: c.first,
                last: c.last,
                done: c.done,
                rows: Rows::default(),
                bytes: 0,
                saw_first: false,
            });
        }
        Ok(state)
    }

    /// Where to resume reading: after the low-water mark of the checkpoint we started from.
    pub fn start(&self) -> Position {
        self.last_read.clone()
    }

    pub fn ended(&self) -> bool {
        self.end
    }

    /// Decodes and places one record. Pure apart from reading the state.
    pub fn classify(&self, record: Record, wall_now: DateTime<Utc>) -> Classified {
        let raw_len = record.data.len();
        // Decided by the record's arrival time, so a replay decides the same.
        let now = record.arrival_time.unwrap_or(wall_now);
        let (target, row) = match proto::EnvelopeRef::decode(&record.data) {
            Ok(envelope) => {
                match partition(envelope.event_name, envelope.event_time.as_ref(), now) {
                    // A copy of its own: the record may be a slice of a whole read chunk,
                    // which the buffer would otherwise keep alive unaccounted.
                    Ok(key) => (
                        Target::Lake(key),
                        Row::Lake(Bytes::copy_from_slice(&record.data)),
                    ),
                    Err(reason) => (
                        Target::Errors(reason),
                        Row::Error(self.error_record(reason, &record)),
                    ),
                }
            }
            Err(_) => (
                Target::Errors(ErrorReason::Undecodable),
                Row::Error(self.error_record(ErrorReason::Undecodable, &record)),
            ),
        };
        let target_path = target.path();
        let restored = self.find_restored(&target_path, &record.sequence);
        Classified {
            seq: record.sequence,
            target,
            target_path,
            row,
            raw_len,
            restored,
        }
    }

    fn error_record(&self, reason: ErrorReason, record: &Record) -> ErrorRecord {
        ErrorRecord {
            reason,
            shard: self.shard.clone(),
            sequence: record.sequence.clone(),
            arrival_time: record.arrival_time,
            data: Bytes::copy_from_slice(&record.data),
        }
    }

    fn find_restored(&self, target: &str, seq: &str) -> Option<u64> {
        if self.restored.is_empty() {
            return None;
        }
        self.restored
            .get(target)?
            .iter()
            .find(|r| {
                cmp_sequence(&r.first, seq) != Ordering::Greater
                    && cmp_sequence(seq, &r.last) != Ordering::Greater
            })
            .map(|r| r.cut_id)
    }

    /// Whether `target` has an open partition.
    pub fn is_open(&self, target_path: &str) -> bool {
        self.buffers.contains_key(target_path)
    }

    /// Applies a classified record; records must come in shard order.
    pub fn apply(&mut self, c: Classified) -> Applied {
        let seq = c.seq;
        let applied = match c.restored {
            Some(id) => {
                let list = self.restored.get_mut(&c.target_path);
                match list.and_then(|l| l.iter_mut().find(|r| r.cut_id == id)) {
                    Some(r) if r.done => Applied::Skipped,
                    Some(r) => {
                        r.saw_first |= seq == r.first;
                        r.bytes += c.raw_len;
                        r.rows.push(c.row);
                        Applied::Rebuilding
                    }
                    None => Applied::Skipped,
                }
            }
            None => {
                let prev = self.last_read.clone();
                let buffer = self.buffers.entry(c.target_path).or_insert_with(|| Buffer {
                    rows: Rows::default(),
                    first: seq.clone(),
                    last: seq.clone(),
                    prev,
                    opened: Instant::now(),
                    bytes: 0,
                });
                buffer.rows.push(c.row);
                buffer.last = seq.clone();
                buffer.bytes += c.raw_len;
                Applied::Buffered {
                    full: buffer.bytes >= self.max_object_bytes,
                }
            }
        };
        self.last_read = Some(seq);
        self.settle_restored();
        applied
    }

    /// Turns restored cuts whose range we have read past (or to the end of) into flushes.
    fn settle_restored(&mut self) {
        let Some(read) = self.last_read.clone() else {
            return;
        };
        if self.restored.is_empty() {
            return;
        }
        let mut settled = Vec::new();
        for (target, list) in &mut self.restored {
            list.retain_mut(|r| {
                if cmp_sequence(&read, &r.last) == Ordering::Less {
                    return true;
                }
                settled.push((target.clone(), std::mem::take(r)));
                false
            });
        }
        self.restored.retain(|_, l| !l.is_empty());
        if self
            .restored_until
            .as_ref()
            .is_some_and(|u| cmp_sequence(&read, u) != Ordering::Less)
        {
            self.restored_until = None;
        }
        for (target_path, r) in settled {
            if r.done {
                continue;
            }
            let Some(cut) = self.cuts.iter_mut().find(|c| c.id == r.cut_id) else {
                continue;
            };
            if r.rows.len() == 0 {
                // Nothing of it is left on the stream: whatever was written before stays.
                tracing::warn!(
                    shard = %self.shard,
                    target = %target_path,
                    first = %r.first,
                    last = %r.last,
                    "An unwritten batch left the stream before it could be written again."
                );
                metrics::counter!("fanner_persister_errors_total", "reason" => "replay_gap")
                    .increment(1);
                cut.done = true;
                continue;
            }
            cut.bytes = r.bytes;
            let Some(target) = Target::parse(&target_path) else {
                continue;
            };
            let key = object_key(
                &self.base_prefix,
                &target,
                &self.shard_segment,
                &r.first,
                &r.last,
                cut.format,
            );
            self.ready.push(Flush {
                cut_id: r.cut_id,
                key,
                target,
                format: cut.format,
                rows: r.rows,
                bytes: r.bytes,
                opened: cut.opened,
                only_if_absent: !r.saw_first,
            });
        }
    }

    /// Restored cuts that are ready to be written again. They are in the checkpoint already.
    pub fn take_ready(&mut self) -> Vec<Flush> {
        std::mem::take(&mut self.ready)
    }

    fn format_of(&self, target: &Target) -> ObjectFormat {
        match target {
            Target::Lake(_) => self.format,
            Target::Errors(_) => self.format.for_errors(),
        }
    }

    /// Moves the open partitions of `targets` into new (unwritten) cuts.
    pub fn cut(&mut self, targets: &[String]) -> Result<Vec<Flush>, StateError> {
        let mut flushes = Vec::with_capacity(targets.len());
        for path in targets {
            let Some(buffer) = self.buffers.remove(path) else {
                continue;
            };
            let Some(target) = Target::parse(path) else {
                continue;
            };
            let format = self.format_of(&target);
            let key = object_key(
                &self.base_prefix,
                &target,
                &self.shard_segment,
                &buffer.first,
                &buffer.last,
                format,
            );
            if key
                .rsplit('/')
                .next()
                .is_some_and(|n| n.len() > MAX_OBJECT_NAME)
            {
                return Err(StateError::NameTooLong {
                    shard: self.shard.clone(),
                });
            }
            let id = self.next_cut_id;
            self.next_cut_id += 1;
            self.cuts.push(Cut {
                id,
                target: path.clone(),
                first: buffer.first,
                last: buffer.last,
                prev: buffer.prev,
                format,
                done: false,
                bytes: buffer.bytes,
                opened: buffer.opened,
            });
            flushes.push(Flush {
                cut_id: id,
                key,
                target,
                format,
                rows: buffer.rows,
                bytes: buffer.bytes,
                opened: buffer.opened,
                only_if_absent: false,
            });
        }
        Ok(flushes)
    }

    /// Open partitions whose oldest record has waited `max_age`.
    pub fn aged(&self, max_age: Duration, now: Instant) -> Vec<String> {
        self.buffers
            .iter()
            .filter(|(_, b)| now.saturating_duration_since(b.opened) >= max_age)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The `n` open partitions opened longest ago.
    pub fn oldest(&self, n: usize) -> Vec<String> {
        let mut all: Vec<_> = self.buffers.iter().map(|(k, b)| (b.opened, k)).collect();
        all.sort_unstable();
        all.into_iter().take(n).map(|(_, k)| k.clone()).collect()
    }

    /// Open partitions, oldest first, with their buffered bytes.
    pub fn oldest_with_bytes(&self) -> Vec<(String, usize)> {
        let mut all: Vec<_> = self
            .buffers
            .iter()
            .map(|(k, b)| (b.opened, k.clone(), b.bytes))
            .collect();
        all.sort_unstable();
        all.into_iter().map(|(_, k, bytes)| (k, bytes)).collect()
    }

    pub fn open_targets(&self) -> Vec<String> {
        self.buffers.keys().cloned().collect()
    }

    pub fn open_partitions(&self) -> usize {
        self.buffers.len()
    }

    /// Raw bytes held: open partitions, cuts being written and cuts being rebuilt.
    pub fn held_bytes(&self) -> usize {
        let open: usize = self.buffers.values().map(|b| b.bytes).sum();
        let writing: usize = self.cuts.iter().filter(|c| !c.done).map(|c| c.bytes).sum();
        let rebuilding: usize = self.restored.values().flatten().map(|r| r.bytes).sum();
        open + writing + rebuilding
    }

    /// When the oldest record not yet in a written object was buffered.
    pub fn oldest_unwritten(&self) -> Option<Instant> {
        let open = self.buffers.values().map(|b| b.opened);
        let writing = self.cuts.iter().filter(|c| !c.done).map(|c| c.opened);
        open.chain(writing).min()
    }

    pub fn cut_count(&self) -> usize {
        self.cuts.len()
    }

    /// Unwritten cuts (being written or waiting to be rebuilt).
    pub fn unwritten_cuts(&self) -> usize {
        self.cuts.iter().filter(|c| !c.done).count()
    }

    /// Marks a cut's object as written.
    pub fn complete(&mut self, cut_id: u64) {
        if let Some(c) = self.cuts.iter_mut().find(|c| c.id == cut_id) {
            c.done = true;
            c.bytes = 0;
        }
    }

    /// The shard is closed and read to its end; only valid once everything is written.
    pub fn mark_end(&mut self) {
        self.end = true;
    }

    /// Every record at or before this position is in a written object.
    pub fn low_water(&self) -> Position {
        let open = self.buffers.values().map(|b| &b.prev);
        let writing = self.cuts.iter().filter(|c| !c.done).map(|c| &c.prev);
        open.chain(writing)
            .min_by(|a, b| cmp_position(a, b))
            .cloned()
            .unwrap_or_else(|| self.last_read.clone())
    }

    /// The checkpoint to store now. Drops cuts the low-water mark has passed.
    pub fn checkpoint(&mut self) -> Checkpoint {
        let after = self.low_water();
        if let Some(low) = &after {
            self.cuts
                .retain(|c| !c.done || cmp_sequence(&c.last, low) == Ordering::Greater);
        }
        Checkpoint {
            v: CHECKPOINT_VERSION,
            after,
            end: self.end,
            cuts: self
                .cuts
                .iter()
                .map(|c| CutRecord {
                    target: c.target.clone(),
                    first: c.first.clone(),
                    last: c.last.clone(),
                    format: c.format,
                    done: c.done,
                })
                .collect(),
        }
    }
}

impl Default for Restored {
    fn default() -> Self {
        Restored {
            cut_id: 0,
            first: String::new(),
            last: String::new(),
            done: true,
            rows: Rows::default(),
            bytes: 0,
            saw_first: false,
        }
    }
}

/// `<base>/<target>/<shard>-<first>-<last>.<ext>`: the same records always get the same key.
pub(crate) fn object_key(
    base: &str,
    target: &Target,
    shard_segment: &str,
    first: &str,
    last: &str,
    format: ObjectFormat,
) -> String {
    format!(
        "{base}/{}/{shard_segment}-{}-{}.{}",
        target.path(),
        encode_segment(first),
        encode_segment(last),
        format.extension()
    )
}
