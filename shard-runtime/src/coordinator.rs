//! The contract every lease store meets: shard leases with expiry and hand-over, and
//! checkpoints fenced by the lease.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// A shard held by one process of a group (`fanner`, `persister`) until `expires_at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub group: String,
    /// `<stream>/<shard id>`, or a membership key (see [`crate::Scheduler`]).
    pub key: String,
    pub owner: String,
    /// Bumped on every acquisition: a write carrying an older token is refused (fencing).
    pub token: i64,
    pub expires_at: DateTime<Utc>,
    /// The holder's last checkpoint: opaque to the coordinator (a sequence number, or JSON).
    pub checkpoint: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("lease {key:?} of group {group:?} is no longer held by {owner:?}")]
    LeaseLost {
        group: String,
        key: String,
        owner: String,
    },
    #[error("coordination store error: {0}")]
    Store(String),
}

impl CoordinatorError {
    pub(crate) fn lost(held: &Lease) -> CoordinatorError {
        CoordinatorError::LeaseLost {
            group: held.group.clone(),
            key: held.key.clone(),
            owner: held.owner.clone(),
        }
    }
}

/// Shard leases with expiry and hand-over, and checkpoints fenced by the lease.
/// [`crate::conformance`] states the contract as tests; every implementation runs them.
#[async_trait]
pub trait Coordinator: Send + Sync + 'static {
    /// Takes the lease if it is free or expired, or already held by `owner` (a restarted
    /// process taking its own leases back). Every acquisition bumps the token, so the previous
    /// holder's writes are refused from then on.
    async fn try_acquire(
        &self,
        group: &str,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, CoordinatorError>;

    /// Extends a held lease; `LeaseLost` if another acquisition happened since.
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, CoordinatorError>;

    /// Records progress; `LeaseLost` (and nothing written) if the lease was taken over.
    async fn checkpoint(&self, lease: &Lease, checkpoint: &str) -> Result<(), CoordinatorError>;

    /// Gives the lease up at once (graceful shutdown), keeping its checkpoint. Releasing a lease
    /// taken over meanwhile changes nothing.
    async fn release(&self, lease: &Lease) -> Result<(), CoordinatorError>;

    /// Every lease of the group, held or not, for status and lag reporting.
    async fn leases(&self, group: &str) -> Result<Vec<Lease>, CoordinatorError>;
}
