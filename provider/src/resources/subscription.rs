use std::sync::LazyLock;

use api::rules::filter::Filter;
use api::{
    AccessProblem, CreateSubscription, DeliveryFormat, DenialReason, GrantStatus, Subscription,
    SubscriptionStatus, UpdateSubscription, rules,
};

use super::{
    Ctx, Resource, cached_get, check_str, ends_soon, filter, passes, required_str, time, when,
};
use crate::diag::Diags;
use crate::schema::{Attr, Schema, Ty};
use crate::value::{Obj, Value};

pub struct SubscriptionResource;

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
    description: "Routes events to a stream. Access is checked for the stream's owner when you \
                  run `terraform plan`: every event must be owned by that team or granted to it \
                  by an active `fanner_grant`.",
    attributes: vec![
        Attr::computed(
            "id",
            Ty::String,
            "The subscription's identifier, assigned by Fanner.",
        ),
        Attr::required(
            "stream",
            Ty::String,
            "The name of the stream that receives the events.",
        )
        .force_new(),
        Attr::required(
            "events",
            Ty::set_of_strings(),
            "The names of the events to deliver to the stream. Changed in place.",
        ),
        Attr::optional(
            "filter",
            Ty::String,
            "Only events matching this pattern are delivered (JSON, e.g. `jsonencode({ payload = \
             { country = [\"US\"], age = [{ numeric = [\">=\", 18] }] } })`): a subset of \
             EventBridge event patterns. Keys address envelope fields (`event_id`, \
             `event_name`, `producer`, `trace_id`, `user_id`, `device_id`, `content_type`), \
             `attributes` and JSON `payload` fields by nesting; each field lists alternatives \
             (OR): values, `{ prefix = \"..\" }`, `{ suffix = \"..\" }`, \
             `{ \"anything-but\" = .. }`, `{ numeric = [\">\", 0, \"<=\", 100] }`, \
             `{ exists = true }`; all fields must match (AND). At most 300 alternatives in all. \
             A payload that is not JSON matches no payload key. Checked at plan time; changed \
             in place.",
        ),
        Attr::optional_computed(
            "delivery_format",
            Ty::String,
            "`envelope` (the event's envelope, as produced, with the grant's redaction) or \
             `payload` (the payload bytes alone; the event id is the record's partition key, the \
             event name and other envelope fields are not delivered). Changed in place.",
        )
        .default("envelope"),
        Attr::computed(
            "owner",
            Ty::String,
            "The stream's owner: the principal whose access to the events is checked.",
        ),
        Attr::computed(
            "status",
            Ty::String,
            "`active`, or `failed` when the data plane cannot deliver to the stream (see \
             `status_reason`).",
        )
        .changes_on_update(),
        Attr::computed(
            "status_reason",
            Ty::String,
            "Why the subscription failed; null while it is active.",
        )
        .changes_on_update(),
        Attr::computed(
            "revision",
            Ty::Number,
            "Increases with every change to the subscription.",
        )
        .changes_on_update(),
        Attr::computed(
            "created_at",
            Ty::String,
            "When the subscription was made (RFC 3339).",
        ),
        Attr::computed(
            "updated_at",
            Ty::String,
            "When the subscription last changed (RFC 3339).",
        )
        .changes_on_update(),
    ],
});

static LIST_SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
    description: "Finds subscriptions, e.g. to adopt existing ones with `terraform query`.",
    attributes: vec![
        filter("stream", "Only subscriptions of this stream."),
        filter("event", "Only subscriptions that name this event."),
        filter(
            "owner",
            "Only subscriptions of streams this principal (team) owns.",
        ),
    ],
});

/// The subscription as state. `written_filter` is the filter text from the configuration or the
/// prior state: it is kept when it is the same pattern as the API's, so formatting never shows
/// as a diff.
fn state_of(subscription: &Subscription, written_filter: Option<&str>) -> Obj {
    let mut state = SCHEMA.empty_object();
    state.set("id", subscription.id.as_str());
    state.set("stream", subscription.stream.as_str());
    state.set("events", subscription.events.clone());
    let filter = match (&subscription.filter, written_filter) {
        (Some(pattern), Some(written))
            if serde_json::from_str::<serde_json::Value>(written)
                .ok()
                .as_ref()
                == Some(pattern) =>
        {
            Value::string(written)
        }
        (Some(pattern), _) => Value::string(pattern.to_string()),
        (None, _) => Value::Null,
    };
    state.set("filter", filter);
    state.set("delivery_format", subscription.delivery_format.as_str());
    state.set("owner", subscription.owner.as_str());
    let status = match subscription.status {
        SubscriptionStatus::Active => "active",
        SubscriptionStatus::Failed => "failed",
    };
    state.set("status", status);
    state.set(
        "status_reason",
        Value::opt_string(subscription.status_reason.as_deref()),
    );
    state.set("revision", subscription.revision);
    state.set("created_at", time(&subscription.created_at));
    state.set("updated_at", time(&subscription.updated_at));
    state
}

/// A refusal this same plan fixes: the event or the grant is created (or renewed) before the
/// subscription, because the subscription references it.
fn resolved_by_this_plan(ctx: &Ctx, problem: &AccessProblem, owner: &str) -> bool {
    match problem.reason {
        DenialReason::Unknown => ctx.pending.has_event(&problem.event),
        DenialReason::NotGranted | DenialReason::GrantExpired => {
            ctx.pending.has_grant(&problem.event, owner)
        }
    }
}

/// The planned filter (parsed) and delivery format.
fn gatekeeping(
    obj: &Obj,
    diags: &mut Diags,
) -> Option<(Option<serde_json::Value>, DeliveryFormat)> {
    let filter = match obj.str("filter") {
        None => None,
        Some(text) => match serde_json::from_str(text) {
            Ok(pattern) => Some(pattern),
            Err(error) => {
                diags.error_at(
                    "filter",
                    "Invalid filter",
                    format!("filter is not valid JSON: {error}"),
                );
                return None;
            }
        },
    };
    let format = obj
        .str("delivery_format")
        .and_then(DeliveryFormat::parse)
        .unwrap_or_default();
    Some((filter, format))
}

fn events(obj: &Obj, diags: &mut Diags) -> Option<Vec<String>> {
    let Some(events) = obj.get("events").as_strings() else {
        diags.error_at(
            "events",
            "Missing events",
            "events must be known at this point",
        );
        return None;
    };
    match rules::normalize_events(&events) {
        Ok(events) => Some(events),
        Err(problem) => {
            diags.error_at("events", "Invalid events", problem);
            None
        }
    }
}

#[tonic::async_trait]
impl Resource for SubscriptionResource {
    fn type_name(&self) -> &'static str {
        "fanner_subscription"
    }

    fn schema(&self) -> &Schema {
        &SCHEMA
    }

    fn import_id_kind(&self) -> &'static str {
        "the subscription's id"
    }

    fn identity_attr(&self) -> &'static str {
        "id"
    }

    fn list_schema(&self) -> &Schema {
        &LIST_SCHEMA
    }

    fn validate_list(&self, config: &Obj, diags: &mut Diags) {
        check_str(config, "stream", diags, |v| rules::check_name("stream", v));
        check_str(config, "event", diags, |v| rules::check_name("event", v));
        check_str(config, "owner", diags, |v| {
            rules::check_name("principal", v)
        });
    }

    async fn list(&self, ctx: &Ctx, config: &Obj, diags: &mut Diags) -> Vec<Obj> {
        let Some(client) = ctx.client(diags) else {
            return Vec::new();
        };
        let subscriptions = diags
            .api_value(
                "list subscriptions",
                client.list_subscriptions(config.str("stream")).await,
            )
            .unwrap_or_default();
        subscriptions
            .iter()
            .filter(|s| {
                passes(config, "owner", &s.owner)
                    && config
                        .str("event")
                        .is_none_or(|e| s.events.iter().any(|x| x == e))
            })
            .map(|s| state_of(s, None))
            .collect()
    }

    fn validate(&self, config: &Obj, diags: &mut Diags) {
        check_str(config, "stream", diags, |v| rules::check_name("stream", v));
        // The same rules as the API's, so a bad pattern or one over the budget fails the plan.
        check_str(config, "filter", diags, |v| {
            Filter::parse(v)
                .map(|_| ())
                .map_err(|error| error.to_string())
        });
        check_str(
            config,
            "delivery_format",
            diags,
            |v| match DeliveryFormat::parse(v) {
                Some(_) => Ok(()),
                None => Err(format!(
                    "delivery_format must be \"envelope\" or \"payload\", not {v:?}"
                )),
            },
        );
        let Some(items) = config.get("events").as_list() else {
            return;
        };
        if items.is_empty() {
            diags.error_at(
                "events",
                "Invalid events",
                "events must name at least one event",
            );
        }
        if items.len() > rules::MAX_SUBSCRIPTION_EVENTS {
            diags.error_at(
                "events",
                "Invalid events",
                format!(
                    "a subscription names at most {} events",
                    rules::MAX_SUBSCRIPTION_EVENTS
                ),
            );
        }
        for name in items.iter().filter_map(Value::as_str) {
            if let Err(problem) = rules::check_name("event", name) {
                diags.error_at("events", "Invalid events", problem);
            }
        }
    }

    /// Asks the control plane, at plan time, whether the stream's owner may receive every event,
    /// so a refusal shows in `terraform plan` rather than halfway through an apply.
    async fn adjust_plan(
        &self,
        ctx: &Ctx,
        prior: Option<&Obj>,
        planned: &mut Obj,
        diags: &mut Diags,
    ) {
        let events_changed = prior.is_none_or(|p| {
            let (mut a, mut b) = (
                p.get("events").as_strings().unwrap_or_default(),
                planned.get("events").as_strings().unwrap_or_default(),
            );
            a.sort();
            b.sort();
            a != b
        });
        if !events_changed {
            return;
        }
        let (Some(stream), Some(events)) = (
            planned.str("stream").map(str::to_owned),
            planned.get("events").as_strings(),
        ) else {
            // Unknown until apply (e.g. the stream's name comes from another resource being
            // created): the server checks again when the subscription is written.
            return;
        };
        if !ctx.is_configured() {
            return;
        }
        let Some(client) = ctx.client(diags) else {
            return;
        };
        match ctx.cache.verdicts.check(client, &stream, &events).await {
            Ok(verdict) if verdict.allowed => {}
            Ok(verdict) => {
                let problems: Vec<_> = verdict
                    .problems
                    .iter()
                    .filter(|p| !resolved_by_this_plan(ctx, p, &verdict.owner))
                    .collect();
                for problem in &problems {
                    diags.error_at(
                        "events",
                        format!(
                            "Stream {stream:?} may not receive event {:?}: {}",
                            problem.event,
                            problem.reason.as_str()
                        ),
                        format!(
                            "{}. Access is checked for the stream's owner, {:?}: an event must be \
                             owned by that team or granted to it by an active fanner_grant. Ask \
                             the event's owner for a grant, or remove {:?} from events.",
                            problem.message.trim_end_matches('.'),
                            verdict.owner,
                            problem.event
                        ),
                    );
                }
                if verdict.problems.is_empty() {
                    diags.error_at(
                        "events",
                        format!("Stream {stream:?} may not receive these events"),
                        format!("The control plane refused access for {:?}.", verdict.owner),
                    );
                }
            }
            Err(e) => diags.api(
                &format!("check access of stream {stream:?} to its events"),
                &e,
            ),
        }
    }

    /// Warns on `events` for each event the stream's owner reads through grants that all end
    /// within `expiry_warning_days`, naming the event and the date.
    async fn plan_warnings(&self, ctx: &Ctx, planned: &Obj, diags: &mut Diags) {
        let (Some(stream), Some(events)) =
            (planned.str("stream"), planned.get("events").as_strings())
        else {
            return;
        };
        if ctx.expiry_warning <= chrono::Duration::zero()
            || !ctx.is_configured()
            || ctx.cache.has_written()
        {
            return;
        }
        let Some(client) = ctx.client(diags) else {
            return;
        };
        let owner = match planned.str("owner") {
            Some(owner) => owner.to_owned(),
            None => match cached_get(
                &ctx.cache.streams,
                stream,
                || client.list_streams(),
                |s| s.name.clone(),
                || client.get_stream(stream),
            )
            .await
            {
                Ok(Some(found)) => found.owner,
                // Created by this apply, or unreadable: the access check speaks for it.
                _ => return,
            },
        };
        let Ok(grants) = ctx
            .cache
            .grants
            .all(|| client.list_grants(None, None), |g| g.id.clone())
            .await
        else {
            return;
        };
        let now = chrono::Utc::now();
        let mut events = events;
        events.sort();
        events.dedup();
        for event in &events {
            if ctx.pending.has_grant(event, &owner) {
                continue;
            }
            if let Ok(Some(found)) = super::event::lookup(ctx, client, event).await
                && found.owner == owner
            {
                continue;
            }
            let active: Vec<_> = grants
                .values()
                .filter(|g| {
                    g.event == *event && g.grantee == owner && g.status == GrantStatus::Active
                })
                .map(|g| g.expires_at)
                .collect();
            // Access lasts as long as the longest-running active grant; one without an expiry
            // never ends, and without any the access check has already spoken.
            let ends = if active.contains(&None) {
                None
            } else {
                active.into_iter().flatten().max()
            };
            if let Some(at) = ends
                && ends_soon(ctx, at, now)
            {
                diags.warning_at(
                    "events",
                    format!(
                        "Stream {stream:?} stops receiving {event:?} {}",
                        when(at, now)
                    ),
                    format!(
                        "{owner:?} reads {event:?} through a fanner_grant that expires {}. Ask \
                         the event's owner to renew it (a later expires_at), or remove {event:?} \
                         from events. (This warning covers grants ending within the provider's \
                         expiry_warning_days, {} days.)",
                        when(at, now),
                        ctx.expiry_warning.num_days()
                    ),
                );
            }
        }
    }

    async fn read(&self, ctx: &Ctx, state: &Obj, diags: &mut Diags) -> Option<Obj> {
        let client = ctx.client(diags)?;
        let id = required_str(state, "id", diags)?;
        let found = cached_get(
            &ctx.cache.subscriptions,
            id,
            || client.list_subscriptions(None),
            |s| s.id.clone(),
            || client.get_subscription(id),
        )
        .await;
        diags
            .api_value(&format!("read subscription {id:?}"), found)?
            .as_ref()
            .map(|subscription| state_of(subscription, state.str("filter")))
    }

    async fn create(&self, ctx: &Ctx, planned: &Obj, diags: &mut Diags) -> Option<Obj> {
        let client = ctx.client(diags)?;
        let stream = required_str(planned, "stream", diags)?;
        let events = events(planned, diags)?;
        let (filter, delivery_format) = gatekeeping(planned, diags)?;
        let body = CreateSubscription {
            stream: stream.to_owned(),
            events,
            filter,
            delivery_format,
        };
        ctx.cache.invalidate().await;
        diags
            .api_value(
                &format!("subscribe stream {stream:?}"),
                client.create_subscription(&body).await,
            )
            .map(|subscription| state_of(&subscription, planned.str("filter")))
    }

    async fn update(
        &self,
        ctx: &Ctx,
        prior: &Obj,
        planned: &Obj,
        diags: &mut Diags,
    ) -> Option<Obj> {
        let client = ctx.client(diags)?;
        let id = required_str(prior, "id", diags)?;
        let events = events(planned, diags)?;
        let (filter, delivery_format) = gatekeeping(planned, diags)?;
        let body = UpdateSubscription {
            events,
            revision: prior.get("revision").as_i64(),
            filter,
            delivery_format,
        };
        ctx.cache.invalidate().await;
        diags
            .api_value(
                &format!("update subscription {id:?}"),
                client.update_subscription(id, &body).await,
            )
            .map(|subscription| state_of(&subscription, planned.str("filter")))
    }

    async fn delete(&self, ctx: &Ctx, prior: &Obj, diags: &mut Diags) {
        let Some(client) = ctx.client(diags) else {
            return;
        };
        let Some(id) = required_str(prior, "id", diags) else {
            return;
        };
        ctx.cache.invalidate().await;
        diags.api_deleted(
            &format!("delete subscription {id:?}"),
            client.delete_subscription(id).await,
        );
    }
}
