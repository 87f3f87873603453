//! The engine's settings.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use streams::RetryPolicy;

/// Settings of the fan-out engine. Durations are given in milliseconds in files (`*_ms`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// The global event stream's name in the backend.
    pub ges: String,
    /// Where undeliverable GES records go (see [`crate::dead_letter`]); created if missing.
    /// Default `<ges>-dead-letters`: it cannot clash with a consumer stream's backing name,
    /// which starts with the backing prefix the GES name may not start with.
    pub dead_letter_stream: Option<String>,
    /// Retention of the dead-letter stream when the engine creates it.
    pub dead_letter_retention_hours: u32,
    /// This process's name on shard leases. Keep it stable across restarts of one deployment
    /// slot to take its shards back at once; two live processes must never share it.
    pub owner: String,
    /// A lease not renewed for this long may be taken over by another process.
    #[serde(rename = "lease_ttl_ms", with = "millis")]
    pub lease_ttl: Duration,
    /// How often free or expired shard leases are looked for.
    #[serde(rename = "scan_interval_ms", with = "millis")]
    pub scan_interval: Duration,
    /// The most shards this process holds at once.
    pub max_shards: usize,
    /// Records per GES read.
    pub read_batch: usize,
    /// The longest wait for new records before reading a quiet shard again.
    #[serde(rename = "idle_wait_ms", with = "millis")]
    pub idle_wait: Duration,
    /// Deliveries one consumer stream may have waiting, per GES shard, before it falls behind
    /// and continues from its own cursor.
    pub max_backlog: usize,
    /// A stream whose writes keep failing for this long falls behind even with a short backlog,
    /// so that it does not hold back the shard's checkpoint.
    #[serde(rename = "max_stall_ms", with = "millis")]
    pub max_stall: Duration,
    /// Streams that fell behind re-read the GES with their own readers; at most this many per
    /// shard read at once (each GES read counts against the shard's read limit).
    pub max_catchup_readers: usize,
    /// The shortest gap between two checkpoints of a shard.
    #[serde(rename = "checkpoint_interval_ms", with = "millis")]
    pub checkpoint_interval: Duration,
    /// How often a missing or refusing consumer stream is checked again.
    #[serde(rename = "probe_interval_ms", with = "millis")]
    pub probe_interval: Duration,
    /// How long shutdown waits for in-flight writes before checkpointing what was acknowledged.
    #[serde(rename = "drain_timeout_ms", with = "millis")]
    pub drain_timeout: Duration,
    /// Entries a write could not store are sent again (only they) after a pause drawn from
    /// `0..=put_backoff × 2^(failures-1)`, capped at `put_max_backoff`.
    #[serde(rename = "put_backoff_ms", with = "millis")]
    pub put_backoff: Duration,
    #[serde(rename = "put_max_backoff_ms", with = "millis")]
    pub put_max_backoff: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig::new("global-events")
    }
}

impl EngineConfig {
    /// Defaults for the global event stream `ges`.
    pub fn new(ges: &str) -> EngineConfig {
        EngineConfig {
            ges: ges.to_owned(),
            dead_letter_stream: None,
            dead_letter_retention_hours: 168,
            owner: format!("engine-{}", uuid::Uuid::new_v4()),
            lease_ttl: shard_runtime::DEFAULT_LEASE_TTL,
            scan_interval: shard_runtime::DEFAULT_SCAN_INTERVAL,
            max_shards: usize::MAX,
            read_batch: 1000,
            idle_wait: Duration::from_secs(1),
            max_backlog: 10_000,
            max_stall: Duration::from_secs(10),
            max_catchup_readers: 4,
            checkpoint_interval: Duration::from_millis(200),
            probe_interval: Duration::from_secs(5),
            drain_timeout: shard_runtime::DEFAULT_DRAIN_TIMEOUT,
            put_backoff: Duration::from_millis(50),
            put_max_backoff: Duration::from_secs(2),
        }
    }

    /// The dead-letter stream's name in the backend.
    pub fn dead_letters(&self) -> String {
        self.dead_letter_stream
            .clone()
            .unwrap_or_else(|| format!("{}-dead-letters", self.ges))
    }

    /// How the shard runtime shares the GES's shards for this engine.
    pub fn runtime_settings(&self) -> shard_runtime::Settings {
        shard_runtime::Settings {
            owner: self.owner.clone(),
            lease_ttl: self.lease_ttl,
            scan_interval: self.scan_interval,
            max_shards: self.max_shards,
            drain_timeout: self.drain_timeout,
            ..shard_runtime::Settings::new(self.owner.clone())
        }
    }

    /// One attempt per write: entries that fail go back to the head of their stream's queue and
    /// are retried by the worker, so a stream's retries never hold anything else up.
    pub(crate) fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 1,
            base_delay: self.put_backoff,
            max_delay: self.put_max_backoff,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.ges.is_empty() || self.dead_letters().is_empty() || self.owner.is_empty() {
            return Err("ges, dead_letter_stream and owner must not be empty".to_owned());
        }
        if self.dead_letters() == self.ges {
            return Err("dead_letter_stream must differ from ges".to_owned());
        }
        if self.read_batch == 0 || self.max_backlog == 0 || self.max_catchup_readers == 0 {
            return Err(
                "read_batch, max_backlog and max_catchup_readers must be positive".to_owned(),
            );
        }
        self.runtime_settings().validate()
    }
}

/// The lease group every engine process shares.
pub const LEASE_GROUP: &str = "fanner";

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_millis_and_fills_defaults() {
        let config: EngineConfig =
            serde_json::from_str(r#"{"ges":"events","lease_ttl_ms":2500}"#).expect("parses");
        assert_eq!(config.lease_ttl, Duration::from_millis(2500));
        assert_eq!(config.ges, "events");
        assert_eq!(config.read_batch, 1000);
        assert_eq!(config.dead_letters(), "events-dead-letters");
        assert!(config.validate().is_ok());
        assert!(serde_json::from_str::<EngineConfig>(r#"{"lease_ttl":1}"#).is_err());
    }
}
