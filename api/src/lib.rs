//! The control-plane HTTP API as Rust types: request and response bodies (each with an OpenAPI
//! schema), the validation rules every client can check before it calls (names, ranges, expiry),
//! and [`Client`], the one typed client the CLI, the Terraform provider and the data plane share.

mod client;
pub mod envelope;
pub mod rules;
mod types;

pub use client::{Client, ClientError};
pub use types::*;
