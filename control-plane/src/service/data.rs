//! The data-plane edges the API serves: publishing onto the global event stream, and tailing a
//! consumer stream.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ::streams::{PutRecord, RetryPolicy, ShardReader, StartPosition};
use api::envelope::utc_to_timestamp;
use api::{EnvelopeView, PublishEvent, PublishRequest, PublishResponse, Role, TailRecord, rules};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use proto::Message;
use tokio::sync::mpsc;

use super::ControlPlane;
use crate::auth::Ctx;
use crate::error::ApiError;
use crate::store::{catalog, streams};

/// The most events one publish request carries.
pub const MAX_PUBLISH_EVENTS: usize = 10_000;
/// How often a tail looks for new records when every shard was empty.
const TAIL_POLL: Duration = Duration::from_millis(100);

impl ControlPlane {
    /// Wraps each event in an envelope (producer = the caller) and appends it to the global event
    /// stream. Only an event's owner (or an admin) may publish it.
    pub async fn publish(
        &self,
        ctx: &Ctx,
        req: PublishRequest,
    ) -> Result<PublishResponse, ApiError> {
        if req.events.is_empty() {
            return Err(ApiError::BadRequest(
                "events must hold at least one event".to_owned(),
            ));
        }
        if req.events.len() > MAX_PUBLISH_EVENTS {
            return Err(ApiError::BadRequest(format!(
                "at most {MAX_PUBLISH_EVENTS} events per request"
            )));
        }
        if ctx.caller.role == Role::Auditor {
            return Err(ApiError::Forbidden("auditors cannot publish".to_owned()));
        }
        let catalog: BTreeMap<String, String> = catalog::list(&mut *self.conn().await?)
            .await?
            .into_iter()
            .map(|e| (e.name, e.owner))
            .collect();
        let names: BTreeSet<&str> = req.events.iter().map(|e| e.event.as_str()).collect();
        let unknown: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !catalog.contains_key(*n))
            .collect();
        if !unknown.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "unknown events: {}",
                unknown.join(", ")
            )));
        }
        let foreign: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| {
                !ctx.caller.is_admin()
                    && catalog
                        .get(*n)
                        .is_some_and(|owner| *owner != ctx.caller.principal)
            })
            .collect();
        if !foreign.is_empty() {
            return Err(ApiError::Forbidden(format!(
                "only an event's owner (or an admin) may publish it: {}",
                foreign.join(", ")
            )));
        }
        let now = self.now();
        let mut event_ids = Vec::with_capacity(req.events.len());
        let mut records = Vec::with_capacity(req.events.len());
        for (index, event) in req.events.into_iter().enumerate() {
            let envelope = envelope(index, event, &ctx.caller.principal, now)?;
            let partition_key = if envelope.user_id.is_empty() {
                envelope.event_id.clone()
            } else {
                envelope.user_id.clone()
            };
            let record = PutRecord {
                partition_key,
                data: Bytes::from(envelope.encode_to_vec()),
            };
            ::streams::validate_record(index, &record)
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            event_ids.push(envelope.event_id);
            records.push((envelope.event_name, record));
        }
        let batch: Vec<PutRecord> = records.iter().map(|(_, r)| r.clone()).collect();
        let outcome = ::streams::put_all(
            self.backend().as_ref(),
            self.ges(),
            &batch,
            &RetryPolicy::default(),
        )
        .await?;
        let failed: Vec<usize> = outcome.failed().map(|(index, _)| index).collect();
        let mut published: BTreeMap<&str, u64> = BTreeMap::new();
        for (index, (event, _)) in records.iter().enumerate() {
            let result = if failed.contains(&index) {
                "failed"
            } else {
                *published.entry(event.as_str()).or_default() += 1;
                "accepted"
            };
            metrics::counter!("fanner_publish_events_total", "event" => event.clone(), "result" => result).increment(1);
        }
        for (event, count) in published {
            self.observe_published(event, count, now);
        }
        if let Some((index, failure)) = outcome.failed().next() {
            return Err(ApiError::Unavailable(format!(
                "{} of {} events were not written (first: event {index}, {}: {}); retry them",
                failed.len(),
                batch.len(),
                failure.code,
                failure.message
            )));
        }
        Ok(PublishResponse {
            accepted: event_ids.len(),
            event_ids,
        })
    }

    /// Checks that the caller may tail `stream` and starts reading it: one JSON line per record,
    /// until `limit` records, `idle` without a new one, or the receiver is dropped.
    pub async fn tail(
        &self,
        ctx: &Ctx,
        stream: &str,
        from_beginning: bool,
        limit: Option<u64>,
        idle: Option<Duration>,
    ) -> Result<mpsc::Receiver<Bytes>, ApiError> {
        let found = streams::get(&mut *self.conn().await?, stream)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("stream {stream:?} does not exist")))?;
        if !ctx.caller.may_read(&found.owner) {
            return Err(ApiError::Forbidden(format!(
                "stream {stream:?} belongs to {:?}; only its owner, admins and auditors may tail it",
                found.owner
            )));
        }
        let backing = self.backing_name(stream);
        let backend = self.backend().clone();
        let start = if from_beginning {
            StartPosition::TrimHorizon
        } else {
            StartPosition::Latest
        };
        let mut readers: Vec<(String, Box<dyn ShardReader>)> = Vec::new();
        for shard in backend.list_shards(&backing).await? {
            let reader = backend
                .open_reader(&backing, &shard.id, start.clone())
                .await?;
            readers.push((shard.id, reader));
        }
        let (sender, receiver) = mpsc::channel(64);
        let closed = self.closed();
        tokio::spawn(async move {
            tokio::select! {
                pumped = pump(readers, sender, limit, idle) => {
                    if let Err(error) = pumped {
                        tracing::warn!(%error, stream = %backing, "Tail stopped.");
                    }
                }
                () = closed => tracing::debug!(stream = %backing, "Tail ended by shutdown."),
            }
        });
        Ok(receiver)
    }
}

async fn pump(
    mut readers: Vec<(String, Box<dyn ShardReader>)>,
    sender: mpsc::Sender<Bytes>,
    limit: Option<u64>,
    idle: Option<Duration>,
) -> Result<(), ::streams::StreamError> {
    let mut sent = 0u64;
    let mut last_record = tokio::time::Instant::now();
    loop {
        let mut any = false;
        for (shard, reader) in &mut readers {
            let room = limit.map_or(500, |l| (l - sent).min(500));
            let batch = reader
                .next_batch(usize::try_from(room).unwrap_or(500))
                .await?;
            for record in batch.records {
                let envelope = match proto::Envelope::decode(record.data.as_ref()) {
                    Ok(envelope) => EnvelopeView::from(&envelope),
                    Err(_) => continue,
                };
                let line = TailRecord {
                    shard: shard.clone(),
                    sequence: record.sequence,
                    envelope,
                };
                let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
                bytes.push(b'\n');
                if sender.send(Bytes::from(bytes)).await.is_err() {
                    return Ok(());
                }
                any = true;
                sent += 1;
                if limit.is_some_and(|l| sent >= l) {
                    return Ok(());
                }
            }
        }
        if any {
            last_record = tokio::time::Instant::now();
        } else {
            if idle.is_some_and(|idle| last_record.elapsed() >= idle) || sender.is_closed() {
                return Ok(());
            }
            tokio::time::sleep(TAIL_POLL).await;
        }
    }
}

fn envelope(
    index: usize,
    event: PublishEvent,
    producer: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<proto::Envelope, ApiError> {
    let bad = |message: String| {
        ApiError::BadRequest(format!("event {index} ({}): {message}", event.event))
    };
    rules::check_name("event", &event.event).map_err(bad)?;
    let (payload, content_type) = match (&event.payload, &event.payload_base64) {
        (Some(_), Some(_)) => {
            return Err(bad("give payload or payload_base64, not both".to_owned()));
        }
        (Some(json), None) => (
            serde_json::to_vec(json).unwrap_or_default(),
            event
                .content_type
                .clone()
                .unwrap_or_else(|| "application/json".to_owned()),
        ),
        (None, Some(encoded)) => (
            STANDARD
                .decode(encoded)
                .map_err(|e| bad(format!("payload_base64 is not valid base64: {e}")))?,
            event
                .content_type
                .clone()
                .unwrap_or_else(|| "application/octet-stream".to_owned()),
        ),
        (None, None) => (Vec::new(), event.content_type.clone().unwrap_or_default()),
    };
    Ok(proto::Envelope {
        event_id: event
            .event_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        event_name: event.event.clone(),
        event_time: Some(utc_to_timestamp(event.event_time.unwrap_or(now))),
        ingest_time: Some(utc_to_timestamp(now)),
        producer: producer.to_owned(),
        trace_id: event.trace_id.unwrap_or_default(),
        user_id: event.user_id.unwrap_or_default(),
        device_id: event.device_id.unwrap_or_default(),
        attributes: event.attributes.into_iter().collect(),
        content_type,
        payload,
        history_id: String::new(),
    })
}
