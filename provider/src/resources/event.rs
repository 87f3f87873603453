use std::sync::LazyLock;

use api::{Classification, CreateEvent, Event, UpdateEvent, rules};

use super::{Ctx, Resource, cached_get, check_str, filter, passes, required_str, time};
use crate::diag::Diags;
use crate::schema::{Attr, Schema, Ty};
use crate::value::Obj;

pub struct EventResource;

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
    description: "An event type in the Fanner catalog. The team whose token creates it owns it: \
                  only the owner may change it, and other teams read it through a `fanner_grant`.",
    attributes: vec![
        Attr::computed("id", Ty::String, "The event's name."),
        Attr::required(
            "name",
            Ty::String,
            "The event's name, e.g. `user_signed_up`: a lowercase letter, then up to 127 lowercase \
             letters, digits, `_`, `.` or `-`.",
        )
        .force_new(),
        Attr::required(
            "classification",
            Ty::String,
            "How sensitive the event's data is: `public`, `internal`, `pii` or `restricted`. \
             Grants on `pii` and `restricted` events must expire within 365 days.",
        ),
        Attr::optional_computed(
            "description",
            Ty::String,
            "What the event means, for the teams that consume it (Markdown, at most 4096 bytes).",
        )
        .default(""),
        Attr::optional_computed(
            "owner",
            Ty::String,
            "The principal (team) that owns the event. Defaults to the token's principal; only an \
             admin token may register an event on behalf of another team.",
        )
        .force_new(),
        Attr::computed(
            "revision",
            Ty::Number,
            "Increases with every change to the event.",
        )
        .changes_on_update(),
        Attr::computed(
            "created_at",
            Ty::String,
            "When the event was registered (RFC 3339).",
        ),
        Attr::computed(
            "updated_at",
            Ty::String,
            "When the event last changed (RFC 3339).",
        )
        .changes_on_update(),
    ],
});

static LIST_SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
    description: "Finds events in the catalog, e.g. to adopt existing ones with `terraform query`.",
    attributes: vec![
        filter("owner", "Only events this principal (team) owns."),
        filter(
            "classification",
            "Only events of this classification: `public`, `internal`, `pii` or `restricted`.",
        ),
    ],
});

pub fn classification_problem(value: &str) -> Result<(), String> {
    match Classification::parse(value) {
        Some(_) => Ok(()),
        None => Err(format!(
            "classification {value:?} is not one of {}",
            Classification::ALL
                .map(|c| format!("{:?}", c.as_str()))
                .join(", ")
        )),
    }
}

pub fn state_of(event: &Event) -> Obj {
    let mut state = SCHEMA.empty_object();
    state.set("id", event.name.as_str());
    state.set("name", event.name.as_str());
    state.set("classification", event.classification.as_str());
    state.set("description", event.description.as_str());
    state.set("owner", event.owner.as_str());
    state.set("revision", event.revision);
    state.set("created_at", time(&event.created_at));
    state.set("updated_at", time(&event.updated_at));
    state
}

/// The event as the cached catalog (or a direct get) shows it.
pub async fn lookup(
    ctx: &Ctx,
    client: &api::Client,
    name: &str,
) -> Result<Option<Event>, api::ClientError> {
    cached_get(
        &ctx.cache.events,
        name,
        || client.list_events(),
        |e| e.name.clone(),
        || client.get_event(name),
    )
    .await
}

fn classification(obj: &Obj, diags: &mut Diags) -> Option<Classification> {
    let value = required_str(obj, "classification", diags)?;
    let parsed = Classification::parse(value);
    if parsed.is_none() {
        diags.error_at(
            "classification",
            "Invalid classification",
            classification_problem(value).err().unwrap_or_default(),
        );
    }
    parsed
}

#[tonic::async_trait]
impl Resource for EventResource {
    fn type_name(&self) -> &'static str {
        "fanner_event"
    }

    fn schema(&self) -> &Schema {
        &SCHEMA
    }

    fn import_id_kind(&self) -> &'static str {
        "the event's name"
    }

    fn identity_attr(&self) -> &'static str {
        "name"
    }

    fn list_schema(&self) -> &Schema {
        &LIST_SCHEMA
    }

    fn validate_list(&self, config: &Obj, diags: &mut Diags) {
        check_str(config, "owner", diags, |v| {
            rules::check_name("principal", v)
        });
        check_str(config, "classification", diags, classification_problem);
    }

    async fn list(&self, ctx: &Ctx, config: &Obj, diags: &mut Diags) -> Vec<Obj> {
        let Some(client) = ctx.client(diags) else {
            return Vec::new();
        };
        let events = diags
            .api_value("list events", client.list_events().await)
            .unwrap_or_default();
        events
            .iter()
            .filter(|e| {
                passes(config, "owner", &e.owner)
                    && passes(config, "classification", e.classification.as_str())
            })
            .map(state_of)
            .collect()
    }

    fn validate(&self, config: &Obj, diags: &mut Diags) {
        check_str(config, "name", diags, |v| rules::check_name("event", v));
        check_str(config, "classification", diags, classification_problem);
        check_str(config, "description", diags, rules::check_description);
        check_str(config, "owner", diags, |v| {
            rules::check_name("principal", v)
        });
    }

    async fn adjust_plan(
        &self,
        ctx: &Ctx,
        prior: Option<&Obj>,
        planned: &mut Obj,
        _diags: &mut Diags,
    ) {
        if prior.is_none()
            && let Some(name) = planned.str("name").map(str::to_owned)
        {
            ctx.pending.add_event(&name);
            planned.set("id", name);
        }
    }

    async fn read(&self, ctx: &Ctx, state: &Obj, diags: &mut Diags) -> Option<Obj> {
        let client = ctx.client(diags)?;
        let name = required_str(state, "id", diags)?;
        diags
            .api_value(
                &format!("read event {name:?}"),
                lookup(ctx, client, name).await,
            )?
            .as_ref()
            .map(state_of)
    }

    async fn create(&self, ctx: &Ctx, planned: &Obj, diags: &mut Diags) -> Option<Obj> {
        let client = ctx.client(diags)?;
        let name = required_str(planned, "name", diags)?;
        let classification = classification(planned, diags)?;
        let body = CreateEvent {
            name: name.to_owned(),
            classification,
            description: planned.str("description").unwrap_or_default().to_owned(),
            owner: planned.str("owner").map(str::to_owned),
        };
        ctx.cache.invalidate().await;
        diags
            .api_value(
                &format!("create event {name:?}"),
                client.create_event(&body).await,
            )
            .map(|event| state_of(&event))
    }

    async fn update(
        &self,
        ctx: &Ctx,
        prior: &Obj,
        planned: &Obj,
        diags: &mut Diags,
    ) -> Option<Obj> {
        let client = ctx.client(diags)?;
        let name = required_str(prior, "id", diags)?;
        let classification = classification(planned, diags)?;
        let body = UpdateEvent {
            classification,
            description: planned.str("description").unwrap_or_default().to_owned(),
            revision: prior.get("revision").as_i64(),
        };
        ctx.cache.invalidate().await;
        diags
            .api_value(
                &format!("update event {name:?}"),
                client.update_event(name, &body).await,
            )
            .map(|event| state_of(&event))
    }

    async fn delete(&self, ctx: &Ctx, prior: &Obj, diags: &mut Diags) {
        let Some(client) = ctx.client(diags) else {
            return;
        };
        let Some(name) = required_str(prior, "id", diags) else {
            return;
        };
        ctx.cache.invalidate().await;
        diags.api_deleted(
            &format!("delete event {name:?}"),
            client.delete_event(name).await,
        );
    }
}

/// The data source's view of an event: the same attributes, all computed but `name`.
pub fn data_source_schema() -> Schema {
    Schema {
        description: "Looks up one event of the Fanner catalog by name, e.g. to check its \
                      classification before granting it.",
        attributes: SCHEMA
            .attributes
            .iter()
            .map(|a| match a.name {
                "name" => Attr::required(a.name, a.ty.clone(), "The event's name."),
                _ => Attr::computed(a.name, a.ty.clone(), a.description),
            })
            .collect(),
    }
}
