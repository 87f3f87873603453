//! The tfplugin6 `Provider` service: decodes Terraform's values, dispatches to the resource and
//! data-source modules, and turns every outcome into a response with diagnostics.

use std::sync::{Arc, LazyLock, RwLock};

use serde_json::json;
use tonic::{Request, Response, Status};

use crate::data_sources::{self, DataSource};
use crate::diag::{self, Diags};
use crate::resources::{self, Ctx, DEFAULT_EXPIRY_WARNING_DAYS, Resource};
use crate::schema::{Attr, Schema, Ty};
use crate::tfplugin6::{self as tf, provider_server::Provider};
use crate::value::{Obj, Value};

pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7878";

static PROVIDER_SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
    description: "Manages Fanner's event catalog, access grants, consumer streams and \
                  subscriptions through the control-plane API.",
    attributes: vec![
        Attr::optional(
            "endpoint",
            Ty::String,
            "The control plane's URL. Defaults to the `FANNER_ENDPOINT` environment variable, \
             then `http://127.0.0.1:7878` (what `fanner serve` listens on).",
        ),
        Attr::optional(
            "token",
            Ty::String,
            "The API token of the team Terraform acts for. Defaults to the `FANNER_TOKEN` \
             environment variable.",
        )
        .sensitive(),
        Attr::optional(
            "expiry_warning_days",
            Ty::Number,
            "Plans warn about a `fanner_grant` whose `expires_at` is at most this many days \
             away, and about a `fanner_subscription` whose events are read through such grants. \
             Defaults to `14`; `0` turns the warnings off.",
        ),
    ],
});

struct Registry {
    resources: Vec<Box<dyn Resource>>,
    data_sources: Vec<Box<dyn DataSource>>,
}

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| Registry {
    resources: resources::all(),
    data_sources: data_sources::all(),
});

fn resource(type_name: &str) -> Result<&'static dyn Resource, Status> {
    REGISTRY
        .resources
        .iter()
        .find(|r| r.type_name() == type_name)
        .map(|r| r.as_ref())
        .ok_or_else(|| Status::not_found(format!("no resource type {type_name:?}")))
}

fn data_source(type_name: &str) -> Result<&'static dyn DataSource, Status> {
    REGISTRY
        .data_sources
        .iter()
        .find(|d| d.type_name() == type_name)
        .map(|d| d.as_ref())
        .ok_or_else(|| Status::not_found(format!("no data source {type_name:?}")))
}

/// The provider's schemas as `terraform providers schema -json` prints them (for the docs).
pub fn schema_json() -> serde_json::Value {
    json!({
        "provider": PROVIDER_SCHEMA.json(),
        "resource_schemas": REGISTRY.resources.iter()
            .map(|r| (r.type_name().to_owned(), r.schema().json()))
            .collect::<serde_json::Map<_, _>>(),
        "data_source_schemas": REGISTRY.data_sources.iter()
            .map(|d| (d.type_name().to_owned(), d.schema().json()))
            .collect::<serde_json::Map<_, _>>(),
    })
}

/// Longest `expiry_warning_days` accepted: ten years.
const MAX_EXPIRY_WARNING_DAYS: u32 = 3650;

/// The identity Terraform stores beside the state: the identity attribute, holding the `id`.
fn identity_of(resource: &dyn Resource, state: &Obj) -> Option<tf::ResourceIdentityData> {
    let id = state.str("id")?;
    let mut identity = Obj::default();
    identity.set(resource.identity_attr(), id);
    Some(tf::ResourceIdentityData {
        identity_data: Some(identity.dynamic()),
    })
}

/// The `id` an identity names, or an error diagnostic saying what is missing.
fn id_from_identity(
    resource: &dyn Resource,
    identity: &tf::ResourceIdentityData,
    diags: &mut Diags,
) -> Option<String> {
    let attr = resource.identity_attr();
    let id = object(identity.identity_data.as_ref(), "identity", diags)
        .and_then(|identity| identity.str(attr).map(str::to_owned));
    if id.is_none() && !diags.has_errors() {
        diags.error(
            "Invalid identity",
            format!(
                "The identity of {} needs `{attr}` ({}).",
                resource.type_name(),
                resource.import_id_kind()
            ),
        );
    }
    id
}

/// Decodes an object value, or records why it cannot be.
fn object(value: Option<&tf::DynamicValue>, what: &str, diags: &mut Diags) -> Option<Obj> {
    match Value::from_dynamic(value).and_then(Obj::from_value) {
        Ok(obj) => obj,
        Err(e) => {
            diags.error(
                format!("Invalid {what} from Terraform"),
                format!("The provider cannot decode the {what}: {e}"),
            );
            None
        }
    }
}

fn null() -> Option<tf::DynamicValue> {
    Some(Value::Null.dynamic())
}

#[derive(Clone)]
pub struct FannerProvider {
    ctx: Arc<RwLock<Arc<Ctx>>>,
}

impl Default for FannerProvider {
    fn default() -> Self {
        FannerProvider {
            ctx: Arc::new(RwLock::new(Arc::new(Ctx::unconfigured()))),
        }
    }
}

impl FannerProvider {
    fn ctx(&self) -> Arc<Ctx> {
        match self.ctx.read() {
            Ok(ctx) => ctx.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_ctx(&self, ctx: Ctx) {
        match self.ctx.write() {
            Ok(mut slot) => *slot = Arc::new(ctx),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(ctx),
        }
    }
}

/// Resolves the provider configuration: attribute, then environment, then default.
fn client_from(config: &Obj) -> Result<api::Client, String> {
    for attr in ["endpoint", "token"] {
        if !config.get(attr).is_wholly_known() {
            return Err(format!(
                "The provider's `{attr}` depends on a value that is not known until apply. Set it \
                 from a variable or the environment, or apply the resources it depends on first \
                 (`terraform apply -target=...`)."
            ));
        }
    }
    let endpoint = config
        .str("endpoint")
        .map(str::to_owned)
        .or_else(|| {
            std::env::var("FANNER_ENDPOINT")
                .ok()
                .filter(|e| !e.is_empty())
        })
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
    let token = config
        .str("token")
        .map(str::to_owned)
        .or_else(|| std::env::var("FANNER_TOKEN").ok().filter(|t| !t.is_empty()));
    // A private CA for an https:// control plane, as for the `fanner` CLI.
    let ca = match std::env::var_os("FANNER_CA_CERT").filter(|p| !p.is_empty()) {
        Some(path) => Some(std::fs::read(&path).map_err(|e| {
            format!(
                "Cannot read FANNER_CA_CERT {}: {e}. Point it at the PEM file of the CA that \
                 signed the control plane's certificate.",
                std::path::Path::new(&path).display()
            )
        })?),
        None => None,
    };
    api::Client::trusting(&endpoint, token, ca.as_deref()).map_err(|e| diag::explain(&e))
}

#[tonic::async_trait]
impl Provider for FannerProvider {
    async fn get_metadata(
        &self,
        _request: Request<tf::get_metadata::Request>,
    ) -> Result<Response<tf::get_metadata::Response>, Status> {
        Ok(Response::new(tf::get_metadata::Response {
            server_capabilities: Some(capabilities()),
            resources: REGISTRY
                .resources
                .iter()
                .map(|r| tf::get_metadata::ResourceMetadata {
                    type_name: r.type_name().to_owned(),
                })
                .collect(),
            data_sources: REGISTRY
                .data_sources
                .iter()
                .map(|d| tf::get_metadata::DataSourceMetadata {
                    type_name: d.type_name().to_owned(),
                })
                .collect(),
            list_resources: REGISTRY
                .resources
                .iter()
                .map(|r| tf::get_metadata::ListResourceMetadata {
                    type_name: r.type_name().to_owned(),
                })
                .collect(),
            ..Default::default()
        }))
    }

    async fn get_provider_schema(
        &self,
        _request: Request<tf::get_provider_schema::Request>,
    ) -> Result<Response<tf::get_provider_schema::Response>, Status> {
        Ok(Response::new(tf::get_provider_schema::Response {
            provider: Some(PROVIDER_SCHEMA.proto()),
            resource_schemas: REGISTRY
                .resources
                .iter()
                .map(|r| (r.type_name().to_owned(), r.schema().proto()))
                .collect(),
            data_source_schemas: REGISTRY
                .data_sources
                .iter()
                .map(|d| (d.type_name().to_owned(), d.schema().proto()))
                .collect(),
            list_resource_schemas: REGISTRY
                .resources
                .iter()
                .map(|r| (r.type_name().to_owned(), r.list_schema().proto()))
                .collect(),
            server_capabilities: Some(capabilities()),
            ..Default::default()
        }))
    }

    async fn validate_provider_config(
        &self,
        request: Request<tf::validate_provider_config::Request>,
    ) -> Result<Response<tf::validate_provider_config::Response>, Status> {
        let mut diags = Diags::default();
        let config = object(
            request.get_ref().config.as_ref(),
            "provider configuration",
            &mut diags,
        )
        .unwrap_or_default();
        if let Some(endpoint) = config.str("endpoint")
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            diags.error_at(
                "endpoint",
                "Invalid endpoint",
                format!("endpoint {endpoint:?} must be an http:// or https:// URL"),
            );
        }
        resources::check_u32(&config, "expiry_warning_days", &mut diags, |days| {
            if days > MAX_EXPIRY_WARNING_DAYS {
                Err(format!(
                    "expiry_warning_days must be at most {MAX_EXPIRY_WARNING_DAYS}, got {days}"
                ))
            } else {
                Ok(())
            }
        });
        Ok(Response::new(tf::validate_provider_config::Response {
            diagnostics: diags.into_vec(),
        }))
    }

    async fn validate_resource_config(
        &self,
        request: Request<tf::validate_resource_config::Request>,
    ) -> Result<Response<tf::validate_resource_config::Response>, Status> {
        let request = request.into_inner();
        let resource = resource(&request.type_name)?;
        let mut diags = Diags::default();
        if let Some(config) = object(request.config.as_ref(), "configuration", &mut diags) {
            resource.validate(&config, &mut diags);
        }
        Ok(Response::new(tf::validate_resource_config::Response {
            diagnostics: diags.into_vec(),
        }))
    }

    async fn validate_data_resource_config(
        &self,
        request: Request<tf::validate_data_resource_config::Request>,
    ) -> Result<Response<tf::validate_data_resource_config::Response>, Status> {
        let request = request.into_inner();
        let data_source = data_source(&request.type_name)?;
        let mut diags = Diags::default();
        if let Some(config) = object(request.config.as_ref(), "configuration", &mut diags) {
            data_source.validate(&config, &mut diags);
        }
        Ok(Response::new(tf::validate_data_resource_config::Response {
            diagnostics: diags.into_vec(),
        }))
    }

    async fn upgrade_resource_state(
        &self,
        request: Request<tf::upgrade_resource_state::Request>,
    ) -> Result<Response<tf::upgrade_resource_state::Response>, Status> {
        let request = request.into_inner();
        let resource = resource(&request.type_name)?;
        let mut diags = Diags::default();
        let raw = request.raw_state.map(|r| r.json).unwrap_or_default();
        let upgraded = if raw.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&raw).map(Value::from_json) {
                Ok(value) => match Obj::from_value(value) {
                    Ok(Some(obj)) => resource.schema().conform(obj).into_value(),
                    Ok(None) => Value::Null,
                    Err(e) => {
                        diags.error("Invalid stored state", e.to_string());
                        Value::Null
                    }
                },
                Err(e) => {
                    diags.error(
                        "Invalid stored state",
                        format!(
                            "The state of this {} is not valid JSON: {e}",
                            request.type_name
                        ),
                    );
                    Value::Null
                }
            }
        };
        Ok(Response::new(tf::upgrade_resource_state::Response {
            upgraded_state: Some(upgraded.dynamic()),
            diagnostics: diags.into_vec(),
        }))
    }

    async fn configure_provider(
        &self,
        request: Request<tf::configure_provider::Request>,
    ) -> Result<Response<tf::configure_provider::Response>, Status> {
        let request = request.into_inner();
        let mut diags = Diags::default();
        let config = object(
            request.config.as_ref(),
            "provider configuration",
            &mut diags,
        )
        .unwrap_or_default();
        let client = client_from(&config);
        match &client {
            Ok(client) => tracing::debug!(
                endpoint = client.endpoint(),
                terraform = request.terraform_version,
                "Configured the provider."
            ),
            Err(why) => tracing::debug!(why, "The provider stays unconfigured."),
        }
        if let Err(why) = &client
            && config.get("endpoint").is_wholly_known()
            && config.get("token").is_wholly_known()
        {
            diags.error_at("endpoint", "Invalid provider configuration", why.clone());
        }
        let expiry_warning_days = config
            .get("expiry_warning_days")
            .as_i64()
            .unwrap_or(DEFAULT_EXPIRY_WARNING_DAYS);
        self.set_ctx(Ctx::new(client, expiry_warning_days));
        Ok(Response::new(tf::configure_provider::Response {
            diagnostics: diags.into_vec(),
        }))
    }

    async fn read_resource(
        &self,
        request: Request<tf::read_resource::Request>,
    ) -> Result<Response<tf::read_resource::Response>, Status> {
        let request = request.into_inner();
        let resource = resource(&request.type_name)?;
        let ctx = self.ctx();
        let mut diags = Diags::default();
        let current = request.current_state.clone();
        let mut new_identity = request.current_identity;
        let new_state = match object(current.as_ref(), "state", &mut diags) {
            Some(state) => match resource.read(&ctx, &state, &mut diags).await {
                _ if diags.has_errors() => current,
                Some(new) => {
                    new_identity = identity_of(resource, &new);
                    Some(new.dynamic())
                }
                None => {
                    tracing::info!(
                        resource = request.type_name,
                        id = state.str("id").unwrap_or_default(),
                        "The object no longer exists."
                    );
                    null()
                }
            },
            None => current,
        };
        Ok(Response::new(tf::read_resource::Response {
            new_state,
            diagnostics: diags.into_vec(),
            private: request.private,
            new_identity,
            ..Default::default()
        }))
    }

    async fn plan_resource_change(
        &self,
        request: Request<tf::plan_resource_change::Request>,
    ) -> Result<Response<tf::plan_resource_change::Response>, Status> {
        let request = request.into_inner();
        let resource = resource(&request.type_name)?;
        let ctx = self.ctx();
        let mut diags = Diags::default();
        let prior = object(request.prior_state.as_ref(), "prior state", &mut diags);
        let proposed = object(
            request.proposed_new_state.as_ref(),
            "proposed state",
            &mut diags,
        );
        let config = object(request.config.as_ref(), "configuration", &mut diags);
        let mut planned_identity = None;
        let (planned_state, requires_replace) = match (proposed, config) {
            (Some(proposed), Some(config)) if !diags.has_errors() => {
                let schema = resource.schema();
                let prior = prior.map(|p| schema.conform(p));
                let (mut planned, replace) = schema.plan(prior.as_ref(), &config, &proposed);
                let unchanged = prior.as_ref() == Some(&planned);
                if !unchanged {
                    let prior_for_checks = if replace.is_empty() {
                        prior.as_ref()
                    } else {
                        None
                    };
                    resource
                        .adjust_plan(&ctx, prior_for_checks, &mut planned, &mut diags)
                        .await;
                }
                if !diags.has_errors() {
                    resource.plan_warnings(&ctx, &planned, &mut diags).await;
                }
                // An update keeps the object, so it keeps its identity; a create or a
                // replacement learns it from the apply.
                if replace.is_empty() {
                    planned_identity = request.prior_identity;
                }
                (
                    Some(planned.dynamic()),
                    replace.iter().map(|a| diag::path(a)).collect(),
                )
            }
            // Destroy: nothing to plan.
            _ => (null(), Vec::new()),
        };
        Ok(Response::new(tf::plan_resource_change::Response {
            planned_state,
            requires_replace,
            planned_private: request.prior_private,
            diagnostics: diags.into_vec(),
            planned_identity,
            ..Default::default()
        }))
    }

    async fn apply_resource_change(
        &self,
        request: Request<tf::apply_resource_change::Request>,
    ) -> Result<Response<tf::apply_resource_change::Response>, Status> {
        let request = request.into_inner();
        let resource = resource(&request.type_name)?;
        let ctx = self.ctx();
        let mut diags = Diags::default();
        let prior = object(request.prior_state.as_ref(), "prior state", &mut diags);
        let planned = object(request.planned_state.as_ref(), "planned state", &mut diags);
        let mut new_identity = request.planned_identity.clone();
        let new_state = if diags.has_errors() {
            request.prior_state.clone()
        } else {
            match (prior, planned) {
                (None, Some(planned)) => {
                    let created = resource.create(&ctx, &planned, &mut diags).await;
                    match created {
                        Some(state) => {
                            tracing::info!(
                                resource = request.type_name,
                                id = state.str("id").unwrap_or_default(),
                                "Created."
                            );
                            new_identity = identity_of(resource, &state);
                            Some(state.dynamic())
                        }
                        None => null(),
                    }
                }
                (Some(prior), Some(planned)) => {
                    match resource.update(&ctx, &prior, &planned, &mut diags).await {
                        Some(state) => {
                            new_identity = identity_of(resource, &state);
                            Some(state.dynamic())
                        }
                        None => Some(prior.dynamic()),
                    }
                }
                (Some(prior), None) => {
                    resource.delete(&ctx, &prior, &mut diags).await;
                    if diags.has_errors() {
                        Some(prior.dynamic())
                    } else {
                        new_identity = None;
                        null()
                    }
                }
                (None, None) => null(),
            }
        };
        Ok(Response::new(tf::apply_resource_change::Response {
            new_state,
            private: request.planned_private,
            diagnostics: diags.into_vec(),
            new_identity,
            ..Default::default()
        }))
    }

    async fn import_resource_state(
        &self,
        request: Request<tf::import_resource_state::Request>,
    ) -> Result<Response<tf::import_resource_state::Response>, Status> {
        let request = request.into_inner();
        let resource = resource(&request.type_name)?;
        let ctx = self.ctx();
        let mut diags = Diags::default();
        // `import { identity = { ... } }` sends the identity and no ID.
        let id = match &request.identity {
            Some(identity) if request.id.is_empty() => {
                id_from_identity(resource, identity, &mut diags).unwrap_or_default()
            }
            _ => request.id.clone(),
        };
        let mut stub = resource.schema().empty_object();
        stub.set("id", id.as_str());
        let mut imported_resources = Vec::new();
        match resource.read(&ctx, &stub, &mut diags).await {
            _ if diags.has_errors() => {}
            Some(state) => imported_resources.push(tf::import_resource_state::ImportedResource {
                type_name: request.type_name.clone(),
                identity: identity_of(resource, &state),
                state: Some(state.dynamic()),
                ..Default::default()
            }),
            None => diags.error(
                format!("Cannot import {} {id:?}", request.type_name),
                format!(
                    "No such object. The import ID of {} is {}.",
                    request.type_name,
                    resource.import_id_kind()
                ),
            ),
        }
        Ok(Response::new(tf::import_resource_state::Response {
            imported_resources,
            diagnostics: diags.into_vec(),
            ..Default::default()
        }))
    }

    async fn read_data_source(
        &self,
        request: Request<tf::read_data_source::Request>,
    ) -> Result<Response<tf::read_data_source::Response>, Status> {
        let request = request.into_inner();
        let data_source = data_source(&request.type_name)?;
        let ctx = self.ctx();
        let mut diags = Diags::default();
        let state = match object(request.config.as_ref(), "configuration", &mut diags) {
            Some(config) => data_source.read(&ctx, &config, &mut diags).await,
            None => None,
        };
        Ok(Response::new(tf::read_data_source::Response {
            state: state.map(|s| s.dynamic()).or_else(null),
            diagnostics: diags.into_vec(),
            ..Default::default()
        }))
    }

    async fn get_resource_identity_schemas(
        &self,
        _request: Request<tf::get_resource_identity_schemas::Request>,
    ) -> Result<Response<tf::get_resource_identity_schemas::Response>, Status> {
        Ok(Response::new(tf::get_resource_identity_schemas::Response {
            identity_schemas: REGISTRY
                .resources
                .iter()
                .map(|r| (r.type_name().to_owned(), identity_schema(r.as_ref())))
                .collect(),
            diagnostics: Vec::new(),
        }))
    }

    async fn upgrade_resource_identity(
        &self,
        request: Request<tf::upgrade_resource_identity::Request>,
    ) -> Result<Response<tf::upgrade_resource_identity::Response>, Status> {
        let request = request.into_inner();
        let resource = resource(&request.type_name)?;
        let mut diags = Diags::default();
        // Version 0 is the only identity version there has been: keep just its attribute.
        let raw = request.raw_identity.map(|r| r.json).unwrap_or_default();
        let upgraded = match serde_json::from_slice::<serde_json::Value>(&raw) {
            Ok(json) => {
                let attr = resource.identity_attr();
                let mut identity = Obj::default();
                identity.set(attr, Value::from_json(json[attr].clone()));
                Some(tf::ResourceIdentityData {
                    identity_data: Some(identity.dynamic()),
                })
            }
            Err(e) => {
                diags.error(
                    "Invalid stored identity",
                    format!(
                        "The identity of this {} is not valid JSON: {e}",
                        request.type_name
                    ),
                );
                None
            }
        };
        Ok(Response::new(tf::upgrade_resource_identity::Response {
            upgraded_identity: upgraded,
            diagnostics: diags.into_vec(),
        }))
    }

    async fn validate_list_resource_config(
        &self,
        request: Request<tf::validate_list_resource_config::Request>,
    ) -> Result<Response<tf::validate_list_resource_config::Response>, Status> {
        let request = request.into_inner();
        let resource = resource(&request.type_name)?;
        let mut diags = Diags::default();
        if let Some(config) = object(request.config.as_ref(), "list configuration", &mut diags) {
            resource.validate_list(&config, &mut diags);
        }
        Ok(Response::new(tf::validate_list_resource_config::Response {
            diagnostics: diags.into_vec(),
        }))
    }

    async fn list_resource(
        &self,
        request: Request<tf::list_resource::Request>,
    ) -> Result<Response<tonic::codegen::BoxStream<tf::list_resource::Event>>, Status> {
        let request = request.into_inner();
        let resource = resource(&request.type_name)?;
        let ctx = self.ctx();
        let mut diags = Diags::default();
        let config =
            object(request.config.as_ref(), "list configuration", &mut diags).unwrap_or_default();
        let found = if diags.has_errors() {
            Vec::new()
        } else {
            resource.list(&ctx, &config, &mut diags).await
        };
        let limit = usize::try_from(request.limit)
            .ok()
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        let mut events: Vec<Result<tf::list_resource::Event, Status>> = found
            .iter()
            .take(limit)
            .map(|state| {
                Ok(tf::list_resource::Event {
                    identity: identity_of(resource, state),
                    display_name: display_name(state),
                    resource_object: request.include_resource_object.then(|| state.dynamic()),
                    diagnostic: Vec::new(),
                })
            })
            .collect();
        // A failed list is one event that carries only the diagnostics.
        if !diags.0.is_empty() {
            events.push(Ok(tf::list_resource::Event {
                diagnostic: diags.into_vec(),
                ..Default::default()
            }));
        }
        Ok(Response::new(Box::pin(futures::stream::iter(events))))
    }

    async fn stop_provider(
        &self,
        _request: Request<tf::stop_provider::Request>,
    ) -> Result<Response<tf::stop_provider::Response>, Status> {
        Ok(Response::new(tf::stop_provider::Response::default()))
    }
}

fn identity_schema(resource: &dyn Resource) -> tf::ResourceIdentitySchema {
    tf::ResourceIdentitySchema {
        version: 0,
        identity_attributes: vec![tf::resource_identity_schema::IdentityAttribute {
            name: resource.identity_attr().to_owned(),
            r#type: b"\"string\"".to_vec(),
            required_for_import: true,
            optional_for_import: false,
            description: format!(
                "The {}.",
                resource.import_id_kind().trim_start_matches("the ")
            ),
        }],
    }
}

/// How `terraform query` names a found object: its name, or what it connects.
fn display_name(state: &Obj) -> String {
    let text = |attr: &str| state.str(attr).unwrap_or_default().to_owned();
    if let Some(name) = state.str("name") {
        return name.to_owned();
    }
    if let Some(grantee) = state.str("grantee") {
        return format!("{} to {grantee} ({})", text("event"), text("id"));
    }
    let events = state.get("events").as_strings().unwrap_or_default();
    format!("{}: {} ({})", text("stream"), events.join(", "), text("id"))
}

fn capabilities() -> tf::ServerCapabilities {
    tf::ServerCapabilities {
        plan_destroy: false,
        // Every provider process serves the same schema: Terraform may reuse the first answer.
        get_provider_schema_optional: true,
        move_resource_state: false,
        generate_resource_config: false,
    }
}
