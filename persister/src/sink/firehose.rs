//! The managed path: hand records to an Amazon Data Firehose delivery stream whose dynamic
//! partitioning writes the lake (see `examples/terraform/firehose/`).
//!
//! Each NDJSON line becomes one Firehose record (newline included, so the objects Firehose writes
//! are NDJSON too). Firehose buffers and names objects itself, so `put` does not replace an
//! earlier write: a replay after a crash sends the records again (at-least-once).

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_firehose::Client;
use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use bytes::Bytes;

use super::{ObjectSink, SinkError};
use crate::encode::ObjectFormat;

/// PutRecordBatch limits.
pub const MAX_BATCH_RECORDS: usize = 500;
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
pub const MAX_RECORD_BYTES: usize = 1000 * 1024;
/// Attempts for the failed entries of one batch before the put fails (the caller retries the
/// whole object later).
const ATTEMPTS: u32 = 8;

#[derive(Clone, Debug)]
pub struct FirehoseSink {
    client: Client,
    delivery_stream: String,
}

impl FirehoseSink {
    /// A client from the usual AWS configuration chain (`AWS_ENDPOINT_URL` included).
    pub async fn from_env(delivery_stream: &str) -> Self {
        let config = streams::kinesis::aws_config_loader().load().await;
        FirehoseSink::new(Client::new(&config), delivery_stream)
    }

    pub fn new(client: Client, delivery_stream: &str) -> Self {
        FirehoseSink {
            client,
            delivery_stream: delivery_stream.to_owned(),
        }
    }

    /// Sends one batch, then again only the entries Firehose reports as failed.
    async fn send_batch(&self, mut pending: Vec<Bytes>) -> Result<(), SinkError> {
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=ATTEMPTS {
            let mut records = Vec::with_capacity(pending.len());
            for data in &pending {
                records.push(
                    Record::builder()
                        .data(Blob::new(data.to_vec()))
                        .build()
                        .map_err(|e| SinkError::Firehose(e.to_string()))?,
                );
            }
            let out = self
                .client
                .put_record_batch()
                .delivery_stream_name(&self.delivery_stream)
                .set_records(Some(records))
                .send()
                .await
                .map_err(|e| {
                    SinkError::Firehose(aws_sdk_firehose::error::DisplayErrorContext(e).to_string())
                })?;
            if out.failed_put_count() == 0 {
                return Ok(());
            }
            let entries = out.request_responses();
            let mut codes = Vec::new();
            let failed: Vec<Bytes> = pending
                .iter()
                .zip(entries)
                .filter_map(|(data, entry)| {
                    entry.error_code().map(|code| {
                        codes.push(code.to_owned());
                        data.clone()
                    })
                })
                .collect();
            metrics::counter!("fanner_persister_firehose_retried_records_total")
                .increment(failed.len() as u64);
            tracing::warn!(
                delivery_stream = %self.delivery_stream,
                failed = failed.len(),
                attempt,
                first_code = codes.first().map(String::as_str).unwrap_or(""),
                "Firehose rejected some records, retrying only those."
            );
            pending = failed;
            if pending.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        Err(SinkError::Firehose(format!(
            "{} records still failing after {ATTEMPTS} attempts",
            pending.len()
        )))
    }
}

/// Splits NDJSON into batches that fit PutRecordBatch; lines too large for one Firehose record
/// are returned apart.
pub fn batches(body: &Bytes) -> (Vec<Vec<Bytes>>, Vec<Bytes>) {
    let mut batches = Vec::new();
    let mut oversized = Vec::new();
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batch_bytes = 0;
    let mut start = 0;
    while start < body.len() {
        let end = body[start..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(body.len(), |i| start + i + 1);
        let line = body.slice(start..end);
        start = end;
        if line.len() > MAX_RECORD_BYTES {
            oversized.push(line);
            continue;
        }
        if batch.len() == MAX_BATCH_RECORDS || batch_bytes + line.len() > MAX_BATCH_BYTES {
            batches.push(std::mem::take(&mut batch));
            batch_bytes = 0;
        }
        batch_bytes += line.len();
        batch.push(line);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    (batches, oversized)
}

#[async_trait]
impl ObjectSink for FirehoseSink {
    fn kind(&self) -> &'static str {
        "firehose"
    }

    fn accepts(&self, format: ObjectFormat) -> bool {
        format == ObjectFormat::Ndjson
    }

    fn overwrites(&self) -> bool {
        false
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), SinkError> {
        let (batches, oversized) = batches(&body);
        if !oversized.is_empty() {
            // Firehose cannot carry them and retrying cannot help: count and report them
            // rather than stall the shard behind them.
            metrics::counter!("fanner_persister_errors_total", "reason" => "firehose_record_too_large")
                .increment(oversized.len() as u64);
            tracing::error!(
                key,
                records = oversized.len(),
                largest = oversized.iter().map(Bytes::len).max().unwrap_or(0),
                "Records too large for Firehose were not sent."
            );
        }
        for batch in batches {
            self.send_batch(batch).await?;
        }
        Ok(())
    }

    async fn list(&self, _prefix: &str) -> Result<Vec<String>, SinkError> {
        Err(SinkError::Unsupported("firehose", "listing"))
    }

    async fn get(&self, _key: &str) -> Result<Option<Bytes>, SinkError> {
        Err(SinkError::Unsupported("firehose", "reading"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_firehose_limits() {
        let line = |n: usize| {
            let mut l = vec![b'x'; n - 1];
            l.push(b'\n');
            l
        };
        let mut body = Vec::new();
        for _ in 0..1001 {
            body.extend(line(10));
        }
        let (b, o) = batches(&Bytes::from(body));
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [500, 500, 1]);
        assert!(o.is_empty());

        let mut body = Vec::new();
        for _ in 0..5 {
            body.extend(line(MAX_RECORD_BYTES));
        }
        body.extend(line(MAX_RECORD_BYTES + 1));
        body.extend(b"last without newline");
        let (b, o) = batches(&Bytes::from(body));
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [4, 2]);
        assert_eq!(b[1][1].as_ref(), b"last without newline");
        assert_eq!(o.len(), 1);
    }
}
