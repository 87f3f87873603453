use std::sync::LazyLock;

use api::rules::filter::Filter;
use api::{
    AccessProblem, CreateSubscription, DeliveryFormat, DenialReason, GrantStatus, Hydration,
    StartFrom, Subscription, SubscriptionStatus, UpdateSubscription, rules,
};

use super::{
    Ctx, Resource, cached_get, check_str, ends_soon, filter, kept_text, passes, required_str,
    stored, time, when,
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
        Attr::optional_computed(
            "start_from",
            Ty::String,
            "Where delivery begins, by event time: `now` (live events only), `earliest` (every \
             event the lake and the global event stream hold), or an RFC 3339 instant. The \
             stream first receives the history since then that its owner may read (each grant \
             bounds it by its `history_from`), then live events, with no gap and no duplicate; \
             replayed envelopes carry a `history_id`. Changing it on an existing subscription \
             is an in-place update that **replays the history since the new value into the \
             stream**, beside live delivery (the plan warns); `now` replays nothing.",
        )
        .default("now"),
        Attr::computed_object(
            "hydration",
            vec![
                Attr::computed(
                    "state",
                    Ty::String,
                    "`none` (no history asked for), `pending`, `running`, `done` or `failed`.",
                ),
                Attr::computed(
                    "from",
                    Ty::String,
                    "The oldest event time delivered: an RFC 3339 instant or `earliest`; null \
                     without history.",
                ),
                Attr::computed(
                    "events_delivered",
                    Ty::Number,
                    "History events written into the stream so far.",
                ),
                Attr::computed(
                    "error",
                    Ty::String,
                    "Why the history could not be delivered; null unless `state` is `failed`.",
                ),
            ],
            "The newest history delivery into the stream (the hydration `start_from` asked for, \
             or a later replay) and its progress, as of the last refresh. Progress alone never \
             plans a change.",
        )
        .changes_on_update(),
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

/// The subscription as state; `written` (the configuration or the prior state) keeps its
/// `start_from` text when it names the same start as the API's, and its filter text when it is
/// the same pattern, so formatting never shows as a diff.
fn state_of(subscription: &Subscription, written: Option<&Obj>) -> Obj {
    let mut state = SCHEMA.empty_object();
    state.set("id", subscription.id.as_str());
    state.set("stream", subscription.stream.as_str());
    state.set("events", subscription.events.clone());
    state.set(
        "start_from",
        kept_text(
            written.and_then(|w| w.str("start_from")),
            |text| parse_start(text).ok() == Some(subscription.start_from),
            Value::String(subscription.start_from.to_string()),
        ),
    );
    state.set("hydration", hydration_value(&subscription.hydration));
    let filter = match (&subscription.filter, written.and_then(|w| w.str("filter"))) {
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

/// `start_from` as the control plane stores it (instants to the millisecond).
fn parse_start(text: &str) -> Result<StartFrom, String> {
    Ok(match StartFrom::parse(text)? {
        StartFrom::At(at) => StartFrom::At(stored(at)),
        other => other,
    })
}

fn hydration_value(hydration: &Hydration) -> Value {
    let mut object = Obj::default();
    object.set("state", hydration.state.as_str());
    let from = match (&hydration.id, &hydration.from) {
        (None, _) => Value::Null,
        (Some(_), Some(at)) => time(at),
        (Some(_), None) => Value::string("earliest"),
    };
    object.set("from", from);
    object.set(
        "events_delivered",
        i64::try_from(hydration.events_delivered).unwrap_or(i64::MAX),
    );
    object.set("error", Value::opt_string(hydration.error.as_deref()));
    object.into_value()
}

/// The configured `start_from` when it differs from `prior`'s (all of it on a create).
fn start_change(
    prior: Option<&Obj>,
    planned: &Obj,
    diags: &mut Diags,
) -> Result<Option<StartFrom>, ()> {
    let value = planned.get("start_from");
    if prior.is_some_and(|p| p.get("start_from") == value) {
        return Ok(None);
    }
    match value.as_str() {
        None => Ok(None),
        Some(text) => parse_start(text).map(Some).map_err(|problem| {
            diags.error_at("start_from", "Invalid start_from", problem);
        }),
    }
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
        check_str(config, "start_from", diags, |v| parse_start(v).map(|_| ()));
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
        if let Some(prior) = prior {
            warn_of_replay(prior, planned, diags);
        }
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
            .map(|s| state_of(s, Some(state)))
    }

    async fn create(&self, ctx: &Ctx, planned: &Obj, diags: &mut Diags) -> Option<Obj> {
        let client = ctx.client(diags)?;
        let stream = required_str(planned, "stream", diags)?;
        let events = events(planned, diags)?;
        let start_from = start_change(None, planned, diags).ok()?;
        let (filter, delivery_format) = gatekeeping(planned, diags)?;
        let body = CreateSubscription {
            stream: stream.to_owned(),
            events,
            start_from,
            filter,
            delivery_format,
        };
        ctx.cache.invalidate().await;
        diags
            .api_value(
                &format!("subscribe stream {stream:?}"),
                client.create_subscription(&body).await,
            )
            .map(|subscription| state_of(&subscription, Some(planned)))
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
        let start_from = start_change(Some(prior), planned, diags).ok()?;
        let (filter, delivery_format) = gatekeeping(planned, diags)?;
        let body = UpdateSubscription {
            events,
            start_from,
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
            .map(|subscription| state_of(&subscription, Some(planned)))
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

/// Says in the plan what applying a new `start_from` does: it replays history into the stream.
fn warn_of_replay(prior: &Obj, planned: &Obj, diags: &mut Diags) {
    let Some(text) = planned.str("start_from") else {
        return;
    };
    if prior.get("start_from") == planned.get("start_from") {
        return;
    }
    let Ok(start) = parse_start(text) else {
        return;
    };
    let same = prior
        .str("start_from")
        .and_then(|p| parse_start(p).ok())
        .is_some_and(|p| p == start);
    if same || start == StartFrom::Now {
        return;
    }
    let stream = planned.str("stream").unwrap_or("the stream");
    let since = match start {
        StartFrom::Earliest => "the earliest event held".to_owned(),
        other => other.to_string(),
    };
    diags.warning_at(
        "start_from",
        format!("Applying replays history since {since} into stream {stream:?}"),
        format!(
            "start_from changes to {text:?}: the apply re-delivers every event since {since} (by \
             event time) that the stream's owner may read, beside live delivery. Consumers see \
             the replayed envelopes marked with a history_id and may get events they already \
             had; they can deduplicate by event_id. Follow the progress in the hydration \
             attribute or with `fanner subscription show`."
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscription(start_from: StartFrom, hydration: Hydration) -> Subscription {
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
            .expect("valid")
            .to_utc();
        Subscription {
            id: "s1".to_owned(),
            stream: "fraud-signals".to_owned(),
            owner: "fraud".to_owned(),
            events: vec!["user_signed_up".to_owned()],
            status: SubscriptionStatus::Active,
            status_reason: None,
            start_from,
            hydration,
            revision: 1,
            created_at: at,
            updated_at: at,
            delivery_format: Default::default(),
            filter: Default::default(),
        }
    }

    fn with_start(text: &str) -> Obj {
        let mut obj = SCHEMA.empty_object();
        obj.set("stream", "fraud-signals");
        obj.set("start_from", text);
        obj
    }

    #[test]
    fn the_written_start_survives_when_it_names_the_same_start() {
        #[track_caller]
        fn check(api: &str, written: Option<&str>, expected: &str) {
            let start = parse_start(api).expect("valid");
            let written = written.map(with_start);
            let state = state_of(&subscription(start, Hydration::default()), written.as_ref());
            assert_eq!(state.get("start_from"), &Value::string(expected));
        }
        check(
            "2026-06-30T00:00:00Z",
            Some("2026-06-30T02:00:00+02:00"),
            "2026-06-30T02:00:00+02:00",
        );
        // The control plane keeps milliseconds: finer digits are the same start.
        check(
            "2026-06-30T00:00:00.123Z",
            Some("2026-06-30T00:00:00.123456Z"),
            "2026-06-30T00:00:00.123456Z",
        );
        check(
            "2026-06-30T00:00:00Z",
            Some("2026-07-01T00:00:00Z"),
            "2026-06-30T00:00:00Z",
        );
        check("earliest", Some("now"), "earliest");
        check("earliest", Some("not a start"), "earliest");
        check("now", None, "now");
    }

    #[test]
    fn hydration_shows_its_progress_and_where_it_began() {
        #[track_caller]
        fn check(hydration: Hydration, state: &str, from: Value, delivered: i64) {
            let value = hydration_value(&hydration);
            let object = value.as_map().expect("an object");
            assert_eq!(object["state"], Value::string(state));
            assert_eq!(object["from"], from);
            assert_eq!(object["events_delivered"], Value::Int(delivered));
        }
        check(Hydration::default(), "none", Value::Null, 0);
        let running = Hydration {
            id: Some("h1".to_owned()),
            state: api::HydrationState::Running,
            events_delivered: 1200,
            ..Hydration::default()
        };
        check(running.clone(), "running", Value::string("earliest"), 1200);
        let at = crate::resources::parse_time("2026-06-30T00:00:00.5Z").expect("valid");
        let failed = Hydration {
            from: Some(at),
            state: api::HydrationState::Failed,
            error: Some("the lake lacks an object".to_owned()),
            ..running
        };
        let value = hydration_value(&failed);
        assert_eq!(
            value.as_map().expect("an object")["error"],
            Value::string("the lake lacks an object")
        );
        check(
            failed,
            "failed",
            Value::string("2026-06-30T00:00:00.500Z"),
            1200,
        );
    }

    #[test]
    fn a_new_start_warns_that_the_apply_replays() {
        #[track_caller]
        fn check(prior: &str, planned: &str, expected: Option<&str>) {
            let mut diags = Diags::default();
            warn_of_replay(&with_start(prior), &with_start(planned), &mut diags);
            let found: Vec<_> = diags.into_vec();
            match expected {
                None => assert!(found.is_empty(), "{prior} → {planned}: {found:?}"),
                Some(summary) => {
                    assert_eq!(found.len(), 1, "{prior} → {planned}");
                    assert_eq!(found[0].summary, summary);
                    assert_eq!(found[0].attribute, Some(crate::diag::path("start_from")));
                }
            }
        }
        check(
            "now",
            "earliest",
            Some(
                "Applying replays history since the earliest event held into stream \
                 \"fraud-signals\"",
            ),
        );
        check(
            "earliest",
            "2026-06-30T00:00:00Z",
            Some(
                "Applying replays history since 2026-06-30T00:00:00Z into stream \"fraud-signals\"",
            ),
        );
        check("earliest", "now", None);
        check("2026-06-30T00:00:00Z", "2026-06-30T02:00:00+02:00", None);
        check("earliest", "earliest", None);
    }
}
