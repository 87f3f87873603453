//! Keeping one lease: renewals on a steady clock, the moment it must be taken as lost, and the
//! fenced checkpoint writes of the job that holds it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::coordinator::{Coordinator, CoordinatorError, Lease};

/// After a failed renewal, the next try comes this soon (or at the deadline, if sooner).
const RENEW_RETRY: Duration = Duration::from_millis(500);

/// When a lease obtained (or renewed) by a request sent at `sent` must be taken as gone: a tenth
/// of the TTL early, for the difference between the store's clock and ours. Counting from the
/// request's send time, not its answer, keeps a slow store from stretching the lease.
pub(crate) fn deadline(sent: Instant, ttl: Duration) -> Instant {
    sent + ttl - ttl / 10
}

#[derive(Clone, Debug)]
struct Held {
    lease: Lease,
    lost: bool,
}

/// A job's hold on its shard: the current lease, whether it is lost, and checkpoint writes
/// fenced by it. Cheap to clone; every clone sees the same lease.
#[derive(Clone)]
pub struct LeaseHandle {
    coordinator: Arc<dyn Coordinator>,
    held: watch::Receiver<Held>,
}

impl LeaseHandle {
    /// The lease as last renewed.
    pub fn lease(&self) -> Lease {
        self.held.borrow().lease.clone()
    }

    /// The shard's lease key (`<stream>/<shard id>`).
    pub fn key(&self) -> String {
        self.held.borrow().lease.key.clone()
    }

    /// The lease may be held by another process now: stop at once, write nothing more.
    pub fn is_lost(&self) -> bool {
        self.held.borrow().lost
    }

    /// Completes once the lease is lost; never otherwise.
    pub async fn lost(&mut self) {
        // `wait_for` looks at the current value first, so a renewal seen earlier is no news
        // and an idle job stays asleep.
        if self.held.wait_for(|held| held.lost).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Stores `checkpoint` under the current lease; `LeaseLost` (nothing written) once another
    /// process has acquired the shard.
    pub async fn checkpoint(&self, checkpoint: &str) -> Result<(), CoordinatorError> {
        let lease = self.lease();
        self.coordinator.checkpoint(&lease, checkpoint).await
    }
}

/// The renewing side of a [`LeaseHandle`]: runs beside the job, in the same task, so a job that
/// panics or is dropped stops renewing with it.
pub(crate) struct Keeper {
    coordinator: Arc<dyn Coordinator>,
    ttl: Duration,
    held: watch::Sender<Held>,
    deadline: Instant,
    next_renew: Instant,
}

impl Keeper {
    /// A keeper for `lease`, acquired by a request sent at `sent`, and the job's handle on it.
    pub(crate) fn new(
        coordinator: Arc<dyn Coordinator>,
        lease: Lease,
        ttl: Duration,
        sent: Instant,
    ) -> (Keeper, LeaseHandle) {
        let (held, receiver) = watch::channel(Held { lease, lost: false });
        let handle = LeaseHandle {
            coordinator: coordinator.clone(),
            held: receiver,
        };
        let keeper = Keeper {
            coordinator,
            ttl,
            held,
            deadline: deadline(sent, ttl),
            next_renew: sent + ttl / 3,
        };
        (keeper, handle)
    }

    /// Renews until the lease is lost, then marks it lost and waits forever (the job ends the
    /// task by returning).
    pub(crate) async fn keep(mut self) {
        loop {
            tokio::time::sleep_until(self.next_renew.min(self.deadline)).await;
            if Instant::now() >= self.deadline {
                let key = self.held.borrow().lease.key.clone();
                tracing::warn!(key = %key, "Could not renew the lease in time; stopping so another process can take over.");
                break;
            }
            let sent = Instant::now();
            let current = self.held.borrow().lease.clone();
            let renewal =
                tokio::time::timeout_at(self.deadline, self.coordinator.renew(&current, self.ttl))
                    .await;
            match renewal {
                Ok(Ok(lease)) => {
                    self.held.send_modify(|held| held.lease = lease);
                    self.deadline = deadline(sent, self.ttl);
                    self.next_renew = sent + self.ttl / 3;
                }
                Ok(Err(CoordinatorError::LeaseLost { .. })) => {
                    tracing::warn!(key = %current.key, "Lease taken over by another process; stopping.");
                    break;
                }
                Ok(Err(error)) => {
                    tracing::warn!(key = %current.key, %error, "Renewing the lease failed; retrying.");
                    self.next_renew = Instant::now() + RENEW_RETRY.min(self.ttl / 10);
                }
                Err(_) => {}
            }
        }
        self.held.send_modify(|held| held.lost = true);
        std::future::pending::<()>().await;
    }

    /// A receiver the scheduler keeps, to release the newest lease after the job ended.
    pub(crate) fn watch(&self) -> LeaseWatch {
        LeaseWatch(self.held.subscribe())
    }
}

/// The scheduler's view of a running job's lease.
pub(crate) struct LeaseWatch(watch::Receiver<Held>);

impl LeaseWatch {
    pub(crate) fn lease(&self) -> Lease {
        self.0.borrow().lease.clone()
    }

    pub(crate) fn lost(&self) -> bool {
        self.0.borrow().lost
    }
}
