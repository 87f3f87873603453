use std::collections::BTreeMap;
use std::sync::LazyLock;

use api::{CreateStream, Stream, UpdateStream, rules};

use super::{
    Ctx, Resource, cached_get, check_str, check_u32, filter, passes, required_str, time, u32_of,
};
use crate::diag::Diags;
use crate::schema::{Attr, Schema, Ty};
use crate::value::Obj;

pub struct StreamResource;

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
    description: "A consumer stream that Fanner fans events out to (a Kinesis stream, or the \
                  embedded backend under `fanner serve`). Your team owns it; a \
                  `fanner_subscription` says which events it receives.",
    attributes: vec![
        Attr::computed("id", Ty::String, "The stream's name."),
        Attr::required(
            "name",
            Ty::String,
            "The stream's name, e.g. `fraud-signals`: a lowercase letter, then up to 127 \
             lowercase letters, digits, `_`, `.` or `-`.",
        )
        .force_new(),
        Attr::optional_computed(
            "shard_count",
            Ty::Number,
            "How many shards the stream has (1 to 1024). Changed in place.",
        )
        .default(i64::from(rules::DEFAULT_SHARD_COUNT)),
        Attr::optional_computed(
            "retention_hours",
            Ty::Number,
            "How long records stay readable, in hours (24 to 8760). Changed in place.",
        )
        .default(i64::from(rules::DEFAULT_RETENTION_HOURS)),
        Attr::optional_computed(
            "tags",
            Ty::map_of_strings(),
            "Tags of the backing stream (at most 50). Changed in place.",
        )
        .default(BTreeMap::<String, String>::new()),
        Attr::computed(
            "owner",
            Ty::String,
            "The principal (team) that owns the stream.",
        ),
        Attr::computed(
            "status",
            Ty::String,
            "`active` once the backing stream exists and accepts writes.",
        )
        .changes_on_update(),
        Attr::computed(
            "backing_id",
            Ty::String,
            "The backend's identifier of the backing stream: its ARN on Kinesis.",
        ),
        Attr::computed(
            "revision",
            Ty::Number,
            "Increases with every change to the stream.",
        )
        .changes_on_update(),
        Attr::computed(
            "created_at",
            Ty::String,
            "When the stream was created (RFC 3339).",
        ),
        Attr::computed(
            "updated_at",
            Ty::String,
            "When the stream last changed (RFC 3339).",
        )
        .changes_on_update(),
    ],
});

static LIST_SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
    description: "Finds consumer streams, e.g. to adopt existing ones with `terraform query`.",
    attributes: vec![filter("owner", "Only streams this principal (team) owns.")],
});

fn state_of(stream: &Stream) -> Obj {
    let mut state = SCHEMA.empty_object();
    state.set("id", stream.name.as_str());
    state.set("name", stream.name.as_str());
    state.set("shard_count", stream.shard_count);
    state.set("retention_hours", stream.retention_hours);
    state.set("tags", stream.tags.clone());
    state.set("owner", stream.owner.as_str());
    state.set("status", stream.status.as_str());
    state.set("backing_id", stream.backing_id.as_str());
    state.set("revision", stream.revision);
    state.set("created_at", time(&stream.created_at));
    state.set("updated_at", time(&stream.updated_at));
    state
}

fn tags(obj: &Obj) -> BTreeMap<String, String> {
    obj.get("tags").as_string_map().unwrap_or_default()
}

#[tonic::async_trait]
impl Resource for StreamResource {
    fn type_name(&self) -> &'static str {
        "fanner_stream"
    }

    fn schema(&self) -> &Schema {
        &SCHEMA
    }

    fn import_id_kind(&self) -> &'static str {
        "the stream's name"
    }

    fn identity_attr(&self) -> &'static str {
        "name"
    }

    fn list_schema(&self) -> &Schema {
        &LIST_SCHEMA
    }

    async fn list(&self, ctx: &Ctx, config: &Obj, diags: &mut Diags) -> Vec<Obj> {
        let Some(client) = ctx.client(diags) else {
            return Vec::new();
        };
        let streams = diags
            .api_value("list streams", client.list_streams().await)
            .unwrap_or_default();
        streams
            .iter()
            .filter(|s| passes(config, "owner", &s.owner))
            .map(state_of)
            .collect()
    }

    fn validate_list(&self, config: &Obj, diags: &mut Diags) {
        check_str(config, "owner", diags, |v| {
            rules::check_name("principal", v)
        });
    }

    fn validate(&self, config: &Obj, diags: &mut Diags) {
        check_str(config, "name", diags, |v| rules::check_name("stream", v));
        check_u32(config, "shard_count", diags, rules::check_shard_count);
        check_u32(
            config,
            "retention_hours",
            diags,
            rules::check_retention_hours,
        );
        if let Some(tags) = config.get("tags").as_string_map()
            && let Err(problem) = rules::check_tags(tags.iter())
        {
            diags.error_at("tags", "Invalid tags", problem);
        }
    }

    async fn adjust_plan(
        &self,
        _ctx: &Ctx,
        prior: Option<&Obj>,
        planned: &mut Obj,
        _diags: &mut Diags,
    ) {
        if prior.is_none()
            && let Some(name) = planned.str("name").map(str::to_owned)
        {
            planned.set("id", name);
        }
    }

    async fn read(&self, ctx: &Ctx, state: &Obj, diags: &mut Diags) -> Option<Obj> {
        let client = ctx.client(diags)?;
        let name = required_str(state, "id", diags)?;
        let found = cached_get(
            &ctx.cache.streams,
            name,
            || client.list_streams(),
            |s| s.name.clone(),
            || client.get_stream(name),
        )
        .await;
        diags
            .api_value(&format!("read stream {name:?}"), found)?
            .as_ref()
            .map(state_of)
    }

    async fn create(&self, ctx: &Ctx, planned: &Obj, diags: &mut Diags) -> Option<Obj> {
        let client = ctx.client(diags)?;
        let name = required_str(planned, "name", diags)?;
        let body = CreateStream {
            name: name.to_owned(),
            shard_count: Some(u32_of(planned, "shard_count", rules::DEFAULT_SHARD_COUNT)),
            retention_hours: Some(u32_of(
                planned,
                "retention_hours",
                rules::DEFAULT_RETENTION_HOURS,
            )),
            tags: tags(planned),
        };
        ctx.cache.invalidate().await;
        diags
            .api_value(
                &format!("create stream {name:?}"),
                client.create_stream(&body).await,
            )
            .map(|stream| state_of(&stream))
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
        let body = UpdateStream {
            shard_count: u32_of(planned, "shard_count", rules::DEFAULT_SHARD_COUNT),
            retention_hours: u32_of(planned, "retention_hours", rules::DEFAULT_RETENTION_HOURS),
            tags: tags(planned),
            revision: prior.get("revision").as_i64(),
        };
        ctx.cache.invalidate().await;
        diags
            .api_value(
                &format!("update stream {name:?}"),
                client.update_stream(name, &body).await,
            )
            .map(|stream| state_of(&stream))
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
            &format!("delete stream {name:?}"),
            client.delete_stream(name).await,
        );
    }
}
