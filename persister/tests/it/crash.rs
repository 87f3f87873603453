//! Crashes at many points (right after a checkpoint write, before and after an object write,
//! and at arbitrary moments), restarts, and checks that every event is in the lake exactly
//! once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use base64::Engine;
use bytes::Bytes;
use chrono::Utc;
use persister::{Config, LocalFsSink, ObjectSink, Persister};

use crate::support::{
    FaultySink, Freeze, Halt, HaltingCoordinator, Lab, Line, Running, encoded, envelope,
    eventually, read_lake,
};

/// Publishes a varied mix: several names, event times over three hours, late events, garbage
/// and absurd times, payloads of different sizes. Returns the identity of each record as it
/// appears in the lake.
struct Publisher<'a> {
    lab: &'a Lab,
    published: Vec<String>,
}

impl Publisher<'_> {
    async fn publish(&mut self, n: usize) -> Result<()> {
        let names = ["orders.created", "orders.paid", "user.signup"];
        let base = Utc::now();
        let mut batch = Vec::with_capacity(n);
        for _ in 0..n {
            let i = self.published.len();
            let (data, identity) = if i % 23 == 5 {
                let garbage = format!("\u{7f}garbage-{i}");
                (
                    Bytes::from(garbage.clone().into_bytes()),
                    format!("raw:{garbage}"),
                )
            } else {
                let id = format!("ev-{i:06}");
                let time = match i % 11 {
                    0 => None,
                    1 => Some(base + chrono::Duration::days(3)),
                    n => Some(base - chrono::Duration::minutes(40 * (n % 3) as i64)),
                };
                // Mostly a few busy partitions, cut by age and size; now and then a rare name
                // that pushes the oldest partition out.
                let name = if i % 7 == 3 {
                    format!("rare.{}", i % 20)
                } else {
                    names[i % names.len()].to_owned()
                };
                let payload = "x".repeat(20 + (i * 37) % 400);
                let env = envelope(
                    &id,
                    &name,
                    time,
                    format!(r#"{{"p":"{payload}"}}"#).as_bytes(),
                );
                (encoded(&env), id)
            };
            batch.push(data);
            self.published.push(identity);
        }
        self.lab.publish(batch).await
    }
}

/// The identity of the record a lake line holds.
fn identity(line: &Line) -> Result<String> {
    if let Some(id) = line.json["event_id"].as_str() {
        return Ok(id.to_owned());
    }
    if let Some(id) = line.json["envelope"]["event_id"].as_str() {
        return Ok(id.to_owned());
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(
        line.json["data_base64"]
            .as_str()
            .context("line without identity")?,
    )?;
    Ok(format!("raw:{}", String::from_utf8(raw)?))
}

fn config() -> Config {
    Config {
        base_prefix: "lake".into(),
        // Small objects, short ages and few open partitions: many cuts, evictions and
        // partitions written at different times.
        max_object_bytes: 4_000,
        max_object_age_ms: 25,
        max_open_partitions: 40,
        max_puts_in_flight: 3,
        read_batch: 9,
        poll_interval_ms: 5,
        discovery_interval_ms: 20,
        owner: Some("p1".into()),
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_many_points_then_every_event_is_in_the_lake_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let lake: Arc<dyn ObjectSink> = Arc::new(LocalFsSink::new(dir.path())?);
    let lab = Lab::new(2).await?;
    let coordinator = HaltingCoordinator::new(lab.coordinator());
    // Every put of every run goes through one recorder.
    let recorder = FaultySink::new(lake.clone(), Halt::new());
    let mut publisher = Publisher {
        lab: &lab,
        published: Vec::new(),
    };
    let mut frozen = 0;
    for round in 0..60usize {
        publisher.publish(40).await?;
        // The sink and the lease store die together, as one process would.
        let sink = FaultySink::new(recorder.clone(), coordinator.halt.clone());
        let k = 1 + (round * 7) % 13;
        match round % 5 {
            0 => coordinator.halt_at_checkpoint(k, Freeze::AfterPut),
            1 => coordinator.halt_at_checkpoint(k, Freeze::BeforePut),
            2 => sink.halt_at_put(k, Freeze::BeforePut),
            3 => sink.halt_at_put(k, Freeze::AfterPut),
            _ => coordinator.halt.plan(None),
        }
        let running = Running::start(Persister::new(
            &config(),
            lab.streams(),
            coordinator.clone(),
            sink.clone(),
        )?);
        // Trickle while it runs, so partitions are cut by age in small pieces that a replay,
        // reading everything at once, would not cut the same way.
        for _ in 0..3 {
            publisher.publish(5).await?;
            tokio::time::sleep(Duration::from_millis(7)).await;
        }
        if round % 5 == 4 {
            tokio::time::sleep(Duration::from_millis(3 + (round as u64 * 13) % 70)).await;
        } else {
            let hit = tokio::select! {
                _ = coordinator.halt.reached.notified() => true,
                _ = tokio::time::sleep(Duration::from_millis(1500)) => false,
            };
            frozen += usize::from(hit);
        }
        running.kill().await;
        coordinator.halt.plan(None);
    }
    ensure!(frozen >= 36, "only {frozen} crash points were reached");

    let running = Running::start(Persister::new(
        &config(),
        lab.streams(),
        coordinator.clone(),
        recorder.clone(),
    )?);
    let total = publisher.published.len();
    eventually(Duration::from_secs(60), "every record in the lake", || {
        let lake = lake.clone();
        async move { Ok(read_lake(lake.as_ref(), "lake/").await?.len() >= total) }
    })
    .await?;
    running.stop().await?;

    let lines = read_lake(lake.as_ref(), "lake/").await?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for line in &lines {
        *counts.entry(identity(line)?).or_default() += 1;
    }
    let missing: Vec<_> = publisher
        .published
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .take(10)
        .collect();
    ensure!(missing.is_empty(), "lost: {missing:?}");
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(10).collect();
    ensure!(twice.is_empty(), "in the lake more than once: {twice:?}");
    ensure!(
        counts.len() == total,
        "{} identities for {total} records",
        counts.len()
    );
    let mut objects = lake.list("lake/").await?;
    objects.sort();
    let mut put_keys = recorder.keys();
    let puts = put_keys.len();
    put_keys.sort();
    put_keys.dedup();
    // Replays wrote objects again under the same keys, and no write left an object behind
    // that the lake does not account for.
    ensure!(puts > put_keys.len(), "no object was written twice");
    ensure!(
        put_keys == objects,
        "keys written and objects in the lake differ"
    );
    Ok(())
}
