//! Where an event goes in the lake: a pure function of the envelope and a reference time.
//!
//! Keys look like `<base>/<event name>/yyyy-MM-dd:hh/<object>` for good events and
//! `<base>/_errors/<reason>/<object>` for everything the lake cannot place. Every segment that
//! comes from outside the process is percent-encoded so that a key can never leave the base
//! prefix, never hides behind a dot and never collides with `_errors`.

use std::fmt;

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// How far ahead of the reference time an event time may be before it counts as absurd.
pub const MAX_FUTURE: Duration = Duration::days(1);

/// The longest encoded event-name segment. With a base prefix of at most [`MAX_BASE_PREFIX`]
/// bytes and an object name of at most [`MAX_OBJECT_NAME`] bytes the whole key stays below
/// S3's 1024-byte limit.
pub const MAX_NAME_SEGMENT: usize = 512;
/// The longest base prefix the configuration accepts.
pub const MAX_BASE_PREFIX: usize = 256;
/// The longest object name (`<shard>-<first>-<last>.<ext>`).
pub const MAX_OBJECT_NAME: usize = 230;

/// The directory under the base prefix that holds records the lake cannot place. The leading
/// underscore makes Hive-style readers skip it, and [`encode_segment`] never produces it.
pub const ERRORS_DIR: &str = "_errors";

/// Everything but `A-Z a-z 0-9 - _ .` is encoded; `%` itself is, so the encoding is injective.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

/// Why a record went to `_errors/` instead of its event's partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorReason {
    /// The bytes are not a `fanner.v1.Envelope`.
    Undecodable,
    /// The envelope has no event name.
    MissingEventName,
    /// The encoded event name is longer than [`MAX_NAME_SEGMENT`].
    EventNameTooLong,
    /// The envelope has no event time.
    MissingEventTime,
    /// The event time cannot be represented (seconds or nanoseconds out of range, or before
    /// year 1).
    InvalidEventTime,
    /// The event time is more than [`MAX_FUTURE`] after the reference time.
    FutureEventTime,
}

impl ErrorReason {
    pub const ALL: [ErrorReason; 6] = [
        ErrorReason::Undecodable,
        ErrorReason::MissingEventName,
        ErrorReason::EventNameTooLong,
        ErrorReason::MissingEventTime,
        ErrorReason::InvalidEventTime,
        ErrorReason::FutureEventTime,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorReason::Undecodable => "undecodable",
            ErrorReason::MissingEventName => "missing_event_name",
            ErrorReason::EventNameTooLong => "event_name_too_long",
            ErrorReason::MissingEventTime => "missing_event_time",
            ErrorReason::InvalidEventTime => "invalid_event_time",
            ErrorReason::FutureEventTime => "future_event_time",
        }
    }

    pub fn parse(text: &str) -> Option<ErrorReason> {
        ErrorReason::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

impl fmt::Display for ErrorReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The partition of a good event: its encoded name and the UTC hour of its event time.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PartitionKey {
    name_segment: String,
    hour: DateTime<Utc>,
}

impl PartitionKey {
    /// The event name as it appears in the key.
    pub fn name_segment(&self) -> &str {
        &self.name_segment
    }

    /// The start of the hour the event happened in.
    pub fn hour(&self) -> DateTime<Utc> {
        self.hour
    }

    /// `<event name>/yyyy-MM-dd:hh`, relative to the base prefix.
    pub fn path(&self) -> String {
        // Built by hand: this runs once per record, and chrono's strftime parses its pattern on
        // every call.
        let (y, m, d, h) = (
            self.hour.year(),
            self.hour.month(),
            self.hour.day(),
            self.hour.hour(),
        );
        format!("{}/{y:04}-{m:02}-{d:02}:{h:02}", self.name_segment)
    }
}

/// Where a record is buffered and written: an event partition or an errors directory.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Lake(PartitionKey),
    Errors(ErrorReason),
}

impl Target {
    /// The directory relative to the base prefix; also the target's identity in checkpoints.
    pub fn path(&self) -> String {
        match self {
            Target::Lake(key) => key.path(),
            Target::Errors(reason) => format!("{ERRORS_DIR}/{reason}"),
        }
    }

    /// Parses [`Target::path`] back (from a checkpoint).
    pub fn parse(path: &str) -> Option<Target> {
        let (first, rest) = path.split_once('/')?;
        if first == ERRORS_DIR {
            return ErrorReason::parse(rest).map(Target::Errors);
        }
        if first.is_empty() || encode_segment(&decode_segment(first)?) != first {
            return None;
        }
        let hour = chrono::NaiveDateTime::parse_from_str(&format!("{rest}:00"), "%Y-%m-%d:%H:%M")
            .ok()?
            .and_utc();
        Some(Target::Lake(PartitionKey {
            name_segment: first.to_owned(),
            hour,
        }))
    }
}

/// Places one decoded envelope. `now` is the reference for "too far in the future": the
/// record's arrival time on the stream when the backend reports it, so that replaying the same
/// record always gives the same answer.
pub fn partition(
    event_name: &str,
    event_time: Option<&proto::Timestamp>,
    now: DateTime<Utc>,
) -> Result<PartitionKey, ErrorReason> {
    if event_name.is_empty() {
        return Err(ErrorReason::MissingEventName);
    }
    // Each input byte becomes at most three output bytes: names this long cannot fit.
    if event_name.len() > MAX_NAME_SEGMENT * 3 {
        return Err(ErrorReason::EventNameTooLong);
    }
    let name_segment = encode_segment(event_name);
    if name_segment.len() > MAX_NAME_SEGMENT {
        return Err(ErrorReason::EventNameTooLong);
    }
    let time = event_time.ok_or(ErrorReason::MissingEventTime)?;
    let nanos = u32::try_from(time.nanos).map_err(|_| ErrorReason::InvalidEventTime)?;
    let time = Utc
        .timestamp_opt(time.seconds, nanos)
        .single()
        .ok_or(ErrorReason::InvalidEventTime)?;
    if time > now + MAX_FUTURE {
        return Err(ErrorReason::FutureEventTime);
    }
    // Keys spell the year with four digits.
    if time.year() < 1 {
        return Err(ErrorReason::InvalidEventTime);
    }
    let hour = time
        .with_minute(0)
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .ok_or(ErrorReason::InvalidEventTime)?;
    Ok(PartitionKey { name_segment, hour })
}

/// Percent-encodes one key segment. Besides the non-alphanumerics, a leading `.` or `_` is
/// encoded too: `.`/`..` could walk out of a directory on a file system, a leading dot hides
/// files from most readers, and a leading underscore is reserved for `_errors`.
pub fn encode_segment(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let rest = match raw.as_bytes().first() {
        Some(b'.') => {
            out.push_str("%2E");
            &raw[1..]
        }
        Some(b'_') => {
            out.push_str("%5F");
            &raw[1..]
        }
        _ => raw,
    };
    out.extend(utf8_percent_encode(rest, SEGMENT));
    out
}

/// The inverse of [`encode_segment`], for reading keys back.
pub fn decode_segment(segment: &str) -> Option<String> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("bad test time {text}: {e}"))
    }

    fn envelope(name: &str, time: Option<&str>) -> proto::Envelope {
        proto::Envelope {
            event_id: "e1".into(),
            event_name: name.into(),
            event_time: time.map(|t| {
                let t = at(t);
                proto::Timestamp {
                    seconds: t.timestamp(),
                    nanos: t.timestamp_subsec_nanos() as i32,
                }
            }),
            ..Default::default()
        }
    }

    const NOW: &str = "2024-05-01T12:30:00Z";

    /// `expected` is the partition path or the error reason.
    fn check(input: &proto::Envelope, expected: Result<&str, ErrorReason>) {
        let got =
            partition(&input.event_name, input.event_time.as_ref(), at(NOW)).map(|k| k.path());
        assert_eq!(
            got.as_deref().map_err(|e| *e),
            expected,
            "event name {:?} at {:?}",
            input.event_name.chars().take(40).collect::<String>(),
            input.event_time
        );
        if let Ok(path) = got {
            let key = Target::Lake(
                partition(&input.event_name, input.event_time.as_ref(), at(NOW))
                    .unwrap_or_else(|_| unreachable!()),
            );
            assert_eq!(Target::parse(&path), Some(key), "path {path:?} parses back");
            assert!(
                !path
                    .split('/')
                    .any(|s| s == ".." || s == "." || s.is_empty())
            );
        }
    }

    #[test]
    fn partitions() {
        let ok = Some("2024-05-01T12:10:00Z");
        check(
            &envelope("orders.created", ok),
            Ok("orders.created/2024-05-01:12"),
        );
        // Late events go to their own hour, however late.
        check(
            &envelope("orders.created", Some("2023-12-31T23:59:59.999999999Z")),
            Ok("orders.created/2023-12-31:23"),
        );
        check(
            &envelope("orders.created", Some("1970-01-01T00:00:00Z")),
            Ok("orders.created/1970-01-01:00"),
        );
        check(
            &envelope("orders.created", Some("0001-01-01T00:00:00Z")),
            Ok("orders.created/0001-01-01:00"),
        );
        let mut before_year_one = envelope("orders.created", ok);
        if let Some(t) = before_year_one.event_time.as_mut() {
            t.seconds = -62_135_596_801;
        }
        check(&before_year_one, Err(ErrorReason::InvalidEventTime));
        // Up to a day ahead of the reference time is clock skew, beyond that it is absurd.
        check(
            &envelope("orders.created", Some("2024-05-02T12:30:00Z")),
            Ok("orders.created/2024-05-02:12"),
        );
        check(
            &envelope("orders.created", Some("2024-05-02T12:30:00.000000001Z")),
            Err(ErrorReason::FutureEventTime),
        );
        check(
            &envelope("orders.created", None),
            Err(ErrorReason::MissingEventTime),
        );
        let mut bad_nanos = envelope("orders.created", ok);
        if let Some(t) = bad_nanos.event_time.as_mut() {
            t.nanos = -1;
        }
        check(&bad_nanos, Err(ErrorReason::InvalidEventTime));
        let mut bad_seconds = envelope("orders.created", ok);
        if let Some(t) = bad_seconds.event_time.as_mut() {
            t.seconds = i64::MIN;
        }
        check(&bad_seconds, Err(ErrorReason::InvalidEventTime));

        // Awkward names are encoded into one safe segment.
        check(&envelope("my table", ok), Ok("my%20table/2024-05-01:12"));
        check(
            &envelope("你好/😊", ok),
            Ok("%E4%BD%A0%E5%A5%BD%2F%F0%9F%98%8A/2024-05-01:12"),
        );
        check(&envelope("../", ok), Ok("%2E.%2F/2024-05-01:12"));
        check(&envelope("..", ok), Ok("%2E./2024-05-01:12"));
        check(&envelope(".", ok), Ok("%2E/2024-05-01:12"));
        check(&envelope("_errors", ok), Ok("%5Ferrors/2024-05-01:12"));
        check(&envelope("100%", ok), Ok("100%25/2024-05-01:12"));
        check(&envelope("a\nb\0c", ok), Ok("a%0Ab%00c/2024-05-01:12"));
        check(&envelope("", ok), Err(ErrorReason::MissingEventName));
        check(
            &envelope(&"x".repeat(1024 * 1024), ok),
            Err(ErrorReason::EventNameTooLong),
        );
        check(
            &envelope(&"x".repeat(MAX_NAME_SEGMENT), ok),
            Ok(&format!("{}/2024-05-01:12", "x".repeat(MAX_NAME_SEGMENT))),
        );
        check(
            &envelope(&"x".repeat(MAX_NAME_SEGMENT + 1), ok),
            Err(ErrorReason::EventNameTooLong),
        );
        // 171 three-byte-encoded spaces are 513 bytes.
        check(
            &envelope(&" ".repeat(171), ok),
            Err(ErrorReason::EventNameTooLong),
        );
    }

    #[test]
    fn error_targets_round_trip() {
        for reason in ErrorReason::ALL {
            let target = Target::Errors(reason);
            assert_eq!(Target::parse(&target.path()), Some(target));
        }
        assert_eq!(Target::parse("_errors/nope"), None);
        assert_eq!(Target::parse("a b/2024-05-01:12"), None);
        assert_eq!(Target::parse("ok/2024-05-01"), None);
    }
}
