//! Helpers for tests that talk to real things: a moto server for AWS, a fresh PostgreSQL database, fault injection into SDK
//! responses, unique resource names.
//!
//! Slow tiers are gated at run time: [`moto::shared`] returns `None` (and says why) unless
//! `FANNER_IT=1` and `FANNER_MOTO_SERVER` are set.

pub mod kinesis;
pub mod moto;
pub mod postgres;

use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;

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
