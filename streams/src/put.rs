//! Writing any number of records with retries of just the entries that failed.

use std::time::Duration;

use rand::Rng;

use crate::{
    MAX_PUT_BYTES, MAX_PUT_RECORDS, PutFailure, PutOutcome, PutRecord, Result, StreamBackend,
    record_size, validate_record,
};

/// How [`put_all`] retries: exponential backoff with full jitter, a bounded number of attempts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Calls per batch, the first included; at least 1.
    pub max_attempts: u32,
    /// The backoff ceiling before the first retry; it doubles on every retry.
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The pause before retry number `retry` (1-based): uniform in `0..=ceiling` ("full jitter"),
    /// so that many writers throttled together do not come back together.
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self
            .base_delay
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
            .min(self.max_delay);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }
}

/// What [`put_all`] did: per input record, in order, its sequence number or its last failure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutAllOutcome {
    pub outcomes: PutOutcome,
    /// Entries sent again after a failure, counted once per resend.
    pub retried: usize,
}

impl PutAllOutcome {
    /// The records that were not written after every attempt, with the last reason.
    pub fn failed(&self) -> impl Iterator<Item = (usize, &PutFailure)> {
        self.outcomes
            .iter()
            .enumerate()
            .filter_map(|(index, outcome)| outcome.as_ref().err().map(|failure| (index, failure)))
    }

    pub fn all_written(&self) -> bool {
        self.outcomes.iter().all(Result::is_ok)
    }
}

/// Writes `records` in batches of at most [`MAX_PUT_RECORDS`] records and [`MAX_PUT_BYTES`] bytes,
/// resending only the entries that failed (per-entry failures and transient whole-call errors)
/// with backoff, up to `policy.max_attempts` calls per batch.
///
/// `Err` is returned for errors that retrying cannot fix (a missing stream, an invalid record):
/// records of earlier batches may have been written by then. Entries still failing after the last
/// attempt are reported in the outcome, never silently dropped.
pub async fn put_all(
    backend: &dyn StreamBackend,
    stream: &str,
    records: &[PutRecord],
    policy: &RetryPolicy,
) -> Result<PutAllOutcome> {
    for (index, record) in records.iter().enumerate() {
        validate_record(index, record)?;
    }
    let mut result = PutAllOutcome {
        outcomes: Vec::with_capacity(records.len()),
        retried: 0,
    };
    for range in batches(records) {
        let batch = &records[range.clone()];
        let mut outcomes: PutOutcome = vec![Err(not_attempted()); batch.len()];
        let mut pending: Vec<usize> = (0..batch.len()).collect();
        let mut attempt = 0;
        while !pending.is_empty() && attempt < policy.max_attempts.max(1) {
            if attempt > 0 {
                result.retried += pending.len();
                let pause = policy.backoff(attempt);
                tracing::debug!(
                    stream,
                    entries = pending.len(),
                    attempt,
                    pause_ms = pause.as_millis() as u64,
                    "Retrying failed entries."
                );
                tokio::time::sleep(pause).await;
            }
            attempt += 1;
            let to_send: Vec<PutRecord> = pending.iter().map(|&i| batch[i].clone()).collect();
            match backend.put_records(stream, &to_send).await {
                Ok(sent) => {
                    let mut still_failing = Vec::new();
                    for (&index, outcome) in pending.iter().zip(sent) {
                        if outcome.is_err() {
                            still_failing.push(index);
                        }
                        outcomes[index] = outcome;
                    }
                    pending = still_failing;
                }
                Err(error) if error.is_transient() => {
                    let failure = PutFailure {
                        code: "RequestFailed".to_owned(),
                        message: error.to_string(),
                    };
                    for &index in &pending {
                        outcomes[index] = Err(failure.clone());
                    }
                }
                Err(error) => return Err(error),
            }
        }
        result.outcomes.extend(outcomes);
    }
    Ok(result)
}

fn not_attempted() -> PutFailure {
    PutFailure {
        code: "NotAttempted".to_owned(),
        message: "the record was not sent".to_owned(),
    }
}

/// Consecutive index ranges that each fit one `put_records` call.
fn batches(records: &[PutRecord]) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (index, record) in records.iter().enumerate() {
        let size = record_size(record);
        if index > start && (index - start == MAX_PUT_RECORDS || bytes + size > MAX_PUT_BYTES) {
            ranges.push(start..index);
            start = index;
            bytes = 0;
        }
        bytes += size;
    }
    if start < records.len() {
        ranges.push(start..records.len());
    }
    ranges
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn record(size: usize) -> PutRecord {
        PutRecord {
            partition_key: "k".to_owned(),
            data: Bytes::from(vec![0u8; size - 1]),
        }
    }

    #[test]
    fn batches_respect_count_and_size_limits() {
        let small: Vec<PutRecord> = (0..1201).map(|_| record(10)).collect();
        assert_eq!(batches(&small), vec![0..500, 500..1000, 1000..1201]);

        let big: Vec<PutRecord> = (0..11).map(|_| record(1024 * 1024)).collect();
        assert_eq!(batches(&big), vec![0..5, 5..10, 10..11]);

        assert!(batches(&[]).is_empty());
    }

    #[test]
    fn backoff_stays_under_its_growing_ceiling() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        };
        for _ in 0..100 {
            assert!(policy.backoff(1) <= Duration::from_millis(10));
            assert!(policy.backoff(2) <= Duration::from_millis(20));
            assert!(policy.backoff(9) <= Duration::from_millis(50));
        }
    }
}
