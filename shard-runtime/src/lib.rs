//! Leased shards: the one runtime under every job that works on a stream's shards (the fan-out
//! engine, the persister).
//!
//! * [`Coordinator`] is the lease store's contract (fenced leases with checkpoints);
//!   [`MemoryCoordinator`] keeps it in memory, the control plane's SQL store in SQLite or
//!   PostgreSQL, and [`conformance`] is the test suite all of them run.
//! * A [`LeaseHandle`] is a job's hold on one shard. Its keeper renews every third of the TTL on
//!   a steady clock, counts the lease as lost a tenth of the TTL before it could expire, and
//!   runs in the job's own task, so a job that dies stops renewing with it.
//! * A [`Scheduler`] runs one [`Job`] per shard it holds: fair shares among the processes of a
//!   group (membership per stream and group), parents before children after a reshard,
//!   hand-over on shutdown and when another process joins, failed or panicked jobs restarted
//!   from their checkpoint after a backoff, and shards whose checkpoint cannot be read refused
//!   loudly, never replayed or skipped.

pub mod conformance;
mod coordinator;
mod keeper;
mod memory;
mod scheduler;

pub use coordinator::{Coordinator, CoordinatorError, Lease};
pub use keeper::LeaseHandle;
pub use memory::MemoryCoordinator;
pub use scheduler::{
    Assignment, DEFAULT_DRAIN_TIMEOUT, DEFAULT_LEASE_TTL, DEFAULT_RESTART_BACKOFF,
    DEFAULT_SCAN_INTERVAL, Exit, FINAL_CHECKPOINT_WAIT, Job, Progress, Scheduler, Settings,
    Snapshot, Status,
};
