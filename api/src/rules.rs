//! Validation rules shared by the server (which enforces them) and its clients (which check them
//! early: the provider at `terraform validate`, the CLI before it calls).

use std::sync::LazyLock;

use chrono::{DateTime, Duration, Utc};
use regex::Regex;

use crate::Classification;

pub mod filter;
pub mod redact;

/// Names of events, streams and principals.
pub const NAME_PATTERN: &str = "^[a-z][a-z0-9_.-]{0,127}$";
pub const SHARD_COUNT_RANGE: std::ops::RangeInclusive<u32> = 1..=1024;
pub const RETENTION_HOURS_RANGE: std::ops::RangeInclusive<u32> = 24..=8760;
pub const DEFAULT_SHARD_COUNT: u32 = 1;
pub const DEFAULT_RETENTION_HOURS: u32 = 24;
/// The longest a grant on a `pii` or `restricted` event may run, from the moment it is written.
pub const MAX_SENSITIVE_GRANT_DAYS: i64 = 365;
pub const MAX_TAGS: usize = 50;
pub const MAX_TAG_KEY_LEN: usize = 128;
pub const MAX_TAG_VALUE_LEN: usize = 256;
pub const MAX_REASON_LEN: usize = 1024;
pub const MAX_DESCRIPTION_LEN: usize = 4096;
pub const MAX_SUBSCRIPTION_EVENTS: usize = 1000;

static NAME: LazyLock<Regex> = LazyLock::new(|| {
    #[allow(clippy::unwrap_used)] // a constant pattern, covered by the tests below
    Regex::new(NAME_PATTERN).unwrap()
});

/// `Err` says, in one phrase, why `name` is not a valid name for a `kind` (e.g. "stream").
pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
    if NAME.is_match(name) {
        Ok(())
    } else if name.is_empty() {
        Err(format!("{kind} name must not be empty"))
    } else {
        Err(format!(
            "{kind} name {name:?} is invalid: it must start with a lowercase letter and contain only \
             lowercase letters, digits, '_', '.' and '-', at most 128 characters ({NAME_PATTERN})"
        ))
    }
}

pub fn check_shard_count(shards: u32) -> Result<(), String> {
    if SHARD_COUNT_RANGE.contains(&shards) {
        Ok(())
    } else {
        Err(format!(
            "shard_count must be between {} and {}, got {shards}",
            SHARD_COUNT_RANGE.start(),
            SHARD_COUNT_RANGE.end()
        ))
    }
}

pub fn check_retention_hours(hours: u32) -> Result<(), String> {
    if RETENTION_HOURS_RANGE.contains(&hours) {
        Ok(())
    } else {
        Err(format!(
            "retention_hours must be between {} and {}, got {hours}",
            RETENTION_HOURS_RANGE.start(),
            RETENTION_HOURS_RANGE.end()
        ))
    }
}

pub fn check_reason(reason: &str) -> Result<(), String> {
    if reason.trim().is_empty() {
        Err("reason must not be empty: say why this team needs the event".to_owned())
    } else if reason.len() > MAX_REASON_LEN {
        Err(format!("reason is longer than {MAX_REASON_LEN} bytes"))
    } else {
        Ok(())
    }
}

pub fn check_description(description: &str) -> Result<(), String> {
    if description.len() > MAX_DESCRIPTION_LEN {
        Err(format!(
            "description is longer than {MAX_DESCRIPTION_LEN} bytes"
        ))
    } else {
        Ok(())
    }
}

pub fn check_tags<'a>(
    tags: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) -> Result<(), String> {
    if tags.len() > MAX_TAGS {
        return Err(format!("at most {MAX_TAGS} tags are allowed"));
    }
    for (key, value) in tags {
        if key.is_empty() || key.len() > MAX_TAG_KEY_LEN {
            return Err(format!(
                "tag key {key:?} must be 1 to {MAX_TAG_KEY_LEN} bytes"
            ));
        }
        if value.len() > MAX_TAG_VALUE_LEN {
            return Err(format!(
                "tag {key:?} has a value longer than {MAX_TAG_VALUE_LEN} bytes"
            ));
        }
    }
    Ok(())
}

/// Checks a grant's expiry against its event's classification, as of `now`.
pub fn check_grant_expiry(
    classification: Classification,
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), String> {
    match expires_at {
        None if classification.requires_expiry() => Err(format!(
            "expires_at is required: grants on {classification} events must expire within {MAX_SENSITIVE_GRANT_DAYS} days"
        )),
        Some(at) if at <= now => Err(format!(
            "expires_at {} is not in the future",
            at.to_rfc3339()
        )),
        Some(at)
            if classification.requires_expiry()
                && at > now + Duration::days(MAX_SENSITIVE_GRANT_DAYS) =>
        {
            Err(format!(
                "expires_at {} is more than {MAX_SENSITIVE_GRANT_DAYS} days ahead: grants on {classification} events must expire within {MAX_SENSITIVE_GRANT_DAYS} days",
                at.to_rfc3339()
            ))
        }
        _ => Ok(()),
    }
}

/// A subscription's filter as stored: `None` for no filter (absent or JSON `null`); `Err`
/// names the bad key and why ([`filter::Filter::compile`]).
pub fn normalize_filter(
    filter: Option<serde_json::Value>,
) -> Result<Option<serde_json::Value>, String> {
    match filter {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(pattern) => {
            filter::Filter::compile(&pattern).map_err(|error| error.to_string())?;
            Ok(Some(pattern))
        }
    }
}

/// Sorted, de-duplicated event names; `Err` names the first invalid one.
pub fn normalize_events(events: &[String]) -> Result<Vec<String>, String> {
    if events.is_empty() {
        return Err("events must name at least one event".to_owned());
    }
    if events.len() > MAX_SUBSCRIPTION_EVENTS {
        return Err(format!(
            "a subscription names at most {MAX_SUBSCRIPTION_EVENTS} events"
        ));
    }
    for event in events {
        check_name("event", event)?;
    }
    let mut sorted = events.to_vec();
    sorted.sort();
    sorted.dedup();
    Ok(sorted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        #[track_caller]
        fn check(name: &str, ok: bool) {
            assert_eq!(check_name("event", name).is_ok(), ok, "{name:?}");
        }
        check("user_signed_up", true);
        check("a", true);
        check("fraud-signals.v2", true);
        check(&format!("a{}", "b".repeat(127)), true);
        check(&format!("a{}", "b".repeat(128)), false);
        check("", false);
        check("1abc", false);
        check("Upper", false);
        check("my table", false);
        check("../etc", false);
        check("你好", false);
        check("a/b", false);
        check("a\n", false);
    }

    #[test]
    fn grant_expiry() {
        let now = Utc::now();
        assert!(check_grant_expiry(Classification::Public, None, now).is_ok());
        assert!(check_grant_expiry(Classification::Pii, None, now).is_err());
        assert!(
            check_grant_expiry(
                Classification::Restricted,
                Some(now + Duration::days(30)),
                now
            )
            .is_ok()
        );
        assert!(
            check_grant_expiry(Classification::Pii, Some(now + Duration::days(366)), now).is_err()
        );
        assert!(
            check_grant_expiry(
                Classification::Internal,
                Some(now + Duration::days(900)),
                now
            )
            .is_ok()
        );
        assert!(
            check_grant_expiry(
                Classification::Internal,
                Some(now - Duration::seconds(1)),
                now
            )
            .is_err()
        );
    }

    #[test]
    fn events_are_sorted_and_deduplicated() {
        let events = ["b", "a", "b"].map(String::from);
        assert_eq!(
            normalize_events(&events),
            Ok(vec!["a".to_owned(), "b".to_owned()])
        );
        assert!(normalize_events(&[]).is_err());
        assert!(normalize_events(&["Bad".to_owned()]).is_err());
    }
}
