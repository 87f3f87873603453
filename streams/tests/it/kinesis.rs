//! The story against Kinesis on moto, and partial `PutRecords` failures injected into real
//! responses (moto itself never fails an entry).

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_kinesis::Client;
use streams::kinesis::{KinesisBackend, KinesisOptions};
use streams::{PutRecord, RetryPolicy, StreamBackend, put_all};
use testkit::kinesis::{INJECTED_CODE, PutRecordsFaults};

use crate::{read_stream, record, spec, story, text};

/// moto neither throttles nor makes state changes wait: poll it quickly.
fn quick() -> KinesisOptions {
    KinesisOptions {
        settle_timeout: Duration::from_secs(60),
        min_poll_gap: Duration::from_millis(10),
        idle_poll: Duration::from_millis(100),
        read_attempts: 6,
        ..KinesisOptions::default()
    }
}

async fn backend(test: &str) -> Option<KinesisBackend> {
    let server = testkit::moto::shared(test)?;
    Some(KinesisBackend::new(&server.sdk_config().await).with_options(quick()))
}

async fn faulty_backend(test: &str) -> Option<(KinesisBackend, PutRecordsFaults)> {
    let server = testkit::moto::shared(test)?;
    let faults = PutRecordsFaults::new();
    let config = aws_sdk_kinesis::config::Builder::from(&server.sdk_config().await)
        .interceptor(faults.clone())
        .build();
    let backend = KinesisBackend::from_client(Client::from_conf(config)).with_options(quick());
    Some((backend, faults))
}

macro_rules! story_tests {
    ($($behaviour:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $behaviour() -> anyhow::Result<()> {
            let Some(backend) = backend(concat!("kinesis::", stringify!($behaviour))).await else {
                return Ok(());
            };
            story::$behaviour(&backend).await
        }
    )*};
}

story_tests!(
    lifecycle,
    invalid_spec,
    put_and_read_in_order,
    start_positions,
    several_readers,
    per_entry_outcomes,
    record_too_large,
    deleted_stream,
    wait_for_records,
    put_all_batches,
);

fn numbered(count: usize) -> Vec<PutRecord> {
    (0..count)
        .map(|i| record(&format!("k{i}"), i.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_failures_are_reported_per_entry() -> anyhow::Result<()> {
    let Some((backend, faults)) =
        faulty_backend("kinesis::partial_failures_are_reported_per_entry").await
    else {
        return Ok(());
    };
    let name = testkit::unique_name("partial");
    backend.create_stream(&spec(&name, 2, 24)).await?;
    faults.fail("k1", 1);
    faults.fail("k4", 1);
    let outcome = backend.put_records(&name, &numbered(6)).await?;
    let failed: Vec<usize> = outcome
        .iter()
        .enumerate()
        .filter(|(_, result)| result.is_err())
        .map(|(index, _)| index)
        .collect();
    assert_eq!(failed, [1, 4]);
    for index in failed {
        let failure = outcome[index].clone().err();
        assert!(
            failure
                .as_ref()
                .is_some_and(|f| f.is_throttle() && f.code == INJECTED_CODE)
        );
    }
    let mut read: Vec<String> = read_stream(&backend, &name)
        .await?
        .iter()
        .map(text)
        .collect();
    read.sort();
    assert_eq!(read, ["0", "2", "3", "5"]);
    backend.delete_stream(&name).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_all_resends_exactly_the_failed_entries() -> anyhow::Result<()> {
    let Some((backend, faults)) =
        faulty_backend("kinesis::put_all_resends_exactly_the_failed_entries").await
    else {
        return Ok(());
    };
    let name = testkit::unique_name("retry");
    backend.create_stream(&spec(&name, 2, 24)).await?;
    faults.fail("k3", 1);
    faults.fail("k17", 1);
    faults.fail("k29", 2);
    let policy = RetryPolicy {
        max_attempts: 5,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
    };
    let outcome = put_all(&backend, &name, &numbered(30), &policy).await?;
    assert!(
        outcome.all_written(),
        "{:?}",
        outcome.failed().collect::<Vec<_>>()
    );
    assert_eq!(outcome.retried, 4);

    let keys = |range: std::ops::Range<usize>| range.map(|i| format!("k{i}")).collect::<Vec<_>>();
    assert_eq!(
        faults.calls(),
        [
            keys(0..30),
            vec!["k3".into(), "k17".into(), "k29".into()],
            vec!["k29".into()]
        ]
    );
    let mut read: Vec<usize> = read_stream(&backend, &name)
        .await?
        .iter()
        .map(|record| text(record).parse())
        .collect::<Result<_, _>>()?;
    read.sort_unstable();
    assert_eq!(
        read,
        (0..30).collect::<Vec<_>>(),
        "every record arrives once"
    );
    backend.delete_stream(&name).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_all_reports_what_still_fails_after_the_last_attempt() -> anyhow::Result<()> {
    let Some((backend, faults)) =
        faulty_backend("kinesis::put_all_reports_what_still_fails_after_the_last_attempt").await
    else {
        return Ok(());
    };
    let name = testkit::unique_name("exhaust");
    backend.create_stream(&spec(&name, 1, 24)).await?;
    faults.fail("k2", 100);
    let policy = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
    };
    let outcome = put_all(&backend, &name, &numbered(5), &policy).await?;
    let failed: Vec<(usize, String)> = outcome
        .failed()
        .map(|(index, failure)| (index, failure.code.clone()))
        .collect();
    assert_eq!(failed, [(2, INJECTED_CODE.to_owned())]);
    assert_eq!(faults.calls().len(), 3, "bounded attempts");
    let mut read: Vec<String> = read_stream(&backend, &name)
        .await?
        .iter()
        .map(text)
        .collect();
    read.sort();
    assert_eq!(read, ["0", "1", "3", "4"]);
    backend.delete_stream(&name).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_follow_the_spec() -> anyhow::Result<()> {
    let Some(backend) = backend("kinesis::tags_follow_the_spec").await else {
        return Ok(());
    };
    let tags_of = |name: String| {
        let client = backend.client().clone();
        async move {
            let output = client
                .list_tags_for_stream()
                .stream_name(name)
                .send()
                .await?;
            anyhow::Ok(
                output
                    .tags()
                    .iter()
                    .map(|tag| {
                        (
                            tag.key().to_owned(),
                            tag.value().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect::<BTreeMap<_, _>>(),
            )
        }
    };
    let name = testkit::unique_name("tags");
    // More tags than one AddTagsToStream call takes.
    let mut wanted = spec(&name, 1, 24);
    wanted.tags = (0..12)
        .map(|i| (format!("k{i:02}"), format!("v{i}")))
        .collect();
    backend.create_stream(&wanted).await?;
    assert_eq!(tags_of(name.clone()).await?, wanted.tags);

    wanted.tags.remove("k00");
    wanted.tags.insert("k01".to_owned(), "changed".to_owned());
    wanted
        .tags
        .insert("owner".to_owned(), "payments".to_owned());
    backend.update_stream(&wanted).await?;
    assert_eq!(tags_of(name.clone()).await?, wanted.tags);
    backend.delete_stream(&name).await?;
    Ok(())
}

/// Readers of one shard through one backend (the engine and the persister in one process)
/// share its `GetRecords` budget: together they make at most one call per `min_poll_gap`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_of_one_shard_share_its_read_budget() -> anyhow::Result<()> {
    let Some(backend) = backend("kinesis::read_budget").await else {
        return Ok(());
    };
    let gap = Duration::from_millis(100);
    let backend = backend.with_options(KinesisOptions {
        min_poll_gap: gap,
        ..quick()
    });
    let name = testkit::unique_name("budget");
    backend.create_stream(&spec(&name, 1, 24)).await?;
    let shard = backend.list_shards(&name).await?.remove(0).id;
    let open = || backend.open_reader(&name, &shard, streams::StartPosition::TrimHorizon);
    let (engine, persister) = (open().await?, open().await?);
    let started = std::time::Instant::now();
    let calls = 6;
    let read = |mut reader: Box<dyn streams::ShardReader>| async move {
        for _ in 0..calls {
            reader.next_batch(10).await?;
        }
        anyhow::Ok(())
    };
    let (a, b) = tokio::join!(read(engine), read(persister));
    a?;
    b?;
    // 12 calls one gap apart: at least 11 gaps, whatever the emulator's speed.
    let took = started.elapsed();
    assert!(
        took >= gap * (2 * calls - 1),
        "{} calls in {took:?}: the two readers did not take turns",
        2 * calls
    );
    backend.delete_stream(&name).await?;
    Ok(())
}
