//! Parquet objects read back by an independent reader (pyarrow).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use base64::Engine;
use chrono::{TimeDelta, Utc};
use persister::{Config, LocalFsSink, ObjectFormat, ObjectSink, Persister};

use crate::support::{Lab, Running, encoded, envelope, eventually};

/// Prints, for every Parquet file named on the command line, the Arrow type of each column as
/// pyarrow reads it, then one JSON object per row.
const READER: &str = r#"
import base64, json, sys
import pyarrow.parquet as pq
for path in sys.argv[1:]:
    table = pq.read_table(path)
    print(json.dumps({"types": {f.name: str(f.type) for f in table.schema}}))
    for row in table.to_pylist():
        row["event_time"] = row["event_time"].isoformat() if row["event_time"] else None
        row["ingest_time"] = row["ingest_time"].isoformat() if row["ingest_time"] else None
        row["attributes"] = dict(row["attributes"])
        row["payload"] = base64.b64encode(row["payload"]).decode()
        row["file"] = path
        print(json.dumps(row))
"#;

#[tokio::test]
async fn parquet_objects_are_readable_by_pyarrow() -> Result<()> {
    if !testkit::integration_enabled("parquet_objects_are_readable_by_pyarrow") {
        return Ok(());
    }
    let Ok(python) = std::env::var("FANNER_PYTHON") else {
        eprintln!(
            "parquet_objects_are_readable_by_pyarrow: skipped: set FANNER_PYTHON (scripts/setup-tools prints it)"
        );
        return Ok(());
    };
    let lab = Lab::new(2).await?;
    let dir = tempfile::tempdir()?;
    let lake: Arc<dyn ObjectSink> = Arc::new(LocalFsSink::new(dir.path())?);
    let now = Utc::now();
    let mut expected = BTreeMap::new();
    let mut records = Vec::new();
    for i in 0..300 {
        let name = ["orders.created", "user.signup", "my table"][i % 3];
        let time = now - TimeDelta::minutes(90 * (i % 2) as i64);
        let payload: Vec<u8> = if i % 4 == 0 {
            vec![0, 159, 146, 150, i as u8]
        } else {
            format!(r#"{{"i":{i}}}"#).into_bytes()
        };
        let mut env = envelope(&format!("p{i:04}"), name, Some(time), &payload);
        env.attributes.insert("n".into(), i.to_string());
        records.push(encoded(&env));
        expected.insert(env.event_id.clone(), env);
    }
    lab.publish(records).await?;
    let config = Config {
        format: ObjectFormat::Parquet,
        max_object_age_ms: 100,
        discovery_interval_ms: 50,
        owner: Some("p1".into()),
        ..Config::default()
    };
    let persister = Persister::new(&config, lab.streams(), lab.coordinator(), lake.clone())?;
    let running = Running::start(persister);
    let stats = running.stats.clone();
    eventually(Duration::from_secs(30), "every event written", || {
        let stats = stats.clone();
        async move { Ok(stats.events_written() >= 300) }
    })
    .await?;
    running.stop().await?;

    let keys = lake.list("events/").await?;
    ensure!(keys.iter().all(|k| k.ends_with(".parquet")), "{keys:?}");
    let files: Vec<_> = keys.iter().map(|k| dir.path().join(k)).collect();
    let output = std::process::Command::new(&python)
        .arg("-c")
        .arg(READER)
        .args(&files)
        .output()
        .with_context(|| format!("running {python}"))?;
    ensure!(
        output.status.success(),
        "pyarrow failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // What Arrow readers saw of the lake's objects before they were written without Arrow:
    // the event name a dictionary, times in UTC, attributes a map.
    let types = serde_json::json!({
        "event_id": "string",
        "event_name": "dictionary<values=string, indices=int32, ordered=0>",
        "event_time": "timestamp[us, tz=UTC]",
        "ingest_time": "timestamp[us, tz=UTC]",
        "producer": "string",
        "trace_id": "string",
        "user_id": "string",
        "device_id": "string",
        "attributes": "map<string, string ('attributes')>",
        "content_type": "string",
        "payload": "binary",
    });
    let (mut seen, mut schemas) = (0, 0);
    for line in String::from_utf8(output.stdout)?.lines() {
        let row: serde_json::Value = serde_json::from_str(line)?;
        if let Some(found) = row.get("types") {
            ensure!(*found == types, "pyarrow read the columns as {found}");
            schemas += 1;
            continue;
        }
        let id = row["event_id"].as_str().context("event_id")?;
        let env = expected
            .get(id)
            .with_context(|| format!("unexpected row {id}"))?;
        seen += 1;
        ensure!(row["event_name"] == env.event_name.as_str());
        ensure!(row["producer"] == env.producer.as_str());
        ensure!(row["trace_id"] == env.trace_id.as_str());
        ensure!(row["content_type"] == env.content_type.as_str());
        let payload = base64::engine::general_purpose::STANDARD
            .decode(row["payload"].as_str().context("payload")?)?;
        ensure!(payload == env.payload, "payload of {id}");
        ensure!(row["attributes"]["n"] == env.attributes["n"].as_str());
        let time = env.event_time.as_ref().context("time")?;
        let micros =
            chrono::DateTime::parse_from_rfc3339(row["event_time"].as_str().context("time")?)?
                .timestamp_micros();
        ensure!(
            micros == time.seconds * 1_000_000 + i64::from(time.nanos / 1000),
            "time of {id}"
        );
        // The file sits in the partition of its rows.
        let file = row["file"].as_str().context("file")?;
        let hour = chrono::DateTime::from_timestamp(time.seconds, 0)
            .context("time")?
            .format("%Y-%m-%d:%H")
            .to_string();
        ensure!(file.contains(&format!("/{hour}/")), "{id} in {file}");
    }
    ensure!(
        seen == expected.len(),
        "pyarrow read {seen} rows of {}",
        expected.len()
    );
    ensure!(
        schemas == files.len(),
        "{schemas} schemas for {} files",
        files.len()
    );
    Ok(())
}
