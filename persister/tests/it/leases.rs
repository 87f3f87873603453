//! Several persister processes share the GES's shards through leases: a newcomer gets its
//! share handed over, a crashed process's shards are taken over once its leases expire, and
//! the lake holds every event once throughout.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use chrono::Utc;
use persister::{Config, LocalFsSink, ObjectSink, Persister, Stats};
use shard_runtime::Coordinator;
use streams::StreamBackend;

use crate::support::{CountingReads, Lab, Running, encoded, envelope, eventually, read_lake};

fn config(owner: &str) -> Config {
    Config {
        max_object_age_ms: 100,
        lease_ttl_ms: 1_500,
        discovery_interval_ms: 100,
        owner: Some(owner.into()),
        ..Config::default()
    }
}

async fn publish(lab: &Lab, from: usize, count: usize) -> Result<()> {
    let now = Utc::now();
    let names = ["orders.created", "user.signup", "cart.viewed"];
    let records = (from..from + count)
        .map(|i| {
            encoded(&envelope(
                &format!("l{i:06}"),
                names[i % 3],
                Some(now),
                b"{}",
            ))
        })
        .collect();
    lab.publish(records).await
}

async fn shards_held(stats: &[&Arc<Stats>], expected: &[usize]) -> Result<()> {
    let what = format!("shards held to become {expected:?}");
    eventually(Duration::from_secs(30), &what, || {
        let held: Vec<usize> = stats.iter().map(|s| s.shards()).collect();
        async move { Ok(held == expected) }
    })
    .await
}

async fn lake_holds(lake: &Arc<dyn ObjectSink>, total: usize) -> Result<()> {
    eventually(Duration::from_secs(30), "every event in the lake", || {
        let lake = lake.clone();
        async move { Ok(read_lake(lake.as_ref(), "events/").await?.len() >= total) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_share_shards_and_take_over_after_a_crash() -> Result<()> {
    let lab = Lab::new(4).await?;
    let dir = tempfile::tempdir()?;
    let lake: Arc<dyn ObjectSink> = Arc::new(LocalFsSink::new(dir.path())?);
    let start = |owner: &str| -> Result<Running> {
        Ok(Running::start(Persister::new(
            &config(owner),
            lab.streams(),
            lab.coordinator(),
            lake.clone(),
        )?))
    };

    publish(&lab, 0, 2000).await?;
    let a = start("a")?;
    shards_held(&[&a.stats], &[4]).await?;
    let b = start("b")?;
    // `a` hands two shards over once it sees `b`.
    shards_held(&[&a.stats, &b.stats], &[2, 2]).await?;
    publish(&lab, 2000, 2000).await?;
    lake_holds(&lake, 4000).await?;

    // `a` dies; `b` takes its shards once their leases expire.
    a.kill().await;
    publish(&lab, 4000, 1000).await?;
    shards_held(&[&b.stats], &[4]).await?;
    lake_holds(&lake, 5000).await?;
    b.stop().await?;

    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for line in read_lake(lake.as_ref(), "events/").await? {
        let id = line.json["event_id"]
            .as_str()
            .context("event_id")?
            .to_owned();
        *counts.entry(id).or_default() += 1;
    }
    ensure!(counts.len() == 5000, "{} distinct events", counts.len());
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    ensure!(twice.is_empty(), "in the lake twice: {twice:?}");
    Ok(())
}

/// After a reshard the closed parents are read to their end and marked finished before their
/// children start, and nothing is lost or doubled across the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_finishes_parents_before_children() -> Result<()> {
    let lab = Lab::new(2).await?;
    let dir = tempfile::tempdir()?;
    let lake: Arc<dyn ObjectSink> = Arc::new(LocalFsSink::new(dir.path())?);
    let running = Running::start(Persister::new(
        &config("a"),
        lab.streams(),
        lab.coordinator(),
        lake.clone(),
    )?);
    publish(&lab, 0, 1000).await?;
    lake_holds(&lake, 1000).await?;
    lab.backend
        .update_stream(&streams::StreamSpec {
            name: lab.stream.clone(),
            shard_count: 3,
            retention_hours: 24,
            tags: Default::default(),
        })
        .await?;
    publish(&lab, 1000, 1500).await?;
    lake_holds(&lake, 2500).await?;
    shards_held(&[&running.stats], &[3]).await?;
    running.stop().await?;

    let parents: Vec<String> = lab
        .backend
        .list_shards(&lab.stream)
        .await?
        .into_iter()
        .filter(|s| s.closed)
        .map(|s| s.id)
        .collect();
    ensure!(parents.len() == 2, "{parents:?}");
    for parent in parents {
        let key = format!("{}/{parent}", lab.stream);
        let lease = lab
            .store
            .leases(persister::GROUP)
            .await?
            .into_iter()
            .find(|l| l.key == key)
            .context("no lease for a parent")?;
        let checkpoint: persister::Checkpoint =
            serde_json::from_str(lease.checkpoint.as_deref().context("no checkpoint")?)?;
        ensure!(checkpoint.end, "parent {parent} is not marked finished");
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for line in read_lake(lake.as_ref(), "events/").await? {
        let id = line.json["event_id"]
            .as_str()
            .context("event_id")?
            .to_owned();
        *counts.entry(id).or_default() += 1;
    }
    ensure!(counts.len() == 2500 && counts.values().all(|n| *n == 1));
    Ok(())
}

/// Lease renewals are frequent (every third of the TTL); between them an idle persister waits
/// for records instead of asking the GES again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_persister_waits_between_reads_while_renewing_its_leases() -> Result<()> {
    let lab = Lab::new(2).await?;
    let dir = tempfile::tempdir()?;
    let lake: Arc<dyn ObjectSink> = Arc::new(LocalFsSink::new(dir.path())?);
    let ges = CountingReads::new(lab.streams());
    let config = Config {
        lease_ttl_ms: 300,
        poll_interval_ms: 200,
        max_object_age_ms: 1_000,
        ..config("idle")
    };
    let running = Running::start(Persister::new(
        &config,
        ges.clone(),
        lab.coordinator(),
        lake.clone(),
    )?);
    shards_held(&[&running.stats], &[2]).await?;
    publish(&lab, 0, 10).await?;
    lake_holds(&lake, 10).await?;

    let idle = Duration::from_secs(2);
    let before = ges.reads.load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(idle).await;
    let reads = ges.reads.load(std::sync::atomic::Ordering::SeqCst) - before;
    // Each shard reads at most once per poll interval or flush tick when nothing arrives.
    let allowed = 2 * (idle.as_millis() / 100) as usize;
    ensure!(
        reads <= allowed,
        "{reads} reads of 2 idle shards in {idle:?} (at most {allowed} expected)"
    );
    running.stop().await?;
    ensure!(
        read_lake(lake.as_ref(), "events/").await?.len() == 10,
        "the lake holds the 10 events once"
    );
    Ok(())
}
