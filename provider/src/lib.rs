//! terraform-provider-fanner: Terraform's tfplugin6 protocol served over go-plugin, backed by
//! the control-plane API (`api::Client`). Only this crate knows tfplugin6.
//!
//! - [`plugin`]: handshake, AutoMTLS, gRPC serving and shutdown.
//! - [`server`]: the tfplugin6 `Provider` service.
//! - `resources`, `data_sources`: one module per Terraform type.
//! - [`schema`], `value`: schemas declared once; msgpack values with unknown as a third state.

pub mod data_sources;
mod diag;
pub mod plugin;
pub mod resources;
pub mod schema;
pub mod server;
pub mod tls;
mod value;

#[allow(clippy::all, clippy::pedantic, clippy::unwrap_used, missing_docs)]
pub mod tfplugin6 {
    tonic::include_proto!("tfplugin6");
}

#[allow(clippy::all, clippy::pedantic, clippy::unwrap_used, missing_docs)]
pub mod plugin_controller {
    tonic::include_proto!("plugin");
}

pub use server::{FannerProvider, schema_json};
