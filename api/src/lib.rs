//! The control-plane HTTP API as Rust types: request and response bodies (each with an OpenAPI
//! schema), the validation rules every client can check before it calls (names, ranges, expiry),
//! and [`Client`], the one typed client the CLI, the Terraform provider and the data plane share.

mod client;
pub mod envelope;
pub mod rules;
mod types;

pub use client::{Client, ClientError};
pub use types::*;

/// Installs rustls' ring provider as the process default, unless one is installed already.
/// Every HTTPS client Fanner builds (reqwest for the API and the lake's S3 store) takes its
/// cryptography from that default; ring builds in seconds where aws-lc, reqwest's own choice,
/// is a long C build. [`Client`] calls it; so does anything building another reqwest client.
pub fn install_crypto_provider() {
    // An error means a provider is installed already, which is all that is needed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
