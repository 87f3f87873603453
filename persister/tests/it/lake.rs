//! The lake as a user sees it, on the local file system and on S3 (moto): partitions by event
//! time (late and cross-hour events), `_errors/` for garbage and absurd times, hostile names
//! confined to the base prefix, and object names that follow from their contents.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use persister::{Config, LocalFsSink, ObjectSink, Persister, S3Sink};

use crate::support::{Lab, Running, encoded, envelope, eventually, moto_bucket, read_lake};

const BASE: &str = "lake/env=test";

/// One record put on the stream and the directory (under the base prefix) it must land in.
struct Case {
    id: String,
    data: Bytes,
    dir: String,
    envelope: Option<proto::Envelope>,
}

fn hour_dir(name_segment: &str, time: DateTime<Utc>) -> String {
    format!("{name_segment}/{}", time.format("%Y-%m-%d:%H"))
}

fn cases(now: DateTime<Utc>) -> Vec<Case> {
    let case = |id: &str, name: &str, time: Option<DateTime<Utc>>, dir: String| {
        let env = envelope(id, name, time, format!(r#"{{"n":"{id}"}}"#).as_bytes());
        Case {
            id: id.to_owned(),
            data: encoded(&env),
            dir,
            envelope: Some(env),
        }
    };
    // An hour boundary two hours back: events on either side of it land in different hours.
    let boundary = now.duration_trunc(TimeDelta::hours(1)).unwrap_or(now) - TimeDelta::hours(2);
    let before = boundary - TimeDelta::milliseconds(1);
    let late = now - TimeDelta::days(3);
    let skewed = now + TimeDelta::hours(23);
    let future = now + TimeDelta::hours(25);
    let mut cases = vec![
        case(
            "a1",
            "orders.created",
            Some(before),
            hour_dir("orders.created", before),
        ),
        case(
            "a2",
            "orders.created",
            Some(boundary),
            hour_dir("orders.created", boundary),
        ),
        case(
            "a3",
            "orders.created",
            Some(boundary + TimeDelta::minutes(59)),
            hour_dir("orders.created", boundary),
        ),
        // Late by days: its own hour, not the arrival hour.
        case(
            "a4",
            "orders.created",
            Some(late),
            hour_dir("orders.created", late),
        ),
        case("a5", "user.signup", Some(now), hour_dir("user.signup", now)),
        // Clock skew within a day is kept.
        case(
            "a6",
            "user.signup",
            Some(skewed),
            hour_dir("user.signup", skewed),
        ),
        case(
            "e1",
            "user.signup",
            Some(future),
            "_errors/future_event_time".into(),
        ),
        case(
            "e2",
            "user.signup",
            None,
            "_errors/missing_event_time".into(),
        ),
        case("e3", "", Some(now), "_errors/missing_event_name".into()),
        case("h1", "my table", Some(now), hour_dir("my%20table", now)),
        case(
            "h2",
            "你好/😊",
            Some(now),
            hour_dir("%E4%BD%A0%E5%A5%BD%2F%F0%9F%98%8A", now),
        ),
        case("h3", "../", Some(now), hour_dir("%2E.%2F", now)),
        case(
            "h4",
            "../../../etc/passwd",
            Some(now),
            hour_dir("%2E.%2F..%2F..%2Fetc%2Fpasswd", now),
        ),
        case("h5", "_errors", Some(now), hour_dir("%5Ferrors", now)),
        case("h6", "..", Some(now), hour_dir("%2E.", now)),
        case(
            "h7",
            &"n".repeat(1024 * 1024 - 1024),
            Some(now),
            "_errors/event_name_too_long".into(),
        ),
    ];
    for (i, garbage) in [
        &b"\xff\xff\xff"[..],
        b"not an envelope at all",
        &[0x0a, 0xff, 0x01],
    ]
    .into_iter()
    .enumerate()
    {
        cases.push(Case {
            id: format!("g{i}"),
            data: Bytes::copy_from_slice(garbage),
            dir: "_errors/undecodable".into(),
            envelope: None,
        });
    }
    cases
}

fn config() -> Config {
    Config {
        base_prefix: BASE.into(),
        max_object_age_ms: 50,
        poll_interval_ms: 20,
        discovery_interval_ms: 50,
        owner: Some("p1".into()),
        ..Config::default()
    }
}

/// The identity a lake line stands for: the event id, or the raw bytes of garbage.
fn identity(line: &serde_json::Value) -> Result<String> {
    if let Some(id) = line["event_id"]
        .as_str()
        .or(line["envelope"]["event_id"].as_str())
    {
        return Ok(id.to_owned());
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(
        line["data_base64"]
            .as_str()
            .context("line without identity")?,
    )?;
    Ok(format!("raw:{}", hex(&raw)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn case_identity(case: &Case) -> String {
    match case.envelope {
        Some(_) => case.id.clone(),
        None => format!("raw:{}", hex(&case.data)),
    }
}

/// Puts every case on a two-shard GES, runs the persister to completion and checks the lake
/// through `sink`.
async fn scenario(sink: Arc<dyn ObjectSink>) -> Result<()> {
    let lab = Lab::new(2).await?;
    let cases = cases(Utc::now());
    lab.publish(cases.iter().map(|c| c.data.clone()).collect())
        .await?;
    let persister = Persister::new(&config(), lab.streams(), lab.coordinator(), sink.clone())?;
    let running = Running::start(persister);
    let prefix = format!("{BASE}/");
    let expected = cases.len();
    eventually(Duration::from_secs(30), "every case in the lake", || {
        let (sink, prefix) = (sink.clone(), prefix.clone());
        async move { Ok(read_lake(sink.as_ref(), &prefix).await?.len() >= expected) }
    })
    .await?;
    running.stop().await?;

    let by_identity: BTreeMap<String, &Case> =
        cases.iter().map(|c| (case_identity(c), c)).collect();
    let lines = read_lake(sink.as_ref(), &prefix).await?;
    ensure!(
        lines.len() == cases.len(),
        "{} lines for {} cases",
        lines.len(),
        cases.len()
    );
    let mut seen = BTreeSet::new();
    for line in &lines {
        ensure!(
            line.key.starts_with(&prefix),
            "key {} escapes the base prefix",
            line.key
        );
        let rest = &line.key[prefix.len()..];
        ensure!(
            !rest
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == ".." || s.starts_with('.')),
            "unsafe segment in {}",
            line.key
        );
        let id = identity(&line.json)?;
        ensure!(seen.insert(id.clone()), "{id} is in the lake twice");
        let case = by_identity
            .get(&id)
            .context("a record that was never published")?;
        let dir = line
            .key
            .rsplit_once('/')
            .map(|(d, _)| d)
            .unwrap_or_default();
        ensure!(
            dir == format!("{BASE}/{}", case.dir),
            "{id} landed in {dir}, expected {}",
            case.dir
        );
        if line.key.contains("/_errors/") {
            ensure!(dir.ends_with(line.json["reason"].as_str().context("reason")?));
            let raw = base64::engine::general_purpose::STANDARD
                .decode(line.json["data_base64"].as_str().context("data_base64")?)?;
            ensure!(
                raw == case.data.as_ref(),
                "{id}: the raw record is kept for repair"
            );
        } else if let Some(env) = &case.envelope {
            // The line is an `api::EnvelopeView`, as `fanner tail` prints it.
            let view: api::EnvelopeView = serde_json::from_value(line.json.clone())?;
            ensure!(view.event_name == env.event_name && view.producer == env.producer);
            ensure!(view.attributes.get("region").map(String::as_str) == Some("eu"));
            ensure!(
                view.payload == Some(serde_json::json!({"n": id})),
                "payload of {id}"
            );
            ensure!(view.payload_base64.is_none());
            let time = env.event_time.as_ref().context("time")?;
            ensure!(view.event_time.map(|t| t.timestamp()) == Some(time.seconds));
        }
    }
    ensure!(seen.len() == cases.len());

    // An object's name says which records it holds, `<shard>-<first>-<last>`: exactly the
    // records of that shard and directory in that range.
    let mut by_key: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for line in &lines {
        by_key
            .entry(&line.key)
            .or_default()
            .insert(identity(&line.json)?);
    }
    let stream = lab.records().await?;
    for (key, ids) in by_key {
        let (dir, name) = key.rsplit_once('/').context("key")?;
        let stem = name.split_once('.').map(|(s, _)| s).context("extension")?;
        let mut parts = stem.rsplitn(3, '-');
        let (last, first, shard) = (
            parts.next().context("last")?,
            parts.next().context("first")?,
            parts.next().context("shard")?,
        );
        let mut expected = BTreeSet::new();
        for record in stream.get(shard).context("no such shard")? {
            let in_range = streams::cmp_sequence(&record.sequence, first).is_ge()
                && streams::cmp_sequence(&record.sequence, last).is_le();
            let case = cases
                .iter()
                .find(|c| c.data == record.data)
                .context("unknown record")?;
            if in_range && format!("{BASE}/{}", case.dir) == dir {
                expected.insert(case_identity(case));
            }
        }
        ensure!(
            ids == expected,
            "{key} holds {ids:?}, its name says {expected:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn local_lake_partitions_confines_and_names_by_content() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let sink = LocalFsSink::new(dir.path().join("lake"))?;
    scenario(Arc::new(sink)).await?;
    // Nothing was written outside the sink's root.
    let mut outside = Vec::new();
    for entry in std::fs::read_dir(dir.path())? {
        let name = entry?.file_name();
        if name != "lake" {
            outside.push(name);
        }
    }
    ensure!(outside.is_empty(), "files outside the lake: {outside:?}");
    Ok(())
}

#[tokio::test]
async fn s3_lake_partitions_confines_and_names_by_content() -> Result<()> {
    let Some(moto) = testkit::moto::shared("s3_lake_partitions_confines_and_names_by_content")
    else {
        return Ok(());
    };
    let bucket = testkit::unique_name("lake");
    let sink = S3Sink::new(moto_bucket(moto, &bucket).await?);
    scenario(Arc::new(sink.clone())).await?;
    // Every object in the bucket is under the base prefix.
    let all = sink.list("").await?;
    ensure!(!all.is_empty());
    ensure!(
        all.iter().all(|k| k.starts_with("lake/env=test/")),
        "{all:?}"
    );
    Ok(())
}
