use ::streams::StreamSpec;
use api::{CreateStream, Role, Stream, UpdateStream, rules};

use super::{Change, ControlPlane, bad_request, check_revision, snapshot};
use crate::auth::Ctx;
use crate::error::ApiError;
use crate::store::{streams, subscriptions};

impl ControlPlane {
    /// Streams the caller may see: its own, or all for admins and auditors.
    pub async fn list_streams(&self, ctx: &Ctx) -> Result<Vec<Stream>, ApiError> {
        let all = streams::list(&mut *self.conn().await?).await?;
        Ok(all
            .into_iter()
            .filter(|s| ctx.caller.may_read(&s.owner))
            .collect())
    }

    pub async fn get_stream(&self, ctx: &Ctx, name: &str) -> Result<Stream, ApiError> {
        let stream = streams::get(&mut *self.conn().await?, name)
            .await?
            .ok_or_else(|| not_found(name))?;
        if ctx.caller.may_read(&stream.owner) {
            Ok(stream)
        } else {
            Err(not_yours(&stream))
        }
    }

    /// Provisions the backing stream, then records the stream. The slow provisioning runs
    /// outside the store's write lock; a create retried after a crash finds the backing stream
    /// already there (backends create idempotently) and finishes.
    pub async fn create_stream(&self, ctx: &Ctx, req: CreateStream) -> Result<Stream, ApiError> {
        const ACTION: &str = "stream.create";
        let spec = StreamSpec {
            name: req.name,
            shard_count: req.shard_count.unwrap_or(rules::DEFAULT_SHARD_COUNT),
            retention_hours: req
                .retention_hours
                .unwrap_or(rules::DEFAULT_RETENTION_HOURS),
            tags: req.tags,
        };
        let checks = async {
            if ctx.caller.role == Role::Auditor {
                return Err(ApiError::Forbidden(
                    "auditors cannot create streams".to_owned(),
                ));
            }
            validate(&spec)?;
            if let Some(existing) = streams::get(&mut *self.conn().await?, &spec.name).await? {
                return Err(exists(&existing));
            }
            Ok(())
        }
        .await;
        self.precheck(ctx, ACTION, "stream", &spec.name, checks)
            .await?;
        let description = self
            .backend()
            .create_stream(&self.backing_spec(&spec))
            .await?;

        let mut m = self.begin(ctx, ACTION, "stream", &spec.name).await?;
        let now = m.now;
        let result = async {
            if let Some(existing) = streams::get(m.conn(), &spec.name).await? {
                return Err(exists(&existing));
            }
            let stream = Stream {
                name: spec.name.clone(),
                owner: ctx.caller.principal.clone(),
                shard_count: spec.shard_count,
                retention_hours: spec.retention_hours,
                tags: spec.tags.clone(),
                status: if description.active {
                    "active"
                } else {
                    "creating"
                }
                .to_owned(),
                backing_id: description.backing_id.clone(),
                revision: 1,
                created_at: now,
                updated_at: now,
            };
            streams::insert(m.conn(), &stream).await?;
            Ok(Change::new(None, snapshot(&stream), stream))
        }
        .await;
        m.finish(result).await
    }

    /// Changes shard count, retention and tags in place.
    pub async fn update_stream(
        &self,
        ctx: &Ctx,
        name: &str,
        req: UpdateStream,
    ) -> Result<Stream, ApiError> {
        const ACTION: &str = "stream.update";
        let spec = StreamSpec {
            name: name.to_owned(),
            shard_count: req.shard_count,
            retention_hours: req.retention_hours,
            tags: req.tags,
        };
        let checks = async {
            let current = streams::get(&mut *self.conn().await?, name)
                .await?
                .ok_or_else(|| not_found(name))?;
            if !ctx.caller.may_modify(&current.owner) {
                return Err(not_yours(&current));
            }
            validate(&spec)?;
            check_revision("stream", name, req.revision, current.revision)?;
            Ok(current)
        }
        .await;
        let current = self.precheck(ctx, ACTION, "stream", name, checks).await?;
        let description = self
            .backend()
            .update_stream(&self.backing_spec(&spec))
            .await?;

        let mut m = self.begin(ctx, ACTION, "stream", name).await?;
        let now = m.now;
        let result = async {
            let before = streams::get(m.conn(), name)
                .await?
                .ok_or_else(|| not_found(name))?;
            if before.revision != current.revision {
                return Err(ApiError::Conflict(format!(
                    "stream {name:?} changed concurrently; retry"
                )));
            }
            let after = Stream {
                shard_count: spec.shard_count,
                retention_hours: spec.retention_hours,
                tags: spec.tags.clone(),
                status: if description.active {
                    "active"
                } else {
                    "updating"
                }
                .to_owned(),
                backing_id: description.backing_id.clone(),
                revision: before.revision + 1,
                updated_at: now,
                ..before.clone()
            };
            if !streams::update(m.conn(), &after, before.revision).await? {
                return Err(ApiError::Conflict(format!(
                    "stream {name:?} changed concurrently; retry"
                )));
            }
            Ok(Change::new(snapshot(&before), snapshot(&after), after))
        }
        .await;
        m.finish(result).await
    }

    /// Removes the stream and its subscriptions (so delivery stops first), then its backing stream.
    pub async fn delete_stream(&self, ctx: &Ctx, name: &str) -> Result<Stream, ApiError> {
        let mut m = self.begin(ctx, "stream.delete", "stream", name).await?;
        let result = async {
            let before = streams::get(m.conn(), name)
                .await?
                .ok_or_else(|| not_found(name))?;
            if !ctx.caller.may_modify(&before.owner) {
                return Err(not_yours(&before));
            }
            let removed = subscriptions::list(m.conn(), Some(name)).await?;
            for subscription in &removed {
                subscriptions::delete(m.conn(), &subscription.id).await?;
            }
            streams::delete(m.conn(), name).await?;
            let before_json = serde_json::json!({ "stream": before, "subscriptions": removed });
            Ok(Change::new(Some(before_json), None, before))
        }
        .await;
        let deleted = m.finish(result).await?;
        self.backend()
            .delete_stream(&self.backing_name(name))
            .await
            .map_err(|e| {
                ApiError::Unavailable(format!(
                    "stream {name:?} was removed, but deleting its backing stream {} failed: {e}",
                    deleted.backing_id
                ))
            })?;
        Ok(deleted)
    }
}

impl ControlPlane {
    fn backing_spec(&self, spec: &StreamSpec) -> StreamSpec {
        StreamSpec {
            name: self.backing_name(&spec.name),
            ..spec.clone()
        }
    }
}

fn validate(spec: &StreamSpec) -> Result<(), ApiError> {
    bad_request(rules::check_name("stream", &spec.name))?;
    bad_request(rules::check_shard_count(spec.shard_count))?;
    bad_request(rules::check_retention_hours(spec.retention_hours))?;
    bad_request(rules::check_tags(spec.tags.iter()))
}

fn exists(stream: &Stream) -> ApiError {
    ApiError::Conflict(format!(
        "stream {:?} already exists, owned by {:?}",
        stream.name, stream.owner
    ))
}

fn not_found(name: &str) -> ApiError {
    ApiError::NotFound(format!("stream {name:?} does not exist"))
}

fn not_yours(stream: &Stream) -> ApiError {
    ApiError::Forbidden(format!(
        "stream {:?} belongs to {:?}; only its owner or an admin may do this",
        stream.name, stream.owner
    ))
}
