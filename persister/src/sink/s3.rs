//! The S3 sink, through `object_store`. Small objects are one PUT (atomic and
//! create-or-overwrite by nature); large ones a multipart upload, which S3 also makes visible
//! only when complete.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use super::{ObjectSink, SinkError};

/// S3's smallest part (except the last).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// Objects above this size are uploaded in parts.
pub const DEFAULT_MULTIPART_THRESHOLD: usize = 32 * 1024 * 1024;
pub const DEFAULT_PART_SIZE: usize = 16 * 1024 * 1024;
/// Parts uploaded at once for one object.
const PARTS_IN_FLIGHT: usize = 4;

#[derive(Clone, Debug)]
pub struct S3Sink {
    store: Arc<AmazonS3>,
    multipart_threshold: usize,
    part_size: usize,
}

impl S3Sink {
    /// Configures the client from the usual `AWS_*` variables (credentials, region,
    /// `AWS_ENDPOINT_URL`). A plain-HTTP endpoint (an emulator) is allowed when one is set
    /// explicitly.
    pub fn from_env(bucket: &str) -> Result<Self, SinkError> {
        api::install_crypto_provider();
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let endpoint = builder
            .get_config_value(&AmazonS3ConfigKey::Endpoint)
            .unwrap_or_default();
        if endpoint.starts_with("http://") {
            builder = builder.with_allow_http(true);
        }
        Ok(S3Sink::new(builder.build()?))
    }

    pub fn new(store: AmazonS3) -> Self {
        S3Sink {
            store: Arc::new(store),
            multipart_threshold: DEFAULT_MULTIPART_THRESHOLD,
            part_size: DEFAULT_PART_SIZE,
        }
    }

    /// Objects larger than `threshold` bytes go up in parts of `part_size` bytes (at least
    /// [`MIN_PART_SIZE`]).
    pub fn with_multipart(mut self, threshold: usize, part_size: usize) -> Self {
        self.multipart_threshold = threshold;
        self.part_size = part_size.max(MIN_PART_SIZE);
        self
    }

    fn path(key: &str) -> Result<Path, SinkError> {
        Path::parse(key).map_err(|e| SinkError::InvalidKey {
            key: key.chars().take(200).collect(),
            reason: e.to_string(),
        })
    }
}

#[async_trait]
impl ObjectSink for S3Sink {
    fn kind(&self) -> &'static str {
        "s3"
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), SinkError> {
        let path = S3Sink::path(key)?;
        if body.len() <= self.multipart_threshold {
            self.store.put(&path, PutPayload::from(body)).await?;
            return Ok(());
        }
        let upload = self.store.put_multipart(&path).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        for chunk in body.chunks(self.part_size) {
            if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                writer.abort().await.ok();
                return Err(e.into());
            }
            writer.put(body.slice_ref(chunk));
        }
        writer.finish().await?;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, SinkError> {
        // object_store lists whole path segments: list the prefix's directory and filter.
        let dir = prefix.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let dir = if dir.is_empty() {
            None
        } else {
            Some(S3Sink::path(dir)?)
        };
        let metas: Vec<_> = self.store.list(dir.as_ref()).try_collect().await?;
        Ok(metas
            .into_iter()
            .map(|m| m.location.to_string())
            .filter(|k| k.starts_with(prefix))
            .collect())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, SinkError> {
        match self.store.get(&S3Sink::path(key)?).await {
            Ok(result) => Ok(Some(result.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}
