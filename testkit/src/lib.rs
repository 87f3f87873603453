//! Helpers for tests that talk to real things: a moto server for AWS, kinesis-local for what moto
//! lacks (resharding, enhanced fan-out), a fresh PostgreSQL database, fault injection into SDK
//! responses, unique resource names.
//!
//! Slow tiers are gated at run time: [`moto::shared`] and [`kinesis_local::shared`] return `None`
//! (and say why) unless `FANNER_IT=1` and the emulator's variable (`FANNER_MOTO_SERVER`,
//! `FANNER_KINESIS_LOCAL`) are set.

pub mod kinesis;
pub mod kinesis_local;
pub mod moto;
pub mod postgres;
mod process;

use std::sync::atomic::{AtomicU64, Ordering};

use aws_config::{Region, SdkConfig};
use aws_sdk_kinesis::config::Credentials;
use aws_smithy_types::checksum_config::{RequestChecksumCalculation, ResponseChecksumValidation};
use rand::Rng;

/// An SDK configuration for an emulator at `endpoint`: dummy static credentials, `us-east-1`,
/// checksums only where an operation requires them (emulators mishandle the newer defaults).
/// Nothing is read from or written to the process environment.
pub async fn sdk_config(endpoint: &str) -> SdkConfig {
    streams::kinesis::aws_config_loader()
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            "testing", "testing", None, None, "emulator",
        ))
        .endpoint_url(endpoint)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .load()
        .await
}

/// The same settings as [`sdk_config`], as the environment of a child process (`fanner serve`)
/// that builds its SDK configuration from the default chain.
pub fn aws_env(endpoint: &str) -> Vec<(&'static str, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required"),
        ("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required"),
    ]
    .into_iter()
    .map(|(key, value)| (key, value.to_owned()))
    .collect()
}

/// A name no other test (in this process or another) uses: `<prefix>-<random>-<counter>`,
/// lowercase, valid as a stream, bucket or table name.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let random: u32 = rand::rng().random();
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{random:08x}-{count}")
}

/// Whether the integration tier is switched on (`FANNER_IT=1`); prints why not otherwise, naming
/// `test` so the skipped test is visible in the output.
pub fn integration_enabled(test: &str) -> bool {
    let enabled = std::env::var("FANNER_IT").is_ok_and(|value| value == "1");
    if !enabled {
        eprintln!("{test}: skipped: set FANNER_IT=1 to run the integration tier");
    }
    enabled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_keep_the_prefix() {
        let a = unique_name("orders");
        let b = unique_name("orders");
        assert_ne!(a, b);
        assert!(a.starts_with("orders-"));
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }
}
