use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including tokens and other teams' objects.
    Admin,
    /// A team: owns its events and streams.
    Member,
    /// Read-only access to everything, including the audit trail.
    Auditor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Auditor => "auditor",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [Role::Admin, Role::Member, Role::Auditor]
            .into_iter()
            .find(|role| role.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Classification {
    Public,
    Internal,
    /// Personal data: grants must expire within 365 days.
    Pii,
    /// Grants must expire within 365 days.
    Restricted,
}

impl Classification {
    pub const ALL: [Classification; 4] = [
        Classification::Public,
        Classification::Internal,
        Classification::Pii,
        Classification::Restricted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Classification::Public => "public",
            Classification::Internal => "internal",
            Classification::Pii => "pii",
            Classification::Restricted => "restricted",
        }
    }

    pub fn parse(s: &str) -> Option<Classification> {
        Classification::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Grants on such events must carry an expiry.
    pub fn requires_expiry(self) -> bool {
        matches!(self, Classification::Pii | Classification::Restricted)
    }
}

impl fmt::Display for Classification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Created with `role` (default `member`) if it does not exist yet.
    pub principal: String,
    pub role: Option<Role>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    pub principal: String,
    pub role: Role,
    /// Shown once; the server keeps only its hash.
    pub token: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub principal: String,
    pub role: Role,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    pub name: String,
    pub owner: String,
    pub classification: Classification,
    pub description: String,
    pub revision: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The protobuf message its payload is, once `fanner catalog push` stored it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<EventSchema>,
}

/// An event's payload schema, as stored by `PUT /v1/events/{name}/schema`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventSchema {
    /// The message's full name, e.g. `shop.UserSignedUp`.
    pub message: String,
    /// The fields the schema marks `(fanner.v1.field).pii = true`, as `payload.` paths by
    /// their JSON names. Every grantee gets them redacted unless its grant lists them in
    /// `include_pii`; the owner's streams and the lake get them.
    pub pii_fields: Vec<String>,
    /// SHA-256 (hex) of the stored descriptor set: equal for an unchanged schema.
    pub digest: String,
    pub updated_at: DateTime<Utc>,
}

/// Stores the protobuf message an event's payload is (what `fanner catalog push` sends).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetEventSchema {
    /// The message's full name, defined in `descriptor_set`.
    pub message: String,
    /// A FileDescriptorSet (base64) defining the message and everything it imports, as
    /// `protoc --include_imports --descriptor_set_out` writes it.
    pub descriptor_set: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEvent {
    pub name: String,
    pub classification: Classification,
    #[serde(default)]
    pub description: String,
    /// Admins may register an event on behalf of its producing team; others own what they create.
    pub owner: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEvent {
    pub classification: Classification,
    #[serde(default)]
    pub description: String,
    /// When set, the update applies only if the event is still at this revision (else 409).
    pub revision: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GrantStatus {
    Active,
    Expired,
    Revoked,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Grant {
    pub id: String,
    pub event: String,
    pub grantee: String,
    pub reason: String,
    pub granted_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
    /// As of the moment the response was made.
    pub status: GrantStatus,
    /// The oldest history (by event time) the grantee may receive: `unbounded`, or an instant.
    /// Defaults to the grant's creation time.
    #[serde(default = "HistoryFrom::unbounded")]
    pub history_from: HistoryFrom,
    pub revision: i64,
    /// Fields removed or hashed in every delivery this grant allows (sorted).
    #[serde(default)]
    pub redact: Vec<String>,
    #[serde(default)]
    pub redact_mode: RedactMode,
    /// Fields the event's schema marks as PII that this grantee may see anyway (sorted).
    #[serde(default)]
    pub include_pii: Vec<String>,
}

/// How a grant's `redact` fields reach the grantee.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RedactMode {
    /// The field is removed.
    #[default]
    Drop,
    /// The field is replaced by an HMAC-SHA-256 token (lowercase hex) under a key the server
    /// keeps per grant: equal values give equal tokens, so consumers can still join on them.
    Hash,
}

impl RedactMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RedactMode::Drop => "drop",
            RedactMode::Hash => "hash",
        }
    }

    pub fn parse(s: &str) -> Option<RedactMode> {
        [RedactMode::Drop, RedactMode::Hash]
            .into_iter()
            .find(|mode| mode.as_str() == s)
    }
}

impl fmt::Display for RedactMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGrant {
    pub event: String,
    pub grantee: String,
    pub reason: String,
    pub expires_at: Option<DateTime<Utc>>,
    /// `unbounded` or an RFC 3339 instant; the grant's creation time when absent.
    #[serde(default)]
    pub history_from: Option<HistoryFrom>,
    /// Field paths: `user_id`, `device_id`, `trace_id`, `producer`, `attributes.<key>`,
    /// `payload.<key>[.<key>...]`.
    #[serde(default)]
    pub redact: Vec<String>,
    /// Defaults to `drop`.
    #[serde(default)]
    pub redact_mode: RedactMode,
    #[serde(default)]
    pub include_pii: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateGrant {
    pub reason: String,
    pub expires_at: Option<DateTime<Utc>>,
    /// Unchanged when absent.
    #[serde(default)]
    pub history_from: Option<HistoryFrom>,
    pub revision: Option<i64>,
    /// Replaces the grant's list (absent: none).
    #[serde(default)]
    pub redact: Vec<String>,
    #[serde(default)]
    pub redact_mode: RedactMode,
    #[serde(default)]
    pub include_pii: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Stream {
    pub name: String,
    pub owner: String,
    pub shard_count: u32,
    pub retention_hours: u32,
    pub tags: BTreeMap<String, String>,
    /// `active` once the backing stream exists and accepts writes.
    pub status: String,
    /// The backend's identifier of the backing stream (an ARN on Kinesis).
    pub backing_id: String,
    pub revision: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateStream {
    pub name: String,
    pub shard_count: Option<u32>,
    pub retention_hours: Option<u32>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateStream {
    pub shard_count: u32,
    pub retention_hours: u32,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub revision: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    Active,
    /// The data plane cannot deliver to the stream (e.g. its backing stream was deleted).
    Failed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Subscription {
    pub id: String,
    pub stream: String,
    /// The stream's owner: access is checked for this principal.
    pub owner: String,
    /// Sorted, without duplicates.
    pub events: Vec<String>,
    pub status: SubscriptionStatus,
    pub status_reason: Option<String>,
    /// Where delivery began: `now` (live only), `earliest`, or an event-time instant.
    #[serde(default)]
    pub start_from: StartFrom,
    /// The newest history delivery into this subscription (its hydration, or a replay).
    #[serde(default)]
    pub hydration: Hydration,
    pub revision: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Only events matching this pattern are delivered (`null`: all of them).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<serde_json::Value>,
    #[serde(default)]
    pub delivery_format: DeliveryFormat,
}

/// What a consumer stream's records hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryFormat {
    /// The envelope, as on the GES (redaction applied).
    #[default]
    Envelope,
    /// The payload bytes alone (redaction applied); the event id is the record's partition
    /// key, the event name and the other envelope fields are not delivered.
    Payload,
}

impl DeliveryFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryFormat::Envelope => "envelope",
            DeliveryFormat::Payload => "payload",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryFormat> {
        [DeliveryFormat::Envelope, DeliveryFormat::Payload]
            .into_iter()
            .find(|format| format.as_str() == s)
    }
}

impl fmt::Display for DeliveryFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSubscription {
    pub stream: String,
    pub events: Vec<String>,
    /// `now` (the default), `earliest`, or an RFC 3339 instant by event time: the stream is
    /// first hydrated with the history since then, then receives live events.
    #[serde(default)]
    pub start_from: Option<StartFrom>,
    /// An EventBridge-style pattern over envelope fields, `attributes` and JSON `payload`
    /// fields (see `api::rules::filter`); absent or `null`: every event.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<serde_json::Value>,
    /// Defaults to `envelope`.
    #[serde(default)]
    pub delivery_format: DeliveryFormat,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSubscription {
    pub events: Vec<String>,
    /// Unchanged when absent. A new value replays the history since then into the stream.
    #[serde(default)]
    pub start_from: Option<StartFrom>,
    pub revision: Option<i64>,
    /// An EventBridge-style pattern over envelope fields, `attributes` and JSON `payload`
    /// fields (see `api::rules::filter`); absent or `null`: every event.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<serde_json::Value>,
    #[serde(default)]
    pub delivery_format: DeliveryFormat,
}

/// Re-delivers the events of a window (by event time) into a subscription's stream.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplaySubscription {
    /// `earliest` or an RFC 3339 instant (inclusive).
    pub from: StartFrom,
    /// An RFC 3339 instant (exclusive); up to the newest event when absent.
    pub to: Option<DateTime<Utc>>,
}

/// Where a subscription's delivery begins, by event time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartFrom {
    /// Live events only.
    #[default]
    Now,
    /// Every event the lake and the global event stream hold.
    Earliest,
    /// Events whose event time is at or after this instant.
    At(DateTime<Utc>),
}

impl StartFrom {
    /// The oldest event time history covers; `None` for no history (`now`) or all of it.
    pub fn instant(self) -> Option<DateTime<Utc>> {
        match self {
            StartFrom::At(at) => Some(at),
            _ => None,
        }
    }

    pub fn parse(text: &str) -> Result<StartFrom, String> {
        match text {
            "now" => Ok(StartFrom::Now),
            "earliest" => Ok(StartFrom::Earliest),
            _ => DateTime::parse_from_rfc3339(text)
                .map(|at| StartFrom::At(at.with_timezone(&Utc)))
                .map_err(|e| {
                    format!("{text:?} is not `now`, `earliest` or an RFC 3339 instant: {e}")
                }),
        }
    }
}

impl fmt::Display for StartFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartFrom::Now => f.write_str("now"),
            StartFrom::Earliest => f.write_str("earliest"),
            StartFrom::At(at) => {
                f.write_str(&at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
            }
        }
    }
}

/// How far back a grantee may read history, by event time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryFrom {
    Unbounded,
    At(DateTime<Utc>),
}

impl HistoryFrom {
    fn unbounded() -> HistoryFrom {
        HistoryFrom::Unbounded
    }

    /// The oldest event time allowed; `None` when unbounded.
    pub fn instant(self) -> Option<DateTime<Utc>> {
        match self {
            HistoryFrom::Unbounded => None,
            HistoryFrom::At(at) => Some(at),
        }
    }

    pub fn parse(text: &str) -> Result<HistoryFrom, String> {
        match text {
            "unbounded" => Ok(HistoryFrom::Unbounded),
            _ => DateTime::parse_from_rfc3339(text)
                .map(|at| HistoryFrom::At(at.with_timezone(&Utc)))
                .map_err(|e| format!("{text:?} is not `unbounded` or an RFC 3339 instant: {e}")),
        }
    }
}

impl fmt::Display for HistoryFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryFrom::Unbounded => f.write_str("unbounded"),
            HistoryFrom::At(at) => {
                f.write_str(&at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
            }
        }
    }
}

/// Serde and an OpenAPI schema for a type spelled as one string.
macro_rules! string_serde {
    ($type:ty, $description:literal, $example:literal) => {
        impl utoipa::PartialSchema for $type {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .description(Some($description))
                    .examples([$example])
                    .into()
            }
        }

        impl ToSchema for $type {}

        impl Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
                <$type>::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}
string_serde!(
    StartFrom,
    "`now`, `earliest`, or an RFC 3339 instant (by event time).",
    "earliest"
);
string_serde!(
    HistoryFrom,
    "`unbounded`, or an RFC 3339 instant (by event time).",
    "2026-01-01T00:00:00Z"
);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HydrationState {
    /// No history was asked for.
    #[default]
    None,
    /// Waiting for a worker to take it up.
    Pending,
    Running,
    Done,
    /// Stopped; `error` says why. Nothing was skipped silently.
    Failed,
}

impl HydrationState {
    pub fn as_str(self) -> &'static str {
        match self {
            HydrationState::None => "none",
            HydrationState::Pending => "pending",
            HydrationState::Running => "running",
            HydrationState::Done => "done",
            HydrationState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<HydrationState> {
        [
            HydrationState::None,
            HydrationState::Pending,
            HydrationState::Running,
            HydrationState::Done,
            HydrationState::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    pub fn is_finished(self) -> bool {
        matches!(self, HydrationState::Done | HydrationState::Failed)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HydrationKind {
    /// A new subscription's history, followed by live delivery with no gap and no duplicate.
    #[default]
    Start,
    /// A window re-delivered into a subscription that keeps receiving live events.
    Replay,
}

/// History delivered into a subscription's stream from the lake and the global event stream.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Hydration {
    /// `None` when no history was asked for.
    pub id: Option<String>,
    pub kind: HydrationKind,
    pub state: HydrationState,
    /// The oldest event time delivered (`None`: the earliest event held).
    pub from: Option<DateTime<Utc>>,
    /// Replays only: events at or after this event time are not re-delivered.
    pub to: Option<DateTime<Utc>>,
    pub events_delivered: u64,
    pub error: Option<String>,
    pub requested_by: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A dry run of a subscription: would its owner be allowed to receive these events now?
/// When `stream` does not exist yet (it is created in the same `terraform apply`), the caller is
/// taken as its future owner.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckSubscription {
    pub stream: String,
    pub events: Vec<String>,
    /// Checked like a subscription's filter (400 when invalid).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<serde_json::Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DenialReason {
    /// No such event in the catalog.
    Unknown,
    /// The owner neither owns the event nor holds a grant on it.
    NotGranted,
    /// The owner's grants on the event have all expired.
    GrantExpired,
}

impl DenialReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenialReason::Unknown => "unknown",
            DenialReason::NotGranted => "not granted",
            DenialReason::GrantExpired => "grant expired",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccessProblem {
    pub event: String,
    pub reason: DenialReason,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccessVerdict {
    pub allowed: bool,
    /// The principal whose access was checked.
    pub owner: String,
    /// One entry per event the owner may not read, in event-name order.
    pub problems: Vec<AccessProblem>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccessSubscription {
    pub subscription_id: String,
    pub stream: String,
    pub owner: String,
    /// Whether the data plane delivers the event to this stream now.
    pub delivering: bool,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<serde_json::Value>,
    #[serde(default)]
    pub delivery_format: DeliveryFormat,
}

/// Who can read an event, since when, granted by whom, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccessView {
    pub event: Event,
    /// Every grant ever made on the event, including expired and revoked ones.
    pub grants: Vec<Grant>,
    pub subscriptions: Vec<AccessSubscription>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub seq: i64,
    pub time: DateTime<Utc>,
    pub request_id: String,
    pub actor: String,
    /// e.g. `grant.create`, `subscription.delete`.
    pub action: String,
    pub object_kind: String,
    pub object_id: String,
    /// `ok`, or `denied` / `invalid` / `conflict` for a refused attempt.
    pub outcome: String,
    /// Why an attempt was refused.
    pub detail: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub before: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    pub after: Option<serde_json::Value>,
    /// Hex SHA-256 of the previous entry (64 zeros for the first).
    pub prev_hash: String,
    /// Hex SHA-256 over this entry's fields and `prev_hash`.
    pub hash: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditVerification {
    pub ok: bool,
    /// The hash of the newest entry as recorded in the chain's head.
    #[serde(default)]
    pub head: String,
    pub entries_checked: i64,
    /// The first entry whose stored hash or link does not match what it should be.
    pub first_mismatch: Option<i64>,
    pub message: String,
}

/// How one principal reaches one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Reach {
    /// The principal owns the event.
    Owner,
    /// The principal holds an active grant on it.
    Grant,
    None,
}

impl Reach {
    pub fn as_str(self) -> &'static str {
        match self {
            Reach::Owner => "owner",
            Reach::Grant => "grant",
            Reach::None => "",
        }
    }
}

/// Who can read what: one row per principal, one cell per event (in `events` order).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccessMatrix {
    pub events: Vec<Event>,
    pub rows: Vec<AccessRow>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccessRow {
    pub principal: String,
    pub reach: Vec<Reach>,
}

/// Why a grant needs a reviewer's attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Attention {
    /// Active, and expires within the review window.
    Expiring,
    Expired,
    /// Active for at least the review window, and no active subscription of the grantee names
    /// the event: a least-privilege candidate.
    Unused,
}

impl Attention {
    pub fn as_str(self) -> &'static str {
        match self {
            Attention::Expiring => "expiring",
            Attention::Expired => "expired",
            Attention::Unused => "unused",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReviewedGrant {
    pub grant: Grant,
    /// Whole days since the grant was made.
    pub age_days: i64,
    /// The grantee's active streams whose subscriptions name the event.
    pub streams: Vec<String>,
    pub attention: Option<Attention>,
}

/// Who can read a `pii` or `restricted` event, directly (owner, grantees) or through streams.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PiiReach {
    pub event: String,
    pub classification: Classification,
    pub owner: String,
    pub readers: Vec<String>,
    /// Streams the route table delivers the event to.
    pub streams: Vec<String>,
}

/// An access review: every grant the caller may see with its use, and PII reach.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccessReview {
    pub generated_at: DateTime<Utc>,
    /// The review window in days (expiring within, unused for).
    pub days: u32,
    /// The audit chain's head hash when the review was made, tying it to the tamper-evident log.
    pub audit_head: String,
    pub grants: Vec<ReviewedGrant>,
    pub pii_reach: Vec<PiiReach>,
}

/// Sets how long an event may stay silent before it counts as a gap.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetMaxSilence {
    /// Seconds (1 to 31536000); `null` to learn the interval from the event's recent rate again.
    pub max_silence_seconds: Option<u64>,
}

/// How an event's stream of records is doing, as the control plane observes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventHealth {
    pub event: String,
    pub owner: String,
    /// Events observed since this control plane started.
    pub events_seen: u64,
    pub last_seen_at: Option<DateTime<Utc>>,
    /// Recent rate (an exponentially weighted mean of the intervals), once learned.
    pub events_per_second: Option<f64>,
    /// Silence longer than this is a gap: the set maximum, or learned from the rate.
    pub max_silence_seconds: Option<u64>,
    /// `set` (by `fanner event update --max-silence`), `learned`, or `learning` (too few
    /// events seen yet to judge).
    pub expectation: String,
    /// Seconds since the last event (or since the control plane started, if none was seen).
    pub silent_seconds: i64,
    pub gap: bool,
}

/// A consumer stream's delivery, as the fan-out engine reports it (summed over GES shards).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StreamHealth {
    pub stream: String,
    pub owner: String,
    /// `attached` (fed by the main cursor), `behind` (catching up on its own cursor), `broken`
    /// (missing or refusing writes), or `unreported` (no engine has reported on it).
    pub mode: String,
    pub reason: Option<String>,
    /// Age of the oldest record the stream still has to receive, at worst over the shards.
    pub lag_ms: Option<i64>,
    /// GES records between the stream's position and the main cursor, over all shards.
    pub lag_records: Option<u64>,
    /// Deliveries waiting in memory or being written.
    pub owed: u64,
    /// Records written to the stream per second over the engine's last report interval.
    #[serde(default)]
    pub events_per_second: Option<f64>,
    pub reported_at: Option<DateTime<Utc>>,
}

/// Where one event goes: a stream whose owner may read it, through one subscription.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RouteTarget {
    pub subscription_id: String,
    pub stream: String,
    /// The backing stream's name in the backend, which the data plane writes to.
    pub backing_name: String,
    pub owner: String,
    /// Delivery must stop at this instant (the grant's expiry); `None` for the owner's own events.
    pub access_expires_at: Option<DateTime<Utc>>,
    /// History older than this (by event time) is not delivered; `None` for the owner's own
    /// events and unbounded grants.
    #[serde(default)]
    pub history_from: Option<DateTime<Utc>>,
    /// The subscription's hydration, while live delivery waits for it on some GES shard.
    #[serde(default)]
    pub hydration: Option<RouteHydration>,
    // What the engine does to each delivery (`fanner::gate`). All empty for the owner's own
    // unfiltered envelope subscriptions, which get the GES bytes unchanged.
    /// The subscription's filter pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "is_envelope")]
    pub delivery_format: DeliveryFormat,
    /// The fields the grant behind this target redacts: its `redact` list plus the schema's PII
    /// fields it does not `include_pii` (sorted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<String>,
    #[serde(default, skip_serializing_if = "is_drop")]
    pub redact_mode: RedactMode,
    /// The grant's HMAC key (hex) for `hash` mode. The route table is served only to admins
    /// (the engine's principal); grants and the audit trail never show it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redact_key: Option<String>,
}

/// Where, per GES shard, a hydrating subscription's live delivery begins: the engine delivers to
/// it only records after `live_after`; the hydration delivers every record up to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RouteHydration {
    pub id: String,
    /// By GES shard id.
    pub shards: BTreeMap<String, Handover>,
    /// Every shard handed over: a shard not listed is delivered live from its start.
    pub done: bool,
}

/// One GES shard's hand-over from a hydration to live delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Handover {
    /// The hydration reads the global event stream after this position (the lake holds every
    /// record up to it); `None`: from the shard's start.
    pub after: Option<String>,
    /// Set once the engine has chosen where live delivery begins.
    pub live: bool,
    /// Live delivery takes the records after this position; `None`: from the shard's start.
    pub live_after: Option<String>,
}

/// What the data plane reports about one GES shard of a hydration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HydrationProgress {
    pub shard: String,
    /// Events of this shard delivered so far (in total, not since the last report).
    pub events_delivered: u64,
    /// Asks the engine to hand over after this position (`None`: the shard's start).
    #[serde(default)]
    pub handover_after: Option<Option<String>>,
    pub done: bool,
    pub error: Option<String>,
}

/// A hydration or replay the data plane has to work on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HydrationTask {
    pub id: String,
    pub subscription_id: String,
    /// The subscription's stream, and its backing stream in the backend.
    pub stream: String,
    pub backing_name: String,
    /// The subscription's events when the task was listed.
    pub events: Vec<String>,
    pub kind: HydrationKind,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Shards already finished (done or failed).
    pub finished_shards: Vec<String>,
}

/// The engine's choice of where live delivery begins on one shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetHandover {
    pub shard: String,
    pub live_after: Option<String>,
}

fn is_envelope(format: &DeliveryFormat) -> bool {
    *format == DeliveryFormat::Envelope
}

fn is_drop(mode: &RedactMode) -> bool {
    *mode == RedactMode::Drop
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Route {
    pub event: String,
    pub targets: Vec<RouteTarget>,
    /// The event's payload schema, so protobuf payloads can be redacted field by field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_schema: Option<RouteSchema>,
}

/// A payload schema as the engine needs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RouteSchema {
    pub message: String,
    /// The FileDescriptorSet, base64.
    pub descriptor_set: String,
}

/// The compiled route table: subscriptions intersected with grants. Events not listed go nowhere.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RouteTable {
    pub revision: i64,
    pub generated_at: DateTime<Utc>,
    /// Every event in the catalog, so the data plane can tell an unknown event from an unrouted one.
    pub known_events: Vec<String>,
    pub routes: Vec<Route>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable: `bad_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`,
    /// `payload_too_large`, `access_denied`, `unavailable`, `internal`.
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<AccessProblem>,
    pub request_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishEvent {
    pub event: String,
    /// A JSON payload (stored as `application/json`).
    #[schema(value_type = Option<Object>)]
    pub payload: Option<serde_json::Value>,
    /// A binary payload, standard base64; exclusive with `payload`.
    pub payload_base64: Option<String>,
    pub content_type: Option<String>,
    pub event_id: Option<String>,
    /// Defaults to the time of publishing.
    pub event_time: Option<DateTime<Utc>>,
    pub user_id: Option<String>,
    pub device_id: Option<String>,
    pub trace_id: Option<String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    pub events: Vec<PublishEvent>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PublishResponse {
    pub accepted: usize,
    pub event_ids: Vec<String>,
}

/// One envelope as a consumer sees it, decoded for people.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EnvelopeView {
    pub event_id: String,
    pub event_name: String,
    pub event_time: Option<DateTime<Utc>>,
    pub ingest_time: Option<DateTime<Utc>>,
    pub producer: String,
    pub trace_id: String,
    pub user_id: String,
    pub device_id: String,
    pub attributes: BTreeMap<String, String>,
    pub content_type: String,
    /// The payload as JSON when it parses as JSON.
    #[schema(value_type = Option<Object>)]
    pub payload: Option<serde_json::Value>,
    /// Otherwise the payload, standard base64.
    pub payload_base64: Option<String>,
    /// Set when a hydration or replay delivered this record from history: its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TailRecord {
    pub shard: String,
    pub sequence: String,
    pub envelope: EnvelopeView,
}
