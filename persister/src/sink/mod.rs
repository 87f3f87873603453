//! Where lake objects go. One trait, [`ObjectSink`], with create-or-overwrite `put` (which is
//! what makes replays idempotent: the same batch always has the same key) and `list`/`get` for
//! recovery and for readers.

use async_trait::async_trait;
use bytes::Bytes;

use crate::encode::ObjectFormat;

mod firehose;
mod local;
mod s3;

pub use firehose::FirehoseSink;
pub use local::LocalFsSink;
pub use s3::S3Sink;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("object key {key:?} is not valid here: {reason}")]
    InvalidKey { key: String, reason: String },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("object store error: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("Firehose error: {0}")]
    Firehose(String),
    #[error("{0} does not support {1}")]
    Unsupported(&'static str, &'static str),
}

#[async_trait]
pub trait ObjectSink: Send + Sync + 'static {
    /// Short name for logs and metrics: `s3`, `local`, `firehose`.
    fn kind(&self) -> &'static str;

    /// Whether the sink can store objects of this format. Firehose takes newline-separated
    /// records and compresses on its own, so it only accepts plain NDJSON.
    fn accepts(&self, format: ObjectFormat) -> bool {
        let _ = format;
        true
    }

    /// Whether `put` replaces an object written earlier under the same key. When it does, a
    /// replayed batch replaces its first write and the lake holds every event exactly once;
    /// when it does not (Firehose), a replay appends and delivery is at least once.
    fn overwrites(&self) -> bool {
        true
    }

    /// Writes the whole object under `key`, replacing any object already there. Readers see
    /// either the old object or the complete new one, never a part.
    async fn put(&self, key: &str, body: Bytes) -> Result<(), SinkError>;

    /// Keys that start with `prefix`, in no particular order.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, SinkError>;

    /// The object under `key`, `None` when there is none.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, SinkError>;
}
