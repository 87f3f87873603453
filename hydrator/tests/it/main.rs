//! The hydrator's refusals, driven in-process against a real control plane and the embedded
//! log: a lake the GES no longer overlaps, and a lake missing an object the persister wrote.

use std::sync::Arc;
use std::time::Duration;

use api::{
    Classification, CreateEvent, CreateStream, CreateSubscription, HydrationState, PublishEvent,
    PublishRequest, ReplaySubscription, Role, StartFrom,
};
use cli::link::InProcess;
use control_plane::auth::{Caller, Ctx};
use control_plane::{Clock, ControlPlane, Settings, Store};
use shard_runtime::Coordinator;
use streams::embedded::EmbeddedBackend;
use streams::{StartPosition, StreamBackend, StreamSpec};

const EVENT: &str = "invoice_paid";

struct Setup {
    cp: ControlPlane,
    store: Store,
    backend: Arc<EmbeddedBackend>,
    ges: String,
    admin: Ctx,
    dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = Arc::new(EmbeddedBackend::open(dir.path().join("streams.redb")).expect("log"));
    let ges = testkit::unique_name("ges");
    backend
        .create_stream(&StreamSpec {
            name: ges.clone(),
            shard_count: 1,
            retention_hours: 24,
            tags: Default::default(),
        })
        .await
        .expect("GES");
    let store = Store::open(&format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("fanner.db").display()
    ))
    .await
    .expect("store");
    let settings = Settings {
        backing_prefix: "c-".to_owned(),
        ges: ges.clone(),
    };
    let cp = ControlPlane::new(store.clone(), backend.clone(), settings, Clock::default())
        .await
        .expect("control plane");
    cp.bootstrap().await.expect("bootstrap");
    let admin = Ctx {
        caller: Caller {
            principal: "admin".to_owned(),
            role: Role::Admin,
        },
        request_id: "test".to_owned(),
    };
    cp.create_event(
        &admin,
        CreateEvent {
            name: EVENT.to_owned(),
            classification: Classification::Internal,
            description: String::new(),
            owner: None,
        },
    )
    .await
    .expect("event");
    cp.create_stream(
        &admin,
        CreateStream {
            name: "ledger".to_owned(),
            shard_count: None,
            retention_hours: None,
            tags: Default::default(),
        },
    )
    .await
    .expect("stream");
    Setup {
        cp,
        store,
        backend,
        ges,
        admin,
        dir,
    }
}

impl Setup {
    async fn publish(&self, n: usize) {
        let events = (0..n)
            .map(|i| PublishEvent {
                event: EVENT.to_owned(),
                payload: Some(serde_json::json!({ "n": i })),
                ..Default::default()
            })
            .collect();
        self.cp
            .publish(&self.admin, PublishRequest { events })
            .await
            .expect("published");
    }

    /// The GES's sequence numbers, oldest first.
    async fn sequences(&self) -> Vec<String> {
        let shard = self.shard().await;
        let mut reader = self
            .backend
            .open_reader(&self.ges, &shard, StartPosition::TrimHorizon)
            .await
            .expect("reader");
        let batch = reader.next_batch(1000).await.expect("read");
        batch.records.into_iter().map(|r| r.sequence).collect()
    }

    async fn shard(&self) -> String {
        self.backend.list_shards(&self.ges).await.expect("shards")[0]
            .id
            .clone()
    }

    /// Stores a persister checkpoint for the GES's shard, as a persister that got this far would.
    async fn persisted(&self, checkpoint: serde_json::Value) {
        let key = format!("{}/{}", self.ges, self.shard().await);
        let lease = self
            .store
            .try_acquire(
                persister::GROUP,
                &key,
                "a-persister",
                Duration::from_secs(60),
            )
            .await
            .expect("acquire")
            .expect("free");
        self.store
            .checkpoint(&lease, &checkpoint.to_string())
            .await
            .expect("checkpoint");
    }

    async fn subscribe(&self, start_from: StartFrom) -> String {
        self.cp
            .create_subscription(
                &self.admin,
                CreateSubscription {
                    stream: "ledger".to_owned(),
                    events: vec![EVENT.to_owned()],
                    start_from: Some(start_from),
                    delivery_format: Default::default(),
                    filter: Default::default(),
                },
            )
            .await
            .expect("subscription")
            .id
    }

    /// Runs a hydrator until the subscription's newest hydration ends; returns it.
    async fn hydrate_until_finished(&self, subscription: &str) -> api::Hydration {
        let link = Arc::new(InProcess::new(self.cp.clone()));
        let mut config = hydrator::Config::new(&self.ges, "test-hydrator");
        config.poll_interval = Duration::from_millis(100);
        config.runtime.scan_interval = Duration::from_millis(100);
        let hydrator = hydrator::Hydrator::new(
            config,
            self.backend.clone(),
            Arc::new(self.store.clone()),
            Arc::new(persister::LocalFsSink::new(self.dir.path().join("lake")).expect("lake")),
            link.clone(),
            link,
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(hydrator.run(async {
            let _ = stopped.await;
        }));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let finished = loop {
            let hydration = self
                .cp
                .get_subscription(&self.admin, subscription)
                .await
                .expect("subscription")
                .hydration;
            if hydration.state.is_finished() {
                break hydration;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the hydration did not end: {hydration:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let _ = stop.send(());
        let _ = running.await;
        finished
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lake_the_ges_no_longer_overlaps_fails_with_its_reason() {
    let s = setup().await;
    s.publish(10).await;
    let sequences = s.sequences().await;
    // The persister wrote up to the fifth record, then stopped; the GES has since dropped
    // everything it held (retention) and taken new events.
    s.persisted(serde_json::json!({"v": 1, "after": sequences[4], "cuts": []}))
        .await;
    let trimmed = s
        .backend
        .trim_expired(chrono::Utc::now() + chrono::Duration::days(2))
        .await
        .expect("trim");
    assert_eq!(trimmed, 10);
    s.publish(3).await;
    let subscription = s.subscribe(StartFrom::Earliest).await;
    let failed = s.hydrate_until_finished(&subscription).await;
    assert_eq!(failed.state, HydrationState::Failed, "{failed:?}");
    let error = failed.error.unwrap_or_default();
    assert!(error.contains("the persister is behind"), "{error}");
    assert_eq!(failed.events_delivered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_the_persister_wrote_missing_from_the_lake_fails_the_replay() {
    let s = setup().await;
    s.publish(6).await;
    let sequences = s.sequences().await;
    let hour = chrono::Utc::now().format("%Y-%m-%d:%H");
    // Records 3..=4 were cut and written beyond the low-water mark; the lake lost the object.
    s.persisted(serde_json::json!({
        "v": 1,
        "after": sequences[1],
        "cuts": [{
            "target": format!("{EVENT}/{hour}"),
            "first": sequences[2],
            "last": sequences[3],
            "format": "ndjson_gzip",
            "done": true
        }]
    }))
    .await;
    let subscription = s.subscribe(StartFrom::Now).await;
    s.cp.replay_subscription(
        &s.admin,
        &subscription,
        ReplaySubscription {
            from: StartFrom::Earliest,
            to: None,
        },
    )
    .await
    .expect("replay");
    let failed = s.hydrate_until_finished(&subscription).await;
    assert_eq!(failed.state, HydrationState::Failed, "{failed:?}");
    let error = failed.error.unwrap_or_default();
    assert!(
        error.contains("is missing") && error.contains(&sequences[2]),
        "{error}"
    );
}
