//! `fanner publish` and `fanner tail`.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use api::{PublishEvent, PublishRequest};

use crate::Connection;
use crate::commands::client;
use crate::output;

/// Events per publish request when reading stdin.
const BATCH: usize = 500;

pub async fn publish(
    conn: &Connection,
    event: Option<String>,
    payload: Option<String>,
    user_id: Option<String>,
) -> anyhow::Result<ExitCode> {
    let client = client(conn)?;
    let one = |event: &str, raw: &str| -> anyhow::Result<PublishEvent> {
        let payload: serde_json::Value =
            serde_json::from_str(raw).with_context(|| format!("payload {raw:?} is not JSON"))?;
        Ok(PublishEvent {
            event: event.to_owned(),
            payload: Some(payload),
            user_id: user_id.clone(),
            ..PublishEvent::default()
        })
    };
    if let (Some(event), Some(payload)) = (&event, &payload) {
        let response = client
            .publish(&PublishRequest {
                events: vec![one(event, payload)?],
            })
            .await?;
        if conn.json {
            output::json(&response)?;
        } else {
            println!("{}", response.event_ids.join("\n"));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if payload.is_some() {
        bail!("give the event name before its payload");
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        bail!("no payload: pass one after the event name, or pipe NDJSON on stdin");
    }
    let progress = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {pos} events published ({per_sec})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar
    });
    let mut batch = Vec::with_capacity(BATCH);
    let mut published = 0usize;
    for (number, line) in stdin.lock().lines().enumerate() {
        let line = line.context("cannot read stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = match &event {
            Some(event) => one(event, &line),
            None => serde_json::from_str::<PublishEvent>(&line).context("not an event object"),
        };
        batch.push(parsed.with_context(|| format!("line {}", number + 1))?);
        if batch.len() == BATCH {
            published += send(&client, &mut batch).await?;
            if let Some(bar) = &progress {
                bar.set_position(published as u64);
            }
        }
    }
    if !batch.is_empty() {
        published += send(&client, &mut batch).await?;
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    if conn.json {
        output::json(&serde_json::json!({ "accepted": published }))?;
    } else {
        eprintln!("Published {published} events.");
    }
    Ok(ExitCode::SUCCESS)
}

async fn send(client: &api::Client, batch: &mut Vec<PublishEvent>) -> anyhow::Result<usize> {
    let events = std::mem::take(batch);
    Ok(client.publish(&PublishRequest { events }).await?.accepted)
}

pub async fn tail(
    conn: &Connection,
    stream: &str,
    from_beginning: bool,
    limit: Option<u64>,
    idle: Option<f64>,
) -> anyhow::Result<ExitCode> {
    let idle = idle
        .map(|seconds| {
            Duration::try_from_secs_f64(seconds)
                .context("--idle must be a non-negative number of seconds")
        })
        .transpose()?;
    let mut failed = None;
    client(conn)?
        .tail(
            stream,
            from_beginning,
            limit,
            idle,
            |record| match serde_json::to_string(&record.envelope) {
                Ok(line) => {
                    println!("{line}");
                    true
                }
                Err(e) => {
                    failed = Some(e);
                    false
                }
            },
        )
        .await?;
    if let Some(error) = failed {
        bail!("cannot print a record: {error}");
    }
    Ok(ExitCode::SUCCESS)
}
