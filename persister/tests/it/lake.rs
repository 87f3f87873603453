//! The lake as a user sees it, on the local file system and on S3 (moto): partitions by event
//! time (late and cross-hour events), `_errors/` for garbage and absurd times, hostile names
//! confined to the base prefix, and object names that follow from their contents.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use persister::{Config, LocalFsSink, ObjectSink, Persister, S3Sink};

use crate::support::{
    MemBackend, MemCoordinator, MemStreams, Moto, Running, at, encoded, envelope, eventually,
    read_lake,
};

const ARRIVAL: &str = "2024-05-01T12:00:00Z";

/// One record put on the stream and where it must end up.
struct Case {
    id: String,
    data: Bytes,
    /// The directory under the base prefix.
    dir: String,
    envelope: Option<proto::Envelope>,
}

fn case(id: &str, name: &str, time: Option<&str>, dir: &str) -> Case {
    let env = envelope(
        id,
        name,
        time.map(at),
        format!(r#"{{"n":"{id}"}}"#).as_bytes(),
    );
    Case {
        id: id.to_owned(),
        data: encoded(&env),
        dir: dir.to_owned(),
        envelope: Some(env),
    }
}

fn cases() -> Vec<Case> {
    let mut cases = vec![
        case(
            "a1",
            "orders.created",
            Some("2024-05-01T11:59:59.999Z"),
            "orders.created/2024-05-01:11",
        ),
        case(
            "a2",
            "orders.created",
            Some("2024-05-01T12:00:00Z"),
            "orders.created/2024-05-01:12",
        ),
        case(
            "a3",
            "orders.created",
            Some("2024-05-01T11:15:00Z"),
            "orders.created/2024-05-01:11",
        ),
        // Late by days: its own hour, not the arrival hour.
        case(
            "a4",
            "orders.created",
            Some("2024-04-28T03:04:05Z"),
            "orders.created/2024-04-28:03",
        ),
        case(
            "a5",
            "user.signup",
            Some("2024-05-01T12:30:00Z"),
            "user.signup/2024-05-01:12",
        ),
        // Clock skew within a day is kept.
        case(
            "a6",
            "user.signup",
            Some("2024-05-02T11:59:00Z"),
            "user.signup/2024-05-02:11",
        ),
        case(
            "e1",
            "user.signup",
            Some("2024-05-02T12:00:01Z"),
            "_errors/future_event_time",
        ),
        case("e2", "user.signup", None, "_errors/missing_event_time"),
        case(
            "e3",
            "",
            Some("2024-05-01T12:00:00Z"),
            "_errors/missing_event_name",
        ),
        case(
            "h1",
            "my table",
            Some("2024-05-01T12:00:00Z"),
            "my%20table/2024-05-01:12",
        ),
        case(
            "h2",
            "你好/😊",
            Some("2024-05-01T12:00:00Z"),
            "%E4%BD%A0%E5%A5%BD%2F%F0%9F%98%8A/2024-05-01:12",
        ),
        case(
            "h3",
            "../",
            Some("2024-05-01T12:00:00Z"),
            "%2E.%2F/2024-05-01:12",
        ),
        case(
            "h4",
            "../../../etc/passwd",
            Some("2024-05-01T12:00:00Z"),
            "%2E.%2F..%2F..%2Fetc%2Fpasswd/2024-05-01:12",
        ),
        case(
            "h5",
            "_errors",
            Some("2024-05-01T12:00:00Z"),
            "%5Ferrors/2024-05-01:12",
        ),
        case(
            "h6",
            &"n".repeat(1024 * 1024),
            Some("2024-05-01T12:00:00Z"),
            "_errors/event_name_too_long",
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

fn config(stream: &str) -> Config {
    Config {
        stream: stream.into(),
        base_prefix: "lake/env=test".into(),
        max_object_age_ms: 50,
        poll_interval_ms: 10,
        discovery_interval_ms: 50,
        owner: Some("p1".into()),
        ..Config::default()
    }
}

/// Puts every case on a two-shard stream, runs the persister to completion and checks the
/// lake, through `sink`.
async fn scenario(sink: Arc<dyn ObjectSink>) -> Result<()> {
    let backend = MemBackend::with_stream("ges", 2);
    let shards = backend.shard_ids("ges");
    let cases = cases();
    let arrival: DateTime<Utc> = at(ARRIVAL);
    // Which records each shard got, for checking object names against their contents.
    let mut all_records: BTreeMap<String, Vec<(String, usize)>> = BTreeMap::new();
    for (i, c) in cases.iter().enumerate() {
        let shard = &shards[i % shards.len()];
        let seq = backend.append("ges", shard, c.data.clone(), arrival);
        all_records.entry(shard.clone()).or_default().push((seq, i));
    }
    let coordinator = MemCoordinator::new();
    let persister = Persister::new(
        &config("ges"),
        Arc::new(MemStreams(backend.clone())),
        coordinator.clone(),
        sink.clone(),
    )?;
    let running = Running::start(persister);
    let base = "lake/env=test/";
    let expected = cases.len();
    eventually(Duration::from_secs(20), "every case in the lake", || {
        let sink = sink.clone();
        async move { Ok(read_lake(sink.as_ref(), base).await?.len() >= expected) }
    })
    .await?;
    running.stop().await?;

    let lines = read_lake(sink.as_ref(), base).await?;
    ensure!(
        lines.len() == cases.len(),
        "{} lines for {} cases",
        lines.len(),
        cases.len()
    );
    let mut seen = BTreeSet::new();
    for line in &lines {
        ensure!(
            line.key.starts_with(base),
            "key {} escapes the base prefix",
            line.key
        );
        let rest = &line.key[base.len()..];
        ensure!(
            !rest
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == ".." || s.starts_with('.')),
            "unsafe segment in {}",
            line.key
        );
        let id = if line.key.contains("/_errors/undecodable/") {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(line.json["data_base64"].as_str().context("data_base64")?)?;
            let case = cases
                .iter()
                .find(|c| c.envelope.is_none() && c.data.as_ref() == raw.as_slice())
                .context("undecodable record that was never published")?;
            ensure!(line.json["reason"] == "undecodable");
            case.id.clone()
        } else if line.key.contains("/_errors/") {
            line.json["envelope"]["event_id"]
                .as_str()
                .context("error line without envelope")?
                .to_owned()
        } else {
            line.json["event_id"]
                .as_str()
                .context("event_id")?
                .to_owned()
        };
        ensure!(seen.insert(id.clone()), "{id} is in the lake twice");
        let case = cases.iter().find(|c| c.id == id).context("unknown id")?;
        let dir = line
            .key
            .rsplit_once('/')
            .map(|(d, _)| d)
            .unwrap_or_default();
        ensure!(
            dir == format!("lake/env=test/{}", case.dir),
            "{id} landed in {dir}, expected {}",
            case.dir
        );
        if let (Some(env), false) = (&case.envelope, line.key.contains("/_errors/")) {
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

    // An object's name says which records it holds: `<shard>-<first>-<last>`, and it holds
    // exactly the records of its shard and directory in that range.
    let mut by_key: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for line in &lines {
        let id = line.json["event_id"]
            .as_str()
            .or(line.json["envelope"]["event_id"].as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| {
                line.json["sequence"]
                    .as_str()
                    .map(|s| format!("seq:{s}"))
                    .unwrap_or_default()
            });
        by_key.entry(&line.key).or_default().insert(id);
    }
    for (key, ids) in by_key {
        let (dir, name) = key.rsplit_once('/').context("key")?;
        let stem = name.split_once('.').map(|(s, _)| s).context("extension")?;
        let mut parts = stem.rsplitn(3, '-');
        let (last, first, shard) = (
            parts.next().context("last")?,
            parts.next().context("first")?,
            parts.next().context("shard")?,
        );
        let expected: BTreeSet<String> = all_records[shard]
            .iter()
            .filter(|(seq, _)| {
                streams::cmp_sequence(seq, first).is_ge()
                    && streams::cmp_sequence(seq, last).is_le()
            })
            .filter_map(|(seq, i)| {
                let c = &cases[*i];
                (format!("lake/env=test/{}", c.dir) == dir).then(|| {
                    if c.envelope.is_some() {
                        c.id.clone()
                    } else {
                        format!("seq:{seq}")
                    }
                })
            })
            .collect();
        ensure!(
            ids == expected,
            "{key} holds {ids:?}, its name says {expected:?}"
        );
    }
    ensure!(seen.len() == cases.len());
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
    let Some(moto) = Moto::start().await? else {
        return Ok(());
    };
    moto.create_bucket("lake").await?;
    scenario(Arc::new(S3Sink::new(moto.s3("lake")?))).await?;
    // Every object in the bucket is under the base prefix.
    let all = S3Sink::new(moto.s3("lake")?).list("").await?;
    ensure!(!all.is_empty());
    ensure!(
        all.iter().all(|k| k.starts_with("lake/env=test/")),
        "{all:?}"
    );
    Ok(())
}
