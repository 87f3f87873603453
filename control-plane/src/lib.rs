//! The Fanner control plane: the catalog of events, who may read them (grants), consumer
//! streams and their subscriptions, the tamper-evident audit trail of every change, and the
//! route table the data plane delivers by.
//!
//! [`ControlPlane`] holds the rules; [`http::app`] serves them; [`store::Store`] keeps them in
//! SQLite or PostgreSQL and also coordinates the data plane's shard leases.

pub mod access;
pub mod auth;
pub mod error;
pub mod http;
pub mod report;
pub mod service;
pub mod store;

pub use error::ApiError;
pub use service::{Clock, ControlPlane, Settings};
pub use store::Store;
