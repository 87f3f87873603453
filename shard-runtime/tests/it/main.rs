//! The scheduler as processes meet it: shares, crashes, restarts, panics, unreadable
//! checkpoints, shutdown. Jobs here only record what they were given; the coordinator is the
//! in-memory one (the SQL store meets the same contract, see the control plane's tests) and the
//! stream is a real embedded log.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use shard_runtime::{
    Assignment, Coordinator, Exit, Job, MemoryCoordinator, Progress, Scheduler, Settings, Status,
};
use streams::StreamBackend;
use streams::embedded::EmbeddedBackend;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const STREAM: &str = "ges";
const GROUP: &str = "test-job";

/// Records which owner runs which shard; panics on shards told to, a given number of times.
#[derive(Default)]
struct Recorder {
    running: Mutex<BTreeMap<String, String>>,
    starts: Mutex<Vec<(String, String)>>,
    panics_left: Mutex<BTreeMap<String, u32>>,
    /// Closed shards, in the order their jobs read them to the end.
    finished: Mutex<Vec<String>>,
}

struct Probe {
    owner: String,
    recorder: Arc<Recorder>,
}

#[async_trait]
impl Job for Probe {
    fn group(&self) -> &str {
        GROUP
    }

    fn stream(&self) -> &str {
        STREAM
    }

    fn progress(&self, checkpoint: &str) -> Result<Progress, String> {
        match checkpoint {
            "open" => Ok(Progress::default()),
            "done" => Ok(Progress {
                children_may_start: true,
                finished: true,
            }),
            other => Err(format!("{other:?} is not a checkpoint of this job")),
        }
    }

    async fn run(self: Arc<Self>, mut assignment: Assignment) -> Exit {
        let shard = assignment.shard.id.clone();
        self.recorder
            .starts
            .lock()
            .expect("lock")
            .push((self.owner.clone(), shard.clone()));
        let panic_now = {
            let mut left = self.recorder.panics_left.lock().expect("lock");
            match left.get_mut(&shard) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    true
                }
                _ => false,
            }
        };
        if panic_now {
            panic!("a bug in the job on {shard}");
        }
        if assignment.shard.closed {
            // A parent of a reshard: read to its end, and the children may go.
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.recorder.finished.lock().expect("lock").push(shard);
            if let Err(error) = assignment.lease.checkpoint("done").await {
                return Exit::Failed(error.to_string());
            }
            return Exit::Finished;
        }
        self.recorder
            .running
            .lock()
            .expect("lock")
            .insert(shard.clone(), self.owner.clone());
        if let Err(error) = assignment.lease.checkpoint("open").await {
            return Exit::Failed(error.to_string());
        }
        let exit = tokio::select! {
            _ = assignment.stop.wait_for(|stop| *stop) => Exit::Released,
            () = assignment.lease.lost() => Exit::Lost,
        };
        self.recorder.running.lock().expect("lock").remove(&shard);
        exit
    }
}

struct World {
    backend: Arc<EmbeddedBackend>,
    coordinator: Arc<MemoryCoordinator>,
    recorder: Arc<Recorder>,
    _dir: tempfile::TempDir,
}

struct Process {
    status: Status,
    stop: tokio::sync::oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl World {
    async fn new(shards: u32) -> World {
        let dir = tempfile::tempdir().expect("temp dir");
        let backend = Arc::new(EmbeddedBackend::open(dir.path().join("log.redb")).expect("log"));
        backend
            .create_stream(&streams::StreamSpec {
                name: STREAM.to_owned(),
                shard_count: shards,
                retention_hours: 24,
                tags: Default::default(),
            })
            .await
            .expect("stream");
        World {
            backend,
            coordinator: Arc::new(MemoryCoordinator::new()),
            recorder: Arc::default(),
            _dir: dir,
        }
    }

    fn settings(owner: &str) -> Settings {
        Settings {
            lease_ttl: Duration::from_millis(900),
            scan_interval: Duration::from_millis(50),
            drain_timeout: Duration::from_millis(500),
            restart_backoff: Duration::from_millis(100),
            ..Settings::new(owner)
        }
    }

    fn start(&self, owner: &str) -> Process {
        let scheduler = Scheduler::new(
            World::settings(owner),
            self.backend.clone(),
            self.coordinator.clone(),
            Arc::new(Probe {
                owner: owner.to_owned(),
                recorder: self.recorder.clone(),
            }),
        );
        let status = scheduler.status();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(scheduler.run(async move {
            let _ = stopped.await;
        }));
        Process { status, stop, task }
    }

    /// Stores `checkpoint` for `key` as an earlier holder (now gone) would have.
    async fn store_checkpoint(&self, key: &str, checkpoint: &str) {
        let lease = self
            .coordinator
            .try_acquire(GROUP, key, "earlier", Duration::from_millis(60_000))
            .await
            .expect("acquire")
            .expect("free");
        self.coordinator
            .checkpoint(&lease, checkpoint)
            .await
            .expect("checkpoint");
        self.coordinator.release(&lease).await.expect("release");
    }

    fn owners(&self) -> BTreeMap<String, String> {
        self.recorder.running.lock().expect("lock").clone()
    }

    fn count(&self, owner: &str) -> usize {
        self.owners().values().filter(|o| *o == owner).count()
    }

    fn starts(&self, shard: &str) -> usize {
        let starts = self.recorder.starts.lock().expect("lock");
        starts.iter().filter(|(_, s)| s == shard).count()
    }
}

/// Polls `condition` every 20 ms for up to `limit`; the time it took, or a panic naming `what`.
async fn eventually(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < limit, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_the_shards_and_one_takes_over_when_the_other_dies() {
    let world = World::new(4).await;
    let a = world.start("a");
    eventually("a runs all four shards", LIMIT, || world.count("a") == 4).await;
    let b = world.start("b");
    eventually("the shards are shared 2 + 2", LIMIT, || {
        world.count("a") == 2 && world.count("b") == 2
    })
    .await;
    assert_eq!(b.status.snapshot().members, 2);
    // A crash: the scheduler and its jobs vanish without releasing anything.
    b.task.abort();
    let _ = b.task.await;
    world
        .recorder
        .running
        .lock()
        .expect("lock")
        .retain(|_, owner| owner != "b");
    eventually("a runs all four shards again", LIMIT, || {
        world.count("a") == 4
    })
    .await;
    let _ = a.stop.send(());
    a.task.await.expect("a stops");
    assert_eq!(world.owners().len(), 0, "a drained every job on shutdown");
    let leases = world.coordinator.leases(GROUP).await.expect("leases");
    let now = chrono::Utc::now();
    assert!(
        leases
            .iter()
            .filter(|l| l.owner == "a")
            .all(|l| l.expires_at <= now),
        "a gave back every lease it held, membership included: {leases:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_process_takes_its_own_shards_back_at_once() {
    let world = World::new(2).await;
    let first = world.start("slot-0");
    eventually("slot-0 runs both shards", LIMIT, || {
        world.count("slot-0") == 2
    })
    .await;
    first.task.abort();
    let _ = first.task.await;
    world.recorder.running.lock().expect("lock").clear();
    // Same name, as after a restart on the same data dir: no waiting for the (900 ms) leases.
    let again = world.start("slot-0");
    let took = eventually("slot-0 runs both shards again", LIMIT, || {
        world.count("slot-0") == 2
    })
    .await;
    assert!(
        took < Duration::from_millis(600),
        "took {took:?}: the restarted process waited for its own leases to expire"
    );
    let _ = again.stop.send(());
    again.task.await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicked_job_is_restarted_and_no_longer_counted() {
    let world = World::new(2).await;
    world
        .recorder
        .panics_left
        .lock()
        .expect("lock")
        .insert("shardId-000000000000".to_owned(), 2);
    let process = world.start("a");
    eventually(
        "both shards run after shard-0 panicked twice",
        LIMIT,
        || world.count("a") == 2,
    )
    .await;
    assert_eq!(
        world.starts("shardId-000000000000"),
        3,
        "two panics, then a run"
    );
    assert_eq!(
        world.starts("shardId-000000000001"),
        1,
        "the other shard was never disturbed"
    );
    let snapshot = process.status.snapshot();
    assert_eq!(snapshot.failures, 2);
    assert_eq!(snapshot.held.len(), 2);
    let _ = process.stop.send(());
    process.task.await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_checkpoint_refuses_its_shard_until_it_is_fixed() {
    let world = World::new(2).await;
    // A checkpoint this job cannot read (another version wrote it, or it was damaged).
    let key = format!("{STREAM}/shardId-000000000001");
    world.store_checkpoint(&key, "{\"v\":99}").await;
    let process = world.start("a");
    eventually("shard-0 runs", LIMIT, || world.count("a") == 1).await;
    eventually("shard-1 is reported refused", LIMIT, || {
        process.status.snapshot().refused.contains_key(&key)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        world.starts("shardId-000000000001"),
        0,
        "a refused shard is never started"
    );
    let reason = process.status.snapshot().refused[&key].clone();
    assert!(
        reason.contains("is not a checkpoint of this job"),
        "the job's reason is reported: {reason}"
    );

    // An operator repairs the checkpoint: the shard starts.
    world.store_checkpoint(&key, "open").await;
    eventually("shard-1 runs once readable", LIMIT, || {
        world.count("a") == 2
    })
    .await;
    assert!(process.status.snapshot().refused.is_empty());
    let _ = process.stop.send(());
    process.task.await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_shard_is_never_taken_again() {
    let world = World::new(2).await;
    let key = format!("{STREAM}/shardId-000000000000");
    world.store_checkpoint(&key, "done").await;
    let process = world.start("a");
    eventually("shard-1 runs", LIMIT, || world.count("a") == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(world.starts("shardId-000000000000"), 0);
    let _ = process.stop.send(());
    process.task.await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_of_a_reshard_start_only_after_their_parents_are_finished() {
    let world = World::new(1).await;
    // One shard split into two: the parent is closed, the children list it as their parent.
    world
        .backend
        .update_stream(&streams::StreamSpec {
            name: STREAM.to_owned(),
            shard_count: 2,
            retention_hours: 24,
            tags: Default::default(),
        })
        .await
        .expect("resharded");
    let shards = world.backend.list_shards(STREAM).await.expect("shards");
    let parent = shards
        .iter()
        .find(|s| s.closed)
        .expect("a closed parent")
        .id
        .clone();
    let children: Vec<String> = shards
        .iter()
        .filter(|s| s.parents.contains(&parent))
        .map(|s| s.id.clone())
        .collect();
    assert_eq!(children.len(), 2, "{shards:?}");

    let process = world.start("a");
    eventually("both children run", LIMIT, || world.count("a") == 2).await;
    let starts = world.recorder.starts.lock().expect("lock").clone();
    let order: Vec<&str> = starts.iter().map(|(_, shard)| shard.as_str()).collect();
    assert_eq!(order[0], parent, "the parent starts first: {order:?}");
    assert_eq!(
        *world.recorder.finished.lock().expect("lock"),
        vec![parent.clone()],
        "and is finished before its children start: {order:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        world.starts(&parent),
        1,
        "a finished shard is not taken again"
    );
    let _ = process.stop.send(());
    process.task.await.expect("stops");
}
