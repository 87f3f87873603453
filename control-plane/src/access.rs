//! The access model, as pure functions: who may read an event now, and the route table that
//! follows from subscriptions and grants. Deny by default: anything not shown readable is not.

use std::collections::{BTreeMap, HashMap};

use api::{
    AccessProblem, DenialReason, Event, Grant, GrantStatus, RedactMode, Route, RouteHydration,
    RouteSchema, RouteTarget, Stream, Subscription,
};
use chrono::{DateTime, Utc};

/// Why a principal may read an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readable {
    /// It is the event's owner.
    Owner,
    /// It holds an active grant; access ends at `until` (never, for a grant without expiry)
    /// and reaches back to events of `history_from` on (all history when `None`).
    Granted {
        until: Option<DateTime<Utc>>,
        history_from: Option<DateTime<Utc>>,
    },
}

impl Readable {
    pub fn until(self) -> Option<DateTime<Utc>> {
        match self {
            Readable::Owner => None,
            Readable::Granted { until, .. } => until,
        }
    }

    /// The oldest event time history may be delivered from: the owner reads all of it.
    pub fn history_from(self) -> Option<DateTime<Utc>> {
        match self {
            Readable::Owner => None,
            Readable::Granted { history_from, .. } => history_from,
        }
    }
}

/// Whether `principal` may read `event` at `now`, given the grants on that event to that
/// principal (any status).
pub fn evaluate<'a>(
    event: Option<&Event>,
    principal: &str,
    grants: impl IntoIterator<Item = &'a Grant>,
    now: DateTime<Utc>,
) -> Result<Readable, DenialReason> {
    let Some(event) = event else {
        return Err(DenialReason::Unknown);
    };
    if event.owner == principal {
        return Ok(Readable::Owner);
    }
    let mut saw_expired = false;
    let mut best: Option<Option<DateTime<Utc>>> = None;
    // The widest history any active grant allows.
    let mut history: Option<Option<DateTime<Utc>>> = None;
    for grant in grants {
        if grant.event != event.name || grant.grantee != principal || grant.revoked_at.is_some() {
            continue;
        }
        match grant.expires_at {
            Some(at) if at <= now => saw_expired = true,
            until => {
                best = Some(match (best, until) {
                    (None, until) => until,
                    (Some(None), _) | (_, None) => None,
                    (Some(Some(a)), Some(b)) => Some(a.max(b)),
                });
                let from = grant.history_from.instant();
                history = Some(match (history, from) {
                    (None, from) => from,
                    (Some(None), _) | (_, None) => None,
                    (Some(Some(a)), Some(b)) => Some(a.min(b)),
                });
            }
        }
    }
    match best {
        Some(until) => Ok(Readable::Granted {
            until,
            history_from: history.flatten(),
        }),
        None if saw_expired => Err(DenialReason::GrantExpired),
        None => Err(DenialReason::NotGranted),
    }
}

/// The grant access comes from: the active one lasting longest (there is normally one, as a
/// second active grant on the same event to the same grantee is refused).
fn granting<'g>(held: &[&'g Grant], now: DateTime<Utc>) -> Option<&'g Grant> {
    held.iter()
        .copied()
        .filter(|g| g.revoked_at.is_none() && g.expires_at.is_none_or(|at| at > now))
        .max_by(|a, b| match (a.expires_at, b.expires_at) {
            (None, None) => std::cmp::Ordering::Equal,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(_), None) => std::cmp::Ordering::Less,
            (Some(a), Some(b)) => a.cmp(&b),
        })
}

pub fn problem(event: &str, owner: &str, reason: DenialReason) -> AccessProblem {
    let message = match reason {
        DenialReason::Unknown => format!("event {event:?} does not exist in the catalog"),
        DenialReason::NotGranted => {
            format!("{owner:?} has no grant to read {event:?}; ask the event's owner for one")
        }
        DenialReason::GrantExpired => {
            format!(
                "{owner:?}'s grant to read {event:?} has expired; ask the event's owner to renew it"
            )
        }
    };
    AccessProblem {
        event: event.to_owned(),
        reason,
        message,
    }
}

/// Everything the route table is compiled from.
pub struct Catalog<'a> {
    pub events: &'a [Event],
    pub streams: &'a [Stream],
    pub subscriptions: &'a [Subscription],
    /// Grants of any status; revoked and expired ones are ignored.
    pub grants: &'a [Grant],
    /// Start hydrations by subscription id.
    pub hydrations: &'a HashMap<String, RouteHydration>,
    /// Each grant's HMAC key (hex), by grant id, for hashed redaction.
    pub grant_keys: &'a HashMap<String, String>,
    /// Each event's payload schema with its descriptors, by event name.
    pub schemas: &'a HashMap<String, RouteSchema>,
}

/// Subscriptions intersected with access: for each event, the streams that receive it now.
/// Targets carry the instant their access ends, so the data plane stops at expiry by itself,
/// and what the engine does to each delivery: the subscription's filter and format, and the
/// redaction of the grant that gives the access (none on the owner's own events).
pub fn compile_routes(
    catalog: &Catalog<'_>,
    now: DateTime<Utc>,
    backing_name: impl Fn(&str) -> String,
) -> Vec<Route> {
    let events: HashMap<&str, &Event> = catalog
        .events
        .iter()
        .map(|e| (e.name.as_str(), e))
        .collect();
    let streams: HashMap<&str, &Stream> = catalog
        .streams
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect();
    let mut grants: HashMap<(&str, &str), Vec<&Grant>> = HashMap::new();
    for grant in catalog
        .grants
        .iter()
        .filter(|g| g.status != GrantStatus::Revoked)
    {
        grants
            .entry((grant.event.as_str(), grant.grantee.as_str()))
            .or_default()
            .push(grant);
    }
    let mut routes: BTreeMap<&str, Vec<RouteTarget>> = BTreeMap::new();
    for subscription in catalog.subscriptions {
        let Some(stream) = streams.get(subscription.stream.as_str()) else {
            continue;
        };
        for event in &subscription.events {
            let held = grants
                .get(&(event.as_str(), stream.owner.as_str()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let Ok(readable) = evaluate(
                events.get(event.as_str()).copied(),
                &stream.owner,
                held.iter().copied(),
                now,
            ) else {
                continue;
            };
            let grant = match readable {
                Readable::Owner => None,
                Readable::Granted { .. } => granting(held, now),
            };
            let pii = events
                .get(event.as_str())
                .and_then(|e| e.schema.as_ref())
                .map(|schema| schema.pii_fields.as_slice())
                .unwrap_or_default();
            let (redact, redact_mode, redact_key) = match grant {
                Some(grant) => {
                    let redact = redaction(grant, pii);
                    if redact.is_empty() {
                        (redact, RedactMode::Drop, None)
                    } else {
                        let key = catalog.grant_keys.get(&grant.id).cloned();
                        (redact, grant.redact_mode, key)
                    }
                }
                None => (Vec::new(), RedactMode::Drop, None),
            };
            routes.entry(event.as_str()).or_default().push(RouteTarget {
                subscription_id: subscription.id.clone(),
                stream: stream.name.clone(),
                backing_name: backing_name(&stream.name),
                owner: stream.owner.clone(),
                access_expires_at: readable.until(),
                history_from: readable.history_from(),
                hydration: catalog.hydrations.get(&subscription.id).cloned(),
                filter: subscription.filter.clone(),
                delivery_format: subscription.delivery_format,
                // Drop mode needs no key, so it is not sent.
                redact_key: redact_key.filter(|_| redact_mode == RedactMode::Hash),
                redact,
                redact_mode,
            });
        }
    }
    routes
        .into_iter()
        .map(|(event, targets)| Route {
            event: event.to_owned(),
            targets,
            payload_schema: catalog.schemas.get(event).cloned(),
        })
        .collect()
}

/// What `grant` redacts: its own `redact` list and the schema's PII fields it does not
/// `include_pii`, sorted.
fn redaction(grant: &Grant, pii: &[String]) -> Vec<String> {
    let mut redact: Vec<String> = grant
        .redact
        .iter()
        .chain(
            pii.iter()
                .filter(|field| !grant.include_pii.contains(field)),
        )
        .cloned()
        .collect();
    redact.sort();
    redact.dedup();
    redact
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use api::{Classification, SubscriptionStatus};
    use chrono::Duration;

    use super::*;

    fn event(name: &str, owner: &str) -> Event {
        Event {
            name: name.to_owned(),
            owner: owner.to_owned(),
            classification: Classification::Internal,
            description: String::new(),
            revision: 1,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            schema: None,
        }
    }

    fn grant(
        event: &str,
        grantee: &str,
        expires_at: Option<DateTime<Utc>>,
        revoked: bool,
    ) -> Grant {
        Grant {
            id: format!("{event}-{grantee}"),
            event: event.to_owned(),
            grantee: grantee.to_owned(),
            reason: "test".to_owned(),
            granted_by: "owner".to_owned(),
            created_at: Utc::now(),
            expires_at,
            revoked_at: revoked.then(Utc::now),
            revoked_by: None,
            status: if revoked {
                GrantStatus::Revoked
            } else {
                GrantStatus::Active
            },
            history_from: api::HistoryFrom::Unbounded,
            revision: 1,
            redact: Vec::new(),
            redact_mode: RedactMode::Drop,
            include_pii: Vec::new(),
        }
    }

    #[test]
    fn evaluation() {
        let now = Utc::now();
        let later = now + Duration::days(1);
        let signup = event("signup", "growth");
        #[track_caller]
        fn check(
            event: Option<&Event>,
            who: &str,
            grants: &[Grant],
            now: DateTime<Utc>,
            expected: Result<Readable, DenialReason>,
        ) {
            assert_eq!(evaluate(event, who, grants, now), expected);
        }
        check(None, "fraud", &[], now, Err(DenialReason::Unknown));
        check(Some(&signup), "growth", &[], now, Ok(Readable::Owner));
        check(
            Some(&signup),
            "fraud",
            &[],
            now,
            Err(DenialReason::NotGranted),
        );
        check(
            Some(&signup),
            "fraud",
            &[grant("signup", "fraud", None, false)],
            now,
            Ok(Readable::Granted {
                until: None,
                history_from: None,
            }),
        );
        check(
            Some(&signup),
            "fraud",
            &[grant("signup", "fraud", Some(later), false)],
            now,
            Ok(Readable::Granted {
                until: Some(later),
                history_from: None,
            }),
        );
        check(
            Some(&signup),
            "fraud",
            &[grant("signup", "fraud", Some(now), false)],
            now,
            Err(DenialReason::GrantExpired),
        );
        check(
            Some(&signup),
            "fraud",
            &[grant("signup", "fraud", None, true)],
            now,
            Err(DenialReason::NotGranted),
        );
        check(
            Some(&signup),
            "fraud",
            &[grant("signup", "other", None, false)],
            now,
            Err(DenialReason::NotGranted),
        );
        check(
            Some(&signup),
            "fraud",
            &[grant("other", "fraud", None, false)],
            now,
            Err(DenialReason::NotGranted),
        );
        check(
            Some(&signup),
            "fraud",
            &[
                grant("signup", "fraud", Some(now - Duration::days(1)), false),
                grant("signup", "fraud", Some(later), false),
            ],
            now,
            Ok(Readable::Granted {
                until: Some(later),
                history_from: None,
            }),
        );
        check(
            Some(&signup),
            "fraud",
            &[
                grant("signup", "fraud", Some(later), false),
                grant("signup", "fraud", None, false),
            ],
            now,
            Ok(Readable::Granted {
                until: None,
                history_from: None,
            }),
        );
    }

    #[test]
    fn routes_follow_grants() {
        let now = Utc::now();
        // The schema marks two PII fields; the grant includes one of them.
        let schema = api::EventSchema {
            message: "growth.Signup".to_owned(),
            pii_fields: vec!["payload.email".to_owned(), "payload.phone".to_owned()],
            digest: "d".to_owned(),
            updated_at: now,
        };
        let events = [
            Event {
                schema: Some(schema),
                ..event("signup", "growth")
            },
            event("swipe", "cards"),
            event("secret", "cards"),
        ];
        let descriptors = RouteSchema {
            message: "growth.Signup".to_owned(),
            descriptor_set: "AAAA".to_owned(),
        };
        let stream = |name: &str, owner: &str| Stream {
            name: name.to_owned(),
            owner: owner.to_owned(),
            shard_count: 1,
            retention_hours: 24,
            tags: BTreeMap::new(),
            status: "active".to_owned(),
            backing_id: format!("embedded:{name}"),
            revision: 1,
            created_at: now,
            updated_at: now,
        };
        let streams = [
            stream("fraud-signals", "fraud"),
            stream("growth-own", "growth"),
        ];
        let subscription = |id: &str, stream: &str, events: &[&str]| Subscription {
            id: id.to_owned(),
            stream: stream.to_owned(),
            owner: String::new(),
            events: events.iter().map(|e| (*e).to_owned()).collect(),
            status: SubscriptionStatus::Active,
            status_reason: None,
            start_from: api::StartFrom::Now,
            hydration: api::Hydration::default(),
            revision: 1,
            created_at: now,
            updated_at: now,
            filter: None,
            delivery_format: api::DeliveryFormat::Envelope,
        };
        let subscriptions = [
            subscription(
                "s1",
                "fraud-signals",
                &["signup", "swipe", "secret", "ghost"],
            ),
            subscription("s2", "growth-own", &["signup"]),
        ];
        let until = now + Duration::hours(1);
        let filter = serde_json::json!({"payload": {"country": ["US"]}});
        let subscriptions = [
            Subscription {
                filter: Some(filter.clone()),
                ..subscriptions[0].clone()
            },
            Subscription {
                delivery_format: api::DeliveryFormat::Payload,
                ..subscriptions[1].clone()
            },
        ];
        let redacting = Grant {
            redact: vec!["payload.ssn".to_owned()],
            redact_mode: RedactMode::Hash,
            include_pii: vec!["payload.phone".to_owned()],
            ..grant("signup", "fraud", Some(until), false)
        };
        let grants = [
            redacting,
            grant("swipe", "fraud", Some(now - Duration::hours(1)), false),
            grant("secret", "fraud", None, true),
        ];
        let routes = compile_routes(
            &Catalog {
                events: &events,
                streams: &streams,
                subscriptions: &subscriptions,
                grants: &grants,
                hydrations: &HashMap::new(),
                grant_keys: &HashMap::from([("signup-fraud".to_owned(), "00ff".to_owned())]),
                schemas: &HashMap::from([("signup".to_owned(), descriptors.clone())]),
            },
            now,
            |name| format!("fanner-{name}"),
        );
        // The grantee's target carries its subscription's filter and its grant's redaction
        // (its own list and the PII fields it does not include) with the key; the owner's own
        // stream gets no redaction. The route carries the schema for protobuf payloads.
        assert_eq!(routes[0].payload_schema, Some(descriptors));
        let signup = &routes[0].targets;
        assert_eq!(
            (
                &signup[0].filter,
                &signup[0].redact,
                signup[0].redact_mode,
                signup[0].redact_key.as_deref(),
                signup[0].delivery_format
            ),
            (
                &Some(filter),
                &vec!["payload.email".to_owned(), "payload.ssn".to_owned()],
                RedactMode::Hash,
                Some("00ff"),
                api::DeliveryFormat::Envelope
            )
        );
        assert_eq!(
            (
                &signup[1].filter,
                signup[1].redact.is_empty(),
                signup[1].redact_key.as_deref(),
                signup[1].delivery_format
            ),
            (&None, true, None, api::DeliveryFormat::Payload)
        );
        type Targets = Vec<(String, Option<DateTime<Utc>>)>;
        let summary: Vec<(String, Targets)> = routes
            .into_iter()
            .map(|r| {
                (
                    r.event,
                    r.targets
                        .into_iter()
                        .map(|t| (t.backing_name, t.access_expires_at))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![(
                "signup".to_owned(),
                vec![
                    ("fanner-fraud-signals".to_owned(), Some(until)),
                    ("fanner-growth-own".to_owned(), None)
                ]
            )]
        );
    }
}
