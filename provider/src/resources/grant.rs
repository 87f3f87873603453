use std::sync::LazyLock;

use api::{CreateGrant, Grant, GrantStatus, HistoryFrom, RedactMode, UpdateGrant, rules};
use chrono::{DateTime, Utc};

use super::{
    Ctx, Resource, cached_get, check_str, ends_soon, filter, kept_text, parse_time, required_str,
    stored, time, when,
};
use crate::diag::Diags;
use crate::schema::{Attr, Schema, Ty};
use crate::value::{Obj, Value};

pub struct GrantResource;

static SCHEMA: LazyLock<Schema> =
    LazyLock::new(|| Schema {
        description: "Lets another team (the grantee) read an event you own. Destroying the grant \
                  revokes it: delivery to the grantee's streams stops at once. Grants on `pii` \
                  and `restricted` events must expire within 365 days.",
        attributes: vec![
        Attr::computed("id", Ty::String, "The grant's identifier, assigned by Fanner."),
        Attr::required("event", Ty::String, "The event to grant read access to.").force_new(),
        Attr::required(
            "grantee",
            Ty::String,
            "The principal (team) that may read the event.",
        )
        .force_new(),
        Attr::required(
            "reason",
            Ty::String,
            "Why the grantee needs the event. Kept in the audit trail; must not be empty.",
        ),
        Attr::optional(
            "expires_at",
            Ty::String,
            "When the grant stops (RFC 3339, e.g. `2027-06-30T00:00:00Z`). Required for `pii` \
             and `restricted` events, at most 365 days ahead.",
        ),
        Attr::optional_computed(
            "history_from",
            Ty::String,
            "The oldest history, by event time, the grantee may receive when a subscription \
             starts from the past (`start_from`) or replays: `unbounded`, or an RFC 3339 \
             instant. When not set, the grant's creation time: no history from before the \
             grant. Changed in place.",
        ),
        Attr::optional_computed(
            "redact",
            Ty::set_of_strings(),
            "Fields the grantee never sees, in every stream whose access comes from this grant: \
             `user_id`, `device_id`, `trace_id`, `producer`, `attributes.<key>`, \
             `payload.<key>[.<key>...]` (fields inside arrays of objects too; protobuf payloads \
             by the event's stored schema, by JSON names). A payload that is neither JSON nor \
             its schema's message is withheld whole when a `payload.` field is redacted. \
             Changed in place.",
        )
        .default(Vec::<String>::new()),
        Attr::optional_computed(
            "redact_mode",
            Ty::String,
            "`drop` (the field is removed) or `hash` (replaced by an HMAC-SHA-256 token, lowercase \
             hex, under a key Fanner keeps per grant: equal values give equal tokens, so the \
             grantee can still join on them). Changed in place.",
        )
        .default("drop"),
        Attr::optional_computed(
            "include_pii",
            Ty::set_of_strings(),
            "Fields the event's schema marks as PII (`(fanner.v1.field).pii`, stored by `fanner \
             catalog push`) that the grantee may see anyway, by the same paths as `redact` \
             (JSON names, e.g. `payload.email`). Every other PII field is redacted for the \
             grantee, with `redact_mode`. Changed in place.",
        )
        .default(Vec::<String>::new()),
        Attr::computed(
            "granted_by",
            Ty::String,
            "The principal whose token created the grant.",
        ),
        Attr::computed(
            "status",
            Ty::String,
            "`active`, or `expired` once `expires_at` has passed.",
        )
        .changes_on_update(),
        Attr::computed(
            "expired",
            Ty::Bool,
            "Whether `expires_at` has passed: an expired grant no longer lets the grantee read.",
        )
        .changes_on_update(),
        Attr::computed(
            "revision",
            Ty::Number,
            "Increases with every change to the grant.",
        )
        .changes_on_update(),
        Attr::computed(
            "created_at",
            Ty::String,
            "When the grant was made (RFC 3339).",
        ),
    ],
    });

static LIST_SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
    description: "Finds grants that are not revoked (active or expired), e.g. to adopt existing \
                  ones with `terraform query`.",
    attributes: vec![
        filter("event", "Only grants on this event."),
        filter("grantee", "Only grants to this principal (team)."),
    ],
});

/// The grant as state. `written` is the configuration or the prior state: its `expires_at` and
/// `history_from` texts are kept when they name the same instant as the API's.
fn state_of(grant: &Grant, written: Option<&Obj>) -> Obj {
    let written_text = |attr: &str| written.and_then(|w| w.str(attr));
    let mut state = SCHEMA.empty_object();
    state.set("id", grant.id.as_str());
    state.set("event", grant.event.as_str());
    state.set("grantee", grant.grantee.as_str());
    state.set("reason", grant.reason.as_str());
    let expires_at = match grant.expires_at {
        Some(at) => kept_text(
            written_text("expires_at"),
            |written| parse_time(written).ok().map(stored) == Some(at),
            time(&at),
        ),
        None => Value::Null,
    };
    state.set("expires_at", expires_at);
    state.set(
        "history_from",
        kept_text(
            written_text("history_from"),
            |written| parse_history(written).ok() == Some(grant.history_from),
            Value::String(grant.history_from.to_string()),
        ),
    );
    state.set("granted_by", grant.granted_by.as_str());
    state.set("redact", grant.redact.clone());
    state.set("redact_mode", grant.redact_mode.as_str());
    state.set("include_pii", grant.include_pii.clone());
    let status = match grant.status {
        GrantStatus::Active => "active",
        GrantStatus::Expired => "expired",
        GrantStatus::Revoked => "revoked",
    };
    state.set("status", status);
    state.set("expired", grant.status == GrantStatus::Expired);
    state.set("revision", grant.revision);
    state.set("created_at", time(&grant.created_at));
    state
}

/// `history_from` as the control plane stores it (instants to the millisecond).
fn parse_history(text: &str) -> Result<HistoryFrom, String> {
    Ok(match HistoryFrom::parse(text)? {
        HistoryFrom::At(at) => HistoryFrom::At(stored(at)),
        HistoryFrom::Unbounded => HistoryFrom::Unbounded,
    })
}

/// The configured `history_from` when it differs from `prior`'s (all of it on a create).
fn history_change(
    prior: Option<&Obj>,
    planned: &Obj,
    diags: &mut Diags,
) -> Result<Option<HistoryFrom>, ()> {
    let value = planned.get("history_from");
    if prior.is_some_and(|p| p.get("history_from") == value) {
        return Ok(None);
    }
    match value.as_str() {
        None => Ok(None),
        Some(text) => parse_history(text).map(Some).map_err(|problem| {
            diags.error_at("history_from", "Invalid history_from", problem);
        }),
    }
}

/// The redaction settings of a planned grant.
fn redaction(obj: &Obj) -> (Vec<String>, RedactMode, Vec<String>) {
    (
        obj.get("redact").as_strings().unwrap_or_default(),
        obj.str("redact_mode")
            .and_then(RedactMode::parse)
            .unwrap_or_default(),
        obj.get("include_pii").as_strings().unwrap_or_default(),
    )
}

fn expiry(obj: &Obj, diags: &mut Diags) -> Result<Option<DateTime<Utc>>, ()> {
    match obj.str("expires_at") {
        None => Ok(None),
        Some(text) => match parse_time(text) {
            Ok(at) => Ok(Some(at)),
            Err(problem) => {
                diags.error_at("expires_at", "Invalid expires_at", problem);
                Err(())
            }
        },
    }
}

#[tonic::async_trait]
impl Resource for GrantResource {
    fn type_name(&self) -> &'static str {
        "fanner_grant"
    }

    fn schema(&self) -> &Schema {
        &SCHEMA
    }

    fn import_id_kind(&self) -> &'static str {
        "the grant's id"
    }

    fn identity_attr(&self) -> &'static str {
        "id"
    }

    fn list_schema(&self) -> &Schema {
        &LIST_SCHEMA
    }

    fn validate_list(&self, config: &Obj, diags: &mut Diags) {
        check_str(config, "event", diags, |v| rules::check_name("event", v));
        check_str(config, "grantee", diags, |v| {
            rules::check_name("principal", v)
        });
    }

    async fn list(&self, ctx: &Ctx, config: &Obj, diags: &mut Diags) -> Vec<Obj> {
        let Some(client) = ctx.client(diags) else {
            return Vec::new();
        };
        let grants = diags
            .api_value(
                "list grants",
                client
                    .list_grants(config.str("event"), config.str("grantee"))
                    .await,
            )
            .unwrap_or_default();
        grants
            .iter()
            // A revoked grant is gone for Terraform (see `read`).
            .filter(|g| g.status != GrantStatus::Revoked)
            .map(|g| state_of(g, None))
            .collect()
    }

    fn validate(&self, config: &Obj, diags: &mut Diags) {
        check_str(config, "event", diags, |v| rules::check_name("event", v));
        check_str(config, "grantee", diags, |v| {
            rules::check_name("principal", v)
        });
        check_str(config, "reason", diags, rules::check_reason);
        check_str(config, "expires_at", diags, |v| parse_time(v).map(|_| ()));
        check_str(config, "history_from", diags, |v| {
            parse_history(v).map(|_| ())
        });
        check_str(config, "redact_mode", diags, |v| {
            match RedactMode::parse(v) {
                Some(_) => Ok(()),
                None => Err(format!(
                    "redact_mode must be \"drop\" or \"hash\", not {v:?}"
                )),
            }
        });
        for attr in ["redact", "include_pii"] {
            if let Some(paths) = config.get(attr).as_strings()
                && let Err(problem) = rules::redact::normalize_paths(attr, &paths)
            {
                diags.error_at(attr, format!("Invalid {attr}"), problem);
            }
        }
    }

    /// When the expiry is new or changes, checks it against the event's classification now, so
    /// `terraform plan` says what the apply would be refused for.
    async fn adjust_plan(
        &self,
        ctx: &Ctx,
        prior: Option<&Obj>,
        planned: &mut Obj,
        diags: &mut Diags,
    ) {
        let expiry_changed = prior.is_none_or(|p| p.get("expires_at") != planned.get("expires_at"));
        if expiry_changed
            && let (Some(event), Some(grantee)) = (planned.str("event"), planned.str("grantee"))
        {
            ctx.pending.add_grant(event, grantee);
        }
        let expires_at = planned.get("expires_at");
        if !expiry_changed || !expires_at.is_wholly_known() {
            return;
        }
        let Ok(expires_at) = expiry(planned, diags) else {
            return;
        };
        let now = Utc::now();
        if let Some(at) = expires_at
            && at <= now
        {
            diags.error_at(
                "expires_at",
                "Invalid expires_at",
                format!("expires_at {} is not in the future", at.to_rfc3339()),
            );
            return;
        }
        let (Some(event), Some(client)) = (planned.str("event"), ctx.client(&mut Diags::default()))
        else {
            return;
        };
        // The event may be created by this same apply: then the server checks at apply time.
        if let Ok(Some(event)) = super::event::lookup(ctx, client, event).await
            && let Err(problem) = rules::check_grant_expiry(event.classification, expires_at, now)
        {
            diags.error_at("expires_at", "Invalid expires_at", problem);
        }
    }

    /// Expiring access shows where engineers look: every plan warns while the grant ends within
    /// `expiry_warning_days`, and once it has ended.
    async fn plan_warnings(&self, ctx: &Ctx, planned: &Obj, diags: &mut Diags) {
        let Some(at) = planned.str("expires_at").and_then(|t| parse_time(t).ok()) else {
            return;
        };
        if ctx.expiry_warning <= chrono::Duration::zero() {
            return;
        }
        let now = Utc::now();
        let (event, grantee) = (
            planned.str("event").unwrap_or_default(),
            planned.str("grantee").unwrap_or_default(),
        );
        if at <= now {
            diags.warning_at(
                "expires_at",
                format!(
                    "Grant of {event:?} to {grantee:?} expired {}",
                    when(at, now)
                ),
                format!(
                    "{grantee:?} no longer receives {event:?}. Set a later expires_at to renew the \
                     grant, or remove it."
                ),
            );
        } else if ends_soon(ctx, at, now) {
            diags.warning_at(
                "expires_at",
                format!(
                    "Grant of {event:?} to {grantee:?} expires {}",
                    when(at, now)
                ),
                format!(
                    "Delivery of {event:?} to {grantee:?}'s streams stops then. Set a later \
                     expires_at to renew the grant. (This warning covers grants ending within \
                     the provider's expiry_warning_days, {} days.)",
                    ctx.expiry_warning.num_days()
                ),
            );
        }
    }

    async fn read(&self, ctx: &Ctx, state: &Obj, diags: &mut Diags) -> Option<Obj> {
        let client = ctx.client(diags)?;
        let id = required_str(state, "id", diags)?;
        let found = cached_get(
            &ctx.cache.grants,
            id,
            || client.list_grants(None, None),
            |g| g.id.clone(),
            || client.get_grant(id),
        )
        .await;
        match found {
            // A revoked grant is gone for good: plan to make a new one.
            Ok(Some(grant)) if grant.status == GrantStatus::Revoked => None,
            Ok(Some(grant)) => Some(state_of(&grant, Some(state))),
            Ok(None) => None,
            Err(e) => {
                diags.api(&format!("read grant {id:?}"), &e);
                None
            }
        }
    }

    async fn create(&self, ctx: &Ctx, planned: &Obj, diags: &mut Diags) -> Option<Obj> {
        let client = ctx.client(diags)?;
        let event = required_str(planned, "event", diags)?;
        let grantee = required_str(planned, "grantee", diags)?;
        let reason = required_str(planned, "reason", diags)?;
        let expires_at = expiry(planned, diags).ok()?;
        let history_from = history_change(None, planned, diags).ok()?;
        let (redact, redact_mode, include_pii) = redaction(planned);
        let body = CreateGrant {
            event: event.to_owned(),
            grantee: grantee.to_owned(),
            reason: reason.to_owned(),
            expires_at,
            history_from,
            redact,
            redact_mode,
            include_pii,
        };
        ctx.cache.invalidate().await;
        diags
            .api_value(
                &format!("grant event {event:?} to {grantee:?}"),
                client.create_grant(&body).await,
            )
            .map(|grant| state_of(&grant, Some(planned)))
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
        let reason = required_str(planned, "reason", diags)?;
        let expires_at = expiry(planned, diags).ok()?;
        let history_from = history_change(Some(prior), planned, diags).ok()?;
        let (redact, redact_mode, include_pii) = redaction(planned);
        let body = UpdateGrant {
            reason: reason.to_owned(),
            expires_at,
            history_from,
            revision: prior.get("revision").as_i64(),
            redact,
            redact_mode,
            include_pii,
        };
        ctx.cache.invalidate().await;
        diags
            .api_value(
                &format!("update grant {id:?}"),
                client.update_grant(id, &body).await,
            )
            .map(|grant| state_of(&grant, Some(planned)))
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
            &format!("revoke grant {id:?}"),
            client.revoke_grant(id).await,
        );
    }
}

/// One grant as the access data source lists it.
pub fn access_entry(grant: &Grant) -> Value {
    let mut entry = Obj::default();
    entry.set("id", grant.id.as_str());
    entry.set("grantee", grant.grantee.as_str());
    entry.set("reason", grant.reason.as_str());
    entry.set("granted_by", grant.granted_by.as_str());
    entry.set("created_at", time(&grant.created_at));
    entry.set(
        "expires_at",
        grant.expires_at.as_ref().map_or(Value::Null, time),
    );
    entry.set(
        "revoked_at",
        grant.revoked_at.as_ref().map_or(Value::Null, time),
    );
    entry.set("history_from", grant.history_from.to_string());
    let status = match grant.status {
        GrantStatus::Active => "active",
        GrantStatus::Expired => "expired",
        GrantStatus::Revoked => "revoked",
    };
    entry.set("status", status);
    entry.set("redact", grant.redact.clone());
    entry.set("redact_mode", grant.redact_mode.as_str());
    entry.set("include_pii", grant.include_pii.clone());
    entry.into_value()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(expires_at: &str) -> Grant {
        let at = parse_time(expires_at).expect("valid");
        Grant {
            id: "g1".to_owned(),
            event: "user_signed_up".to_owned(),
            grantee: "fraud".to_owned(),
            reason: "Fraud scoring.".to_owned(),
            granted_by: "growth".to_owned(),
            created_at: at,
            expires_at: Some(at),
            revoked_at: None,
            revoked_by: None,
            status: GrantStatus::Active,
            revision: 1,
            history_from: api::HistoryFrom::Unbounded,
            redact: Vec::new(),
            redact_mode: RedactMode::Drop,
            include_pii: Vec::new(),
        }
    }

    #[test]
    fn the_written_expiry_survives_when_it_names_the_same_instant() {
        #[track_caller]
        fn check(api: &str, written: Option<&str>, expected: &str) {
            let mut config = SCHEMA.empty_object();
            config.set("expires_at", Value::opt_string(written));
            let state = state_of(&grant(api), Some(&config));
            assert_eq!(state.get("expires_at"), &Value::string(expected));
        }
        check(
            "2027-06-30T00:00:00Z",
            Some("2027-06-30T02:00:00+02:00"),
            "2027-06-30T02:00:00+02:00",
        );
        check(
            "2027-06-30T00:00:00Z",
            Some("2027-06-30T00:00:00.000Z"),
            "2027-06-30T00:00:00.000Z",
        );
        check(
            "2027-06-30T00:00:00Z",
            Some("2027-07-01T00:00:00Z"),
            "2027-06-30T00:00:00Z",
        );
        check(
            "2027-06-30T00:00:00Z",
            Some("not a time"),
            "2027-06-30T00:00:00Z",
        );
        check("2027-06-30T00:00:00Z", None, "2027-06-30T00:00:00Z");
    }

    #[test]
    fn the_written_history_bound_survives_when_it_names_the_same_bound() {
        #[track_caller]
        fn check(api: &str, written: Option<&str>, expected: &str) {
            let mut api_grant = grant("2027-06-30T00:00:00Z");
            api_grant.history_from = parse_history(api).expect("valid");
            let mut config = SCHEMA.empty_object();
            config.set("history_from", Value::opt_string(written));
            let state = state_of(&api_grant, Some(&config));
            assert_eq!(state.get("history_from"), &Value::string(expected));
        }
        check("unbounded", Some("unbounded"), "unbounded");
        check("unbounded", None, "unbounded");
        check(
            "2026-01-01T00:00:00Z",
            Some("2026-01-01T01:00:00+01:00"),
            "2026-01-01T01:00:00+01:00",
        );
        check(
            "2026-01-01T00:00:00.250Z",
            Some("2026-01-01T00:00:00.250999Z"),
            "2026-01-01T00:00:00.250999Z",
        );
        check(
            "2026-01-01T00:00:00Z",
            Some("unbounded"),
            "2026-01-01T00:00:00Z",
        );
        check("2026-01-01T00:00:00Z", None, "2026-01-01T00:00:00Z");
    }

    #[test]
    fn history_from_is_sent_only_when_it_changes() {
        let with = |text: Option<&str>| {
            let mut obj = SCHEMA.empty_object();
            obj.set("history_from", text.map_or(Value::Unknown, Value::string));
            obj
        };
        let mut diags = Diags::default();
        let prior = with(Some("2026-01-01T00:00:00Z"));
        assert_eq!(history_change(Some(&prior), &prior, &mut diags), Ok(None));
        assert_eq!(
            history_change(Some(&prior), &with(Some("unbounded")), &mut diags),
            Ok(Some(HistoryFrom::Unbounded))
        );
        // Not configured on a create: the control plane's default, the creation time.
        assert_eq!(history_change(None, &with(None), &mut diags), Ok(None));
        assert!(!diags.has_errors());
        assert_eq!(
            history_change(None, &with(Some("yesterday")), &mut diags),
            Err(())
        );
        assert!(diags.has_errors());
    }

    #[tokio::test]
    async fn plans_warn_about_grants_ending_within_the_window() {
        async fn warnings(days_ahead: i64, window_days: i64) -> Vec<String> {
            let ctx = Ctx::new(Err("offline".to_owned()), window_days);
            let at = Utc::now() + chrono::Duration::days(days_ahead);
            let mut planned = state_of(&grant("2027-06-30T00:00:00Z"), None);
            planned.set("expires_at", time(&at));
            let mut diags = Diags::default();
            GrantResource
                .plan_warnings(&ctx, &planned, &mut diags)
                .await;
            assert!(!diags.has_errors());
            diags
                .into_vec()
                .into_iter()
                .map(|d| {
                    assert_eq!(d.attribute, Some(crate::diag::path("expires_at")));
                    assert!(d.summary.contains(&at.format("%Y-%m-%d").to_string()));
                    d.summary
                })
                .collect()
        }
        assert_eq!(warnings(30, 14).await, Vec::<String>::new());
        let soon = warnings(10, 14).await;
        assert!(
            soon.len() == 1 && soon[0].contains("expires on"),
            "{soon:?}"
        );
        assert_eq!(warnings(10, 0).await, Vec::<String>::new());
        let past = warnings(-1, 14).await;
        assert!(
            past.len() == 1 && past[0].contains("expired on"),
            "{past:?}"
        );
        assert_eq!(warnings(-1, 0).await, Vec::<String>::new());
    }

    #[test]
    fn revoked_and_expired_grants_have_their_status() {
        let mut expired = grant("2027-06-30T00:00:00Z");
        expired.status = GrantStatus::Expired;
        let state = state_of(&expired, None);
        assert_eq!(state.get("status"), &Value::string("expired"));
        assert_eq!(state.get("expired"), &Value::Bool(true));
    }
}
