//! Persister settings: serde defaults, validated once before anything runs.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::encode::{DEFAULT_GZIP_LEVEL, Encoding, ObjectFormat, ParquetCompression};
use crate::partition::MAX_BASE_PREFIX;

/// Where a shard without a checkpoint starts reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InitialPosition {
    /// The oldest record the stream still holds: the lake gets everything.
    #[default]
    TrimHorizon,
    /// Only records written after the persister first starts.
    Latest,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The global event stream to read.
    pub stream: String,
    /// Every object key starts with this prefix: `/`-separated segments of
    /// `A-Z a-z 0-9 . _ = -`, none starting with a dot.
    pub base_prefix: String,
    pub format: ObjectFormat,
    /// zlib level 0–9 for gzip objects.
    pub gzip_level: u32,
    pub parquet_compression: ParquetCompression,
    /// A partition is written once its buffered records reach this many bytes (raw envelopes).
    pub max_object_bytes: usize,
    /// … or once its oldest record has waited this long.
    pub max_object_age_ms: u64,
    /// Open partitions per process, across all its shards. Past it the oldest are written.
    pub max_open_partitions: usize,
    /// Buffered bytes per process (open partitions and writes in flight).
    pub max_buffered_bytes: usize,
    /// Object writes in flight per shard.
    pub max_puts_in_flight: usize,
    /// Past this many written-but-not-yet-covered batches in a shard's checkpoint, every open
    /// partition of the shard is written so the low-water mark can move and the checkpoint
    /// stays small.
    pub max_checkpoint_cuts: usize,
    /// Records per read.
    pub read_batch: usize,
    /// The longest wait for new records when a shard has nothing new (backends that can tell
    /// when records land end it early).
    pub poll_interval_ms: u64,
    pub lease_ttl_ms: u64,
    /// How often the stream's shards and the group's leases are looked at.
    pub discovery_interval_ms: u64,
    /// How long shutdown may take to write what is buffered before it gives up (the next owner
    /// replays the rest).
    pub drain_timeout_ms: u64,
    pub initial_position: InitialPosition,
    /// This process's name in leases; a random one when unset. Reusing the name of a process
    /// that died takes its leases over at once instead of after they expire.
    pub owner: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            stream: "global-events".into(),
            base_prefix: "events".into(),
            format: ObjectFormat::NdjsonGzip,
            gzip_level: DEFAULT_GZIP_LEVEL,
            parquet_compression: ParquetCompression::Snappy,
            max_object_bytes: 64 * 1024 * 1024,
            max_object_age_ms: 5_000,
            max_open_partitions: 1024,
            max_buffered_bytes: 64 * 1024 * 1024,
            max_puts_in_flight: 8,
            max_checkpoint_cuts: 1024,
            read_batch: 1000,
            poll_interval_ms: 200,
            lease_ttl_ms: millis(shard_runtime::DEFAULT_LEASE_TTL),
            discovery_interval_ms: millis(shard_runtime::DEFAULT_SCAN_INTERVAL),
            drain_timeout_ms: millis(shard_runtime::DEFAULT_DRAIN_TIMEOUT),
            initial_position: InitialPosition::TrimHorizon,
            owner: None,
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Debug, thiserror::Error)]
#[error("invalid persister setting `{field}`: {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        reason: reason.into(),
    }
}

/// Settings after validation, with typed durations.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub stream: String,
    pub base_prefix: String,
    pub encoding: Encoding,
    pub max_object_bytes: usize,
    pub max_object_age: Duration,
    pub max_open_partitions: usize,
    pub max_buffered_bytes: usize,
    pub max_puts_in_flight: usize,
    pub max_checkpoint_cuts: usize,
    pub read_batch: usize,
    pub poll_interval: Duration,
    pub initial_position: InitialPosition,
    pub owner: String,
    /// How the shard runtime shares the stream's shards for this persister.
    pub runtime: shard_runtime::Settings,
}

impl Settings {
    /// How often a shard looks at ages, limits and its checkpoint.
    pub fn tick(&self) -> Duration {
        (self.max_object_age / 5).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

pub fn check_base_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > MAX_BASE_PREFIX {
        return Err(format!("must be 1 to {MAX_BASE_PREFIX} bytes"));
    }
    for segment in prefix.split('/') {
        if segment.is_empty() {
            return Err("has an empty segment (leading, trailing or double `/`)".into());
        }
        if segment.starts_with('.') {
            return Err(format!("segment {segment:?} starts with a dot"));
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._=-".contains(&b))
        {
            return Err(format!(
                "segment {segment:?} has characters outside A-Z a-z 0-9 . _ = -"
            ));
        }
    }
    Ok(())
}

impl Config {
    pub(crate) fn validate(&self) -> Result<Settings, ConfigError> {
        if self.stream.is_empty() {
            return Err(invalid("stream", "must not be empty"));
        }
        check_base_prefix(&self.base_prefix).map_err(|r| invalid("base_prefix", r))?;
        if self.gzip_level > 9 {
            return Err(invalid("gzip_level", "must be 0 to 9"));
        }
        let positive = |field, value: u64| {
            if value == 0 {
                Err(invalid(field, "must be positive"))
            } else {
                Ok(())
            }
        };
        positive("max_object_bytes", self.max_object_bytes as u64)?;
        positive("max_object_age_ms", self.max_object_age_ms)?;
        positive("max_open_partitions", self.max_open_partitions as u64)?;
        positive("max_buffered_bytes", self.max_buffered_bytes as u64)?;
        positive("max_puts_in_flight", self.max_puts_in_flight as u64)?;
        positive("max_checkpoint_cuts", self.max_checkpoint_cuts as u64)?;
        positive("read_batch", self.read_batch as u64)?;
        positive("poll_interval_ms", self.poll_interval_ms)?;
        positive("discovery_interval_ms", self.discovery_interval_ms)?;
        if self.lease_ttl_ms < 300 {
            return Err(invalid("lease_ttl_ms", "must be at least 300"));
        }
        positive("drain_timeout_ms", self.drain_timeout_ms)?;
        let owner = match &self.owner {
            Some(owner) if owner.is_empty() => return Err(invalid("owner", "must not be empty")),
            Some(owner) => owner.clone(),
            None => format!(
                "persister-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ),
        };
        Ok(Settings {
            stream: self.stream.clone(),
            base_prefix: self.base_prefix.clone(),
            encoding: Encoding {
                format: self.format,
                gzip_level: self.gzip_level,
                parquet_compression: self.parquet_compression,
            },
            max_object_bytes: self.max_object_bytes,
            max_object_age: Duration::from_millis(self.max_object_age_ms),
            max_open_partitions: self.max_open_partitions,
            max_buffered_bytes: self.max_buffered_bytes,
            max_puts_in_flight: self.max_puts_in_flight,
            max_checkpoint_cuts: self.max_checkpoint_cuts,
            read_batch: self.read_batch,
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            initial_position: self.initial_position,
            runtime: shard_runtime::Settings {
                lease_ttl: Duration::from_millis(self.lease_ttl_ms),
                scan_interval: Duration::from_millis(self.discovery_interval_ms),
                drain_timeout: Duration::from_millis(self.drain_timeout_ms),
                ..shard_runtime::Settings::new(owner.clone())
            },
            owner,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_prefixes() {
        for ok in ["events", "lake/env=prod", "a.b_c-d", "x"] {
            assert_eq!(check_base_prefix(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", "/events", "events/", "a//b", "../x", ".hidden", "a/..", "my lake", "你好",
        ] {
            assert!(check_base_prefix(bad).is_err(), "{bad}");
        }
        assert!(check_base_prefix(&"a".repeat(MAX_BASE_PREFIX + 1)).is_err());
    }

    #[test]
    fn defaults_validate() {
        let settings = Config::default()
            .validate()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(settings.tick(), Duration::from_secs(1));
        assert!(settings.owner.starts_with("persister-"));
    }
}
