//! A [`Coordinator`] in one process's memory: for a single process without a database, and for
//! tests of the jobs. It keeps the store's rules exactly (the conformance suite checks).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::coordinator::{Coordinator, CoordinatorError, Lease};

#[derive(Debug, Default)]
pub struct MemoryCoordinator {
    leases: Mutex<BTreeMap<(String, String), Lease>>,
}

impl MemoryCoordinator {
    pub fn new() -> MemoryCoordinator {
        MemoryCoordinator::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<(String, String), Lease>) -> T) -> T {
        // A poisoned lock means a panic while holding it; the map itself is always consistent
        // (every change is a single insert or field update).
        let mut leases = self
            .leases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut leases)
    }
}

fn expiry(ttl: Duration) -> DateTime<Utc> {
    // Millisecond precision, as the SQL store keeps it.
    let now = Utc::now().timestamp_millis();
    let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 4);
    DateTime::from_timestamp_millis(now.saturating_add(ttl)).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn holds(current: &Lease, held: &Lease) -> bool {
    current.owner == held.owner && current.token == held.token
}

#[async_trait]
impl Coordinator for MemoryCoordinator {
    async fn try_acquire(
        &self,
        group: &str,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, CoordinatorError> {
        let now = Utc::now();
        Ok(self.with(|leases| {
            let entry = leases.entry((group.to_owned(), key.to_owned()));
            match entry {
                std::collections::btree_map::Entry::Vacant(vacant) => Some(
                    vacant
                        .insert(Lease {
                            group: group.to_owned(),
                            key: key.to_owned(),
                            owner: owner.to_owned(),
                            token: 1,
                            expires_at: expiry(ttl),
                            checkpoint: None,
                        })
                        .clone(),
                ),
                std::collections::btree_map::Entry::Occupied(mut occupied) => {
                    let lease = occupied.get_mut();
                    if lease.expires_at < now || lease.owner == owner {
                        lease.owner = owner.to_owned();
                        lease.token += 1;
                        lease.expires_at = expiry(ttl);
                        Some(lease.clone())
                    } else {
                        None
                    }
                }
            }
        }))
    }

    async fn renew(&self, held: &Lease, ttl: Duration) -> Result<Lease, CoordinatorError> {
        self.with(
            |leases| match leases.get_mut(&(held.group.clone(), held.key.clone())) {
                Some(current) if holds(current, held) => {
                    current.expires_at = expiry(ttl);
                    Ok(current.clone())
                }
                _ => Err(CoordinatorError::lost(held)),
            },
        )
    }

    async fn checkpoint(&self, held: &Lease, checkpoint: &str) -> Result<(), CoordinatorError> {
        self.with(
            |leases| match leases.get_mut(&(held.group.clone(), held.key.clone())) {
                Some(current) if holds(current, held) => {
                    current.checkpoint = Some(checkpoint.to_owned());
                    Ok(())
                }
                _ => Err(CoordinatorError::lost(held)),
            },
        )
    }

    async fn release(&self, held: &Lease) -> Result<(), CoordinatorError> {
        self.with(|leases| {
            if let Some(current) = leases.get_mut(&(held.group.clone(), held.key.clone()))
                && holds(current, held)
            {
                current.expires_at = DateTime::<Utc>::UNIX_EPOCH;
            }
        });
        Ok(())
    }

    async fn leases(&self, group: &str) -> Result<Vec<Lease>, CoordinatorError> {
        Ok(self.with(|leases| {
            leases
                .values()
                .filter(|lease| lease.group == group)
                .cloned()
                .collect()
        }))
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn conforms() {
        crate::conformance::run(&super::MemoryCoordinator::new()).await;
    }
}
