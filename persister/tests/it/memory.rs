//! Bounded memory under any mix of event names: 10,000 distinct names against a small cap on
//! open partitions.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, ensure};
use chrono::Utc;
use persister::{Config, LocalFsSink, ObjectSink, Persister};

use crate::support::{Lab, Running, encoded, envelope, eventually, read_lake};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_names_stay_under_the_open_partition_cap() -> Result<()> {
    // Ten thousand objects, each synced to disk: the integration tier.
    if !testkit::integration_enabled("ten_thousand_names_stay_under_the_open_partition_cap") {
        return Ok(());
    }
    const NAMES: usize = 10_000;
    const CAP: usize = 64;
    let lab = Lab::new(2).await?;
    let dir = tempfile::tempdir()?;
    let lake: Arc<dyn ObjectSink> = Arc::new(LocalFsSink::new(dir.path())?);
    let now = Utc::now();
    // Every name once, then the first few hundred again, far behind: their partitions were
    // pushed out long before and open again.
    const AGAIN: usize = 500;
    let mut records = Vec::with_capacity(NAMES + AGAIN);
    for (round, count) in [(0, NAMES), (1, AGAIN)] {
        for i in 0..count {
            let env = envelope(
                &format!("e{round}-{i}"),
                &format!("name.{i:05}"),
                Some(now),
                b"{}",
            );
            records.push(encoded(&env));
        }
    }
    let total = records.len();
    lab.publish(records).await?;
    let config = Config {
        max_open_partitions: CAP,
        // Neither age nor size cuts anything: only the cap does.
        max_object_age_ms: 600_000,
        discovery_interval_ms: 50,
        owner: Some("p1".into()),
        ..Config::default()
    };
    let persister = Persister::new(&config, lab.streams(), lab.coordinator(), lake.clone())?;
    let running = Running::start(persister);
    let stats = running.stats.clone();
    eventually(
        Duration::from_secs(300),
        "all but the last open partitions written",
        || {
            let stats = stats.clone();
            async move { Ok(stats.events_written() as usize + CAP >= total) }
        },
    )
    .await?;
    running.stop().await?;

    ensure!(
        stats.peak_open_partitions() <= CAP,
        "{} partitions were open at once, the cap is {CAP}",
        stats.peak_open_partitions()
    );
    ensure!(
        stats.peak_open_partitions() > CAP / 2,
        "the cap was never approached"
    );
    let lines = read_lake(lake.as_ref(), "events/").await?;
    let ids: BTreeSet<&str> = lines
        .iter()
        .filter_map(|l| l.json["event_id"].as_str())
        .collect();
    ensure!(
        lines.len() == total,
        "{} lines for {total} events",
        lines.len()
    );
    ensure!(ids.len() == total, "duplicates: {} distinct ids", ids.len());
    let dirs: BTreeSet<&str> = lines
        .iter()
        .filter_map(|l| l.key.split('/').nth(1))
        .collect();
    ensure!(dirs.len() == NAMES, "{} event directories", dirs.len());
    Ok(())
}
