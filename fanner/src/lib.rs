//! The fan-out engine: reads the global event stream (GES) once and writes each record to every
//! consumer stream allowed to receive it. Consumers never read the GES.
//!
//! # Data flow
//!
//! ```text
//! GES shard ──main cursor──▶ EnvelopeHead ─▶ route(event, table, now) ─▶ queue per consumer stream ─▶ PutRecords
//!     │                          │                                        (bounded; full = falls behind)
//!     └──catch-up cursor per stream that fell behind──────────────────────▶ its own queue
//!                                └─ not an envelope / unknown event / oversize ─▶ dead-letter stream
//! ```
//!
//! - [`router`] is the pure core: [`proto::EnvelopeHead`] reads the event id and name from the
//!   envelope without copying it, [`router::route`] looks the name up in the compiled route table
//!   ([`router::RouteIndex`]) and yields the streams whose access has not ended. Unknown events
//!   (not in the catalog) are dead-lettered, but only by a table generated after the record
//!   arrived (an older table is refreshed first, so an event registered just before it was
//!   published is not taken for unknown); known events nobody subscribed to are counted.
//! - [`routes::LiveRoutes`] holds the table in an `ArcSwap`: the hot path loads it with one
//!   atomic read; a follower task swaps in each new table the control plane announces (long poll
//!   or in-process watch), so a revoked grant stops delivery as soon as the table arrives.
//!   Expiry needs no new table: targets carry their access end and are checked at route time
//!   and again when a queued record is about to be written.
//! - A [`engine::Engine`] scans the GES's shards and holds one lease per shard it works on; each
//!   held shard runs one worker task that owns all of the shard's state (see `shard`). Records
//!   are passed on as the GES bytes (`Bytes` clones, never re-encoded) unless the stream's
//!   subscription filters them or asks for the payload alone, or the grant behind it redacts
//!   fields: [`gate`] decides per delivery, rewriting a record at most once per distinct
//!   redaction (filtered deliveries are counted, not denied); the partition key on a
//!   consumer stream is the envelope's event id (a random UUID from publishing; a random key when
//!   absent), so records spread evenly and a duplicate lands on the same shard as its original.
//!
//! # Cursors and isolation
//!
//! Each worker reads its shard with one **main cursor** and keeps, per consumer stream, a
//! bounded in-memory queue and a *position*: every record up to it that was meant for the stream
//! has been written to it. A stream is in one of three modes:
//!
//! - **attached**: fed by the main cursor; at most one `PutRecords` in flight; entries that fail
//!   are put back at the head of its queue and retried (only they) after a jittered backoff.
//! - **behind**: its queue passed `max_backlog`, or its writes kept failing for `max_stall`. The
//!   main cursor stops feeding it (and so no longer waits for it); what is queued keeps being
//!   written, and once the queue is down to half the backlog the stream reads on from the GES
//!   with its own reader (at most `max_catchup_readers` per shard), routing for itself only.
//!   When its reader reaches the main cursor and its queue is short, it is attached again.
//! - **broken**: its backing stream is missing (or refuses writes). Its subscriptions are marked
//!   failed through the [`link::ControlPlaneLink`], its position is kept, and the stream is
//!   probed every `probe_interval`; when it exists again it catches up from its position (so a
//!   recreated stream gets the backlog the GES still holds) and is marked active again.
//!
//! The dead-letter stream is one more such stream, so a slow dead-letter stream never stalls
//! delivery either.
//!
//! # Checkpoints
//!
//! A shard's checkpoint ([`checkpoint::Checkpoint`], JSON in the lease) is `main` plus `behind`:
//! `main` is the lowest position of the attached streams (never moving back), and `behind` lists
//! every stream whose position is lower than `main`, with that position. Restarting from it
//! loses nothing, whenever a crash happens; what is delivered again is bounded by what was
//! delivered since the last checkpoint (written at most every `checkpoint_interval`, one
//! write in flight per shard). A closed shard whose main cursor reached its end is marked
//! `main_done`; its children are started only then, so a key's records are read parent first.
//!
//! # Leases
//!
//! Each shard has one holder at a time (fenced leases of the [`streams::Coordinator`], group
//! `fanner`, key `<ges>/<shard id>`), renewed every third of `lease_ttl`. A worker that cannot
//! renew in time (it gives up a tenth of the TTL early), or whose renewal or checkpoint is
//! refused, stops at once. A process that dies
//! leaves its leases to expire; another process takes them within `lease_ttl` plus one scan.
//! Processes also hold a membership lease each (`<ges>#engine/<owner>`) and take at most a
//! fair share of the shards,
//! handing surplus shards over (drain, checkpoint, release) when another process joins.
//!
//! # Entry point
//!
//! [`run`] (or [`Engine::new`] + [`Engine::run`]) with a backend, a coordinator, a
//! [`link::RouteSource`] and a [`link::ControlPlaneLink`]: `fanner serve`'s in-process link for
//! an engine in the control plane's process, [`link::Http`] for a standalone one.

pub mod checkpoint;
pub mod config;
pub mod dead_letter;
pub mod engine;
pub mod gate;
pub mod link;
pub mod router;
pub mod routes;
mod shard;
pub mod status;

use std::future::Future;
use std::sync::Arc;

pub use config::EngineConfig;
pub use engine::{Engine, EngineError};
pub use link::{ControlPlaneLink, Http, LinkError, RouteSource};
pub use shard::partition_key;
use shard_runtime::Coordinator;
pub use status::{EventsSeen, ShardStatus, StatusBoard, TargetMode, TargetStatus};
use streams::StreamBackend;

/// Runs the fan-out engine until `shutdown` completes, then drains (see [`Engine::run`]).
pub async fn run(
    config: EngineConfig,
    backend: Arc<dyn StreamBackend>,
    coordinator: Arc<dyn Coordinator>,
    routes: Arc<dyn RouteSource>,
    link: Arc<dyn ControlPlaneLink>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), EngineError> {
    Engine::new(config, backend, coordinator, routes, link)
        .run(shutdown)
        .await
}
