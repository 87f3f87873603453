//! The [`Coordinator`] contract as a test suite. Every implementation runs it: the in-memory one
//! here, the SQL store on SQLite and on PostgreSQL in its own tests.
//!
//! ```ignore
//! #[tokio::test]
//! async fn conforms() {
//!     shard_runtime::conformance::run(&MyCoordinator::new()).await;
//! }
//! ```
//!
//! Each check uses its own lease group, so a shared store needs no cleaning between them.

use std::time::Duration;

use crate::coordinator::{Coordinator, CoordinatorError, Lease};

const LONG: Duration = Duration::from_secs(60);
/// Short enough to wait out in a test, long enough that a slow store's round trip does not
/// expire it before the assertion after the acquisition.
const SHORT: Duration = Duration::from_millis(400);

/// Runs every check of the contract against `coordinator`; panics (a test failure) naming the
/// rule that does not hold.
pub async fn run(coordinator: &dyn Coordinator) {
    let run_id = format!("conformance-{}", rand::random::<u32>());
    a_free_lease_is_taken_once(coordinator, &format!("{run_id}-free")).await;
    its_owner_takes_it_back_at_once_and_fences_the_old_holder(
        coordinator,
        &format!("{run_id}-restart"),
    )
    .await;
    an_expired_lease_moves_with_its_checkpoint(coordinator, &format!("{run_id}-expiry")).await;
    a_released_lease_is_free_at_once(coordinator, &format!("{run_id}-release")).await;
    groups_are_separate_and_listed_in_key_order(coordinator, &format!("{run_id}-groups")).await;
}

async fn acquire(c: &dyn Coordinator, group: &str, key: &str, owner: &str, ttl: Duration) -> Lease {
    match c.try_acquire(group, key, owner, ttl).await {
        Ok(Some(lease)) => lease,
        other => panic!("{owner} should acquire {group}/{key}: got {other:?}"),
    }
}

fn is_lost<T: std::fmt::Debug>(result: Result<T, CoordinatorError>) -> bool {
    matches!(result, Err(CoordinatorError::LeaseLost { .. }))
}

async fn a_free_lease_is_taken_once(c: &dyn Coordinator, group: &str) {
    let lease = acquire(c, group, "s/1", "a", LONG).await;
    assert_eq!(
        (
            lease.group.as_str(),
            lease.key.as_str(),
            lease.owner.as_str()
        ),
        (group, "s/1", "a")
    );
    assert_eq!(lease.checkpoint, None, "a new lease has no checkpoint");
    assert!(
        lease.expires_at > chrono::Utc::now(),
        "a new lease is not expired"
    );
    let other = c.try_acquire(group, "s/1", "b", LONG).await;
    assert!(
        matches!(other, Ok(None)),
        "a held lease is not taken by another owner: {other:?}"
    );
    let renewed = c.renew(&lease, LONG).await.expect("the holder renews");
    assert_eq!(renewed.token, lease.token, "renewal keeps the token");
    assert!(
        renewed.expires_at >= lease.expires_at,
        "renewal never shortens a lease"
    );
    c.checkpoint(&renewed, "p1")
        .await
        .expect("the holder checkpoints");
    c.checkpoint(&lease, "p2")
        .await
        .expect("a renewal does not fence its own holder");
}

async fn its_owner_takes_it_back_at_once_and_fences_the_old_holder(
    c: &dyn Coordinator,
    group: &str,
) {
    let before = acquire(c, group, "s/1", "a", LONG).await;
    c.checkpoint(&before, "at-crash").await.expect("checkpoint");
    // A restart of `a`: the lease is still valid, and `a` takes it back without waiting.
    let after = acquire(c, group, "s/1", "a", LONG).await;
    assert!(
        after.token > before.token,
        "every acquisition bumps the token"
    );
    assert_eq!(
        after.checkpoint.as_deref(),
        Some("at-crash"),
        "the checkpoint survives"
    );
    assert!(
        is_lost(c.checkpoint(&before, "stale").await),
        "the old incarnation's checkpoint is refused"
    );
    assert!(
        is_lost(c.renew(&before, LONG).await),
        "the old incarnation's renewal is refused"
    );
    c.release(&before)
        .await
        .expect("releasing a stale lease is not an error");
    let other = c.try_acquire(group, "s/1", "b", LONG).await;
    assert!(
        matches!(other, Ok(None)),
        "a stale release frees nothing: {other:?}"
    );
    let listed = c.leases(group).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].checkpoint.as_deref(),
        Some("at-crash"),
        "a refused write changes nothing"
    );
}

async fn an_expired_lease_moves_with_its_checkpoint(c: &dyn Coordinator, group: &str) {
    let first = acquire(c, group, "s/1", "a", SHORT).await;
    c.checkpoint(&first, "42").await.expect("checkpoint");
    tokio::time::sleep(SHORT + Duration::from_millis(200)).await;
    let second = acquire(c, group, "s/1", "b", LONG).await;
    assert_eq!(second.owner, "b");
    assert!(second.token > first.token);
    assert_eq!(
        second.checkpoint.as_deref(),
        Some("42"),
        "the next holder resumes from the checkpoint"
    );
    assert!(
        is_lost(c.renew(&first, LONG).await),
        "the previous holder cannot renew"
    );
    assert!(
        is_lost(c.checkpoint(&first, "43").await),
        "the previous holder cannot checkpoint"
    );
    let listed = c.leases(group).await.expect("list");
    assert_eq!(listed[0].checkpoint.as_deref(), Some("42"));
    assert_eq!(listed[0].owner, "b");
}

async fn a_released_lease_is_free_at_once(c: &dyn Coordinator, group: &str) {
    let lease = acquire(c, group, "s/1", "a", LONG).await;
    c.checkpoint(&lease, "done-to-here")
        .await
        .expect("checkpoint");
    c.release(&lease).await.expect("release");
    let listed = c.leases(group).await.expect("list");
    assert!(
        listed[0].expires_at <= chrono::Utc::now(),
        "a released lease is expired"
    );
    let next = acquire(c, group, "s/1", "b", LONG).await;
    assert_eq!(
        next.checkpoint.as_deref(),
        Some("done-to-here"),
        "release keeps the checkpoint"
    );
    assert!(
        is_lost(c.renew(&lease, LONG).await),
        "a released lease taken over cannot be renewed"
    );
}

async fn groups_are_separate_and_listed_in_key_order(c: &dyn Coordinator, group: &str) {
    let other_group = format!("{group}-other");
    for key in ["s/2", "s/10", "s/1"] {
        acquire(c, group, key, "a", LONG).await;
    }
    acquire(c, &other_group, "s/1", "b", LONG).await;
    let keys: Vec<String> = c
        .leases(group)
        .await
        .expect("list")
        .into_iter()
        .map(|l| l.key)
        .collect();
    assert_eq!(
        keys,
        ["s/1", "s/10", "s/2"],
        "one group's leases, ordered by key"
    );
    let other = c.leases(&other_group).await.expect("list");
    assert_eq!(other.len(), 1);
    assert_eq!(
        other[0].owner, "b",
        "the same key in another group is another lease"
    );
}
