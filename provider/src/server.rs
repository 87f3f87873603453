//! The tfplugin6 `Provider` service: decodes Terraform's values, dispatches to the resource and
//! data-source modules, and turns every outcome into a response with diagnostics.

use std::sync::{Arc, LazyLock, RwLock};

use serde_json::json;
use tonic::{Request, Response, Status};

use crate::data_sources::{self, DataSource};
use crate::diag::{self, Diags};
use crate::resources::{self, Ctx, Resource};
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
            server_capabilities: Some(capabilities()),
            ..Default::default()
        }))
    }

    async fn validate_provider_config(
        &self,
        request: Request<tf::validate_provider_config::Request>,
    ) -> Result<Response<tf::validate_provider_config::Response>, Status> {
        let mut diags = Diags::default();
        if let Some(config) = object(
            request.get_ref().config.as_ref(),
            "provider configuration",
            &mut diags,
        ) && let Some(endpoint) = config.str("endpoint")
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            diags.error_at(
                "endpoint",
                "Invalid endpoint",
                format!("endpoint {endpoint:?} must be an http:// or https:// URL"),
            );
        }
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
        self.set_ctx(Ctx::new(client));
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
        let new_state = match object(current.as_ref(), "state", &mut diags) {
            Some(state) => match resource.read(&ctx, &state, &mut diags).await {
                _ if diags.has_errors() => current,
                Some(new) => Some(new.dynamic()),
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
                            Some(state.dynamic())
                        }
                        None => null(),
                    }
                }
                (Some(prior), Some(planned)) => {
                    match resource.update(&ctx, &prior, &planned, &mut diags).await {
                        Some(state) => Some(state.dynamic()),
                        None => Some(prior.dynamic()),
                    }
                }
                (Some(prior), None) => {
                    resource.delete(&ctx, &prior, &mut diags).await;
                    if diags.has_errors() {
                        Some(prior.dynamic())
                    } else {
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
        let mut stub = resource.schema().empty_object();
        stub.set("id", request.id.as_str());
        let mut imported_resources = Vec::new();
        match resource.read(&ctx, &stub, &mut diags).await {
            _ if diags.has_errors() => {}
            Some(state) => imported_resources.push(tf::import_resource_state::ImportedResource {
                type_name: request.type_name.clone(),
                state: Some(state.dynamic()),
                ..Default::default()
            }),
            None => diags.error(
                format!("Cannot import {} {:?}", request.type_name, request.id),
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

    async fn stop_provider(
        &self,
        _request: Request<tf::stop_provider::Request>,
    ) -> Result<Response<tf::stop_provider::Response>, Status> {
        Ok(Response::new(tf::stop_provider::Response::default()))
    }
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
