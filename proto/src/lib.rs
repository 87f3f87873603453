//! Wire types shared by every Fanner component: the [`Envelope`] that wraps each event on the
//! global event stream, the event-catalog options that mark protobuf messages as events and
//! their fields as PII, and an event's payload schema ([`schema`]).

#[allow(clippy::all, clippy::pedantic, missing_docs)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/fanner.v1.rs"));
}

pub mod schema;
mod view;

pub use generated::{Classification, Envelope, EventOptions, FieldOptions};
pub use prost::Message;
pub use prost_types::Timestamp;
pub use schema::{PayloadSchema, SchemaError};
pub use view::{EnvelopeHead, EnvelopeRef, ViewError};

/// Field number of the `(fanner.v1.event)` extension on `google.protobuf.MessageOptions`.
pub const EVENT_OPTION_FIELD: u32 = 51234;

/// The `catalog.proto` source, for users who import it into their own protos.
pub const CATALOG_PROTO: &str = include_str!("../proto/fanner/v1/catalog.proto");
/// The `envelope.proto` source.
pub const ENVELOPE_PROTO: &str = include_str!("../proto/fanner/v1/envelope.proto");
