//! Read-only views: `fanner_event` (one catalog entry) and `fanner_access` (who reads an event).

use std::sync::LazyLock;

use api::rules;

use crate::diag::Diags;
use crate::resources::{self, Ctx, check_str, required_str};
use crate::schema::{Attr, Schema, Ty};
use crate::value::{Obj, Value};

#[tonic::async_trait]
pub trait DataSource: Send + Sync {
    fn type_name(&self) -> &'static str;
    fn schema(&self) -> &Schema;
    fn validate(&self, config: &Obj, diags: &mut Diags);
    async fn read(&self, ctx: &Ctx, config: &Obj, diags: &mut Diags) -> Option<Obj>;
}

pub fn all() -> Vec<Box<dyn DataSource>> {
    vec![Box::new(EventDataSource), Box::new(AccessDataSource)]
}

pub struct EventDataSource;

static EVENT_SCHEMA: LazyLock<Schema> = LazyLock::new(resources::event_data_source_schema);

#[tonic::async_trait]
impl DataSource for EventDataSource {
    fn type_name(&self) -> &'static str {
        "fanner_event"
    }

    fn schema(&self) -> &Schema {
        &EVENT_SCHEMA
    }

    fn validate(&self, config: &Obj, diags: &mut Diags) {
        check_str(config, "name", diags, |v| rules::check_name("event", v));
    }

    async fn read(&self, ctx: &Ctx, config: &Obj, diags: &mut Diags) -> Option<Obj> {
        let client = ctx.client(diags)?;
        let name = required_str(config, "name", diags)?;
        match client.get_event(name).await {
            Ok(Some(event)) => Some(EVENT_SCHEMA.conform(resources::event_state(&event))),
            Ok(None) => {
                diags.error_at(
                    "name",
                    format!("No event {name:?} in the catalog"),
                    "Check the name, or register the event with a fanner_event resource.",
                );
                None
            }
            Err(e) => {
                diags.api(&format!("read event {name:?}"), &e);
                None
            }
        }
    }
}

pub struct AccessDataSource;

static ACCESS_SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
    description: "Who can read an event, since when, granted by whom and why: every grant ever \
                  made on it (including expired and revoked ones) and the subscriptions that \
                  route it to streams.",
    attributes: vec![
        Attr::required("event", Ty::String, "The event's name."),
        Attr::computed("id", Ty::String, "The event's name."),
        Attr::computed(
            "owner",
            Ty::String,
            "The principal (team) that owns the event.",
        ),
        Attr::computed(
            "classification",
            Ty::String,
            "The event's classification: `public`, `internal`, `pii` or `restricted`.",
        ),
        Attr::computed(
            "readers",
            Ty::set_of_strings(),
            "The principals that may read the event now: its owner and every grantee of an \
             active grant.",
        ),
        Attr::computed_list(
            "grants",
            vec![
                Attr::computed("id", Ty::String, "The grant's identifier."),
                Attr::computed("grantee", Ty::String, "The principal the grant is for."),
                Attr::computed("reason", Ty::String, "Why the grant was made."),
                Attr::computed("granted_by", Ty::String, "Who made the grant."),
                Attr::computed(
                    "created_at",
                    Ty::String,
                    "When the grant was made (RFC 3339).",
                ),
                Attr::computed(
                    "expires_at",
                    Ty::String,
                    "When the grant stops (RFC 3339); null if it does not expire.",
                ),
                Attr::computed(
                    "revoked_at",
                    Ty::String,
                    "When the grant was revoked (RFC 3339); null unless revoked.",
                ),
                Attr::computed("status", Ty::String, "`active`, `expired` or `revoked`."),
                Attr::computed(
                    "history_from",
                    Ty::String,
                    "The oldest history, by event time, the grantee may receive: `unbounded`, \
                     or an RFC 3339 instant (by default the grant's creation time).",
                ),
                Attr::computed(
                    "redact",
                    Ty::set_of_strings(),
                    "Fields the grantee never sees.",
                ),
                Attr::computed(
                    "redact_mode",
                    Ty::String,
                    "`drop` or `hash`: how the `redact` fields are withheld.",
                ),
                Attr::computed(
                    "include_pii",
                    Ty::set_of_strings(),
                    "PII fields of the event's schema the grantee may see anyway.",
                ),
            ],
            "Every grant ever made on the event, oldest first.",
        ),
        Attr::computed_list(
            "subscriptions",
            vec![
                Attr::computed("id", Ty::String, "The subscription's identifier."),
                Attr::computed("stream", Ty::String, "The stream that receives the event."),
                Attr::computed("owner", Ty::String, "The stream's owner."),
                Attr::computed(
                    "delivering",
                    Ty::Bool,
                    "Whether the data plane delivers the event to this stream now.",
                ),
                Attr::computed(
                    "filter",
                    Ty::String,
                    "The subscription's filter pattern (JSON); null when it takes every event.",
                ),
                Attr::computed(
                    "delivery_format",
                    Ty::String,
                    "`envelope` or `payload`: what the stream's records hold.",
                ),
            ],
            "The subscriptions that name the event.",
        ),
    ],
});

#[tonic::async_trait]
impl DataSource for AccessDataSource {
    fn type_name(&self) -> &'static str {
        "fanner_access"
    }

    fn schema(&self) -> &Schema {
        &ACCESS_SCHEMA
    }

    fn validate(&self, config: &Obj, diags: &mut Diags) {
        check_str(config, "event", diags, |v| rules::check_name("event", v));
    }

    async fn read(&self, ctx: &Ctx, config: &Obj, diags: &mut Diags) -> Option<Obj> {
        let client = ctx.client(diags)?;
        let event = required_str(config, "event", diags)?;
        let view = match client.access(event).await {
            Ok(view) => view,
            Err(e) if e.is_not_found() => {
                diags.error_at(
                    "event",
                    format!("No event {event:?} in the catalog"),
                    "Check the name, or register the event with a fanner_event resource.",
                );
                return None;
            }
            Err(e) => {
                diags.api(&format!("read who can access event {event:?}"), &e);
                return None;
            }
        };
        let mut readers: Vec<String> = view
            .grants
            .iter()
            .filter(|g| g.status == api::GrantStatus::Active)
            .map(|g| g.grantee.clone())
            .chain(std::iter::once(view.event.owner.clone()))
            .collect();
        readers.sort();
        readers.dedup();
        let mut state = ACCESS_SCHEMA.empty_object();
        state.set("event", event);
        state.set("id", view.event.name.as_str());
        state.set("owner", view.event.owner.as_str());
        state.set("classification", view.event.classification.as_str());
        state.set("readers", readers);
        state.set(
            "grants",
            Value::List(
                view.grants
                    .iter()
                    .map(resources::grant_access_entry)
                    .collect(),
            ),
        );
        state.set(
            "subscriptions",
            Value::List(
                view.subscriptions
                    .iter()
                    .map(|s| {
                        let mut entry = Obj::default();
                        entry.set("id", s.subscription_id.as_str());
                        entry.set("stream", s.stream.as_str());
                        entry.set("owner", s.owner.as_str());
                        entry.set("delivering", s.delivering);
                        entry.set(
                            "filter",
                            Value::opt_string(s.filter.as_ref().map(|f| f.to_string())),
                        );
                        entry.set("delivery_format", s.delivery_format.as_str());
                        entry.into_value()
                    })
                    .collect(),
            ),
        );
        Some(state)
    }
}
