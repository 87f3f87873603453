use api::{CreateEvent, Event, EventSchema, GrantStatus, Role, SetEventSchema, UpdateEvent, rules};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use sqlx::AnyConnection;

use super::{Change, ControlPlane, bad_request, check_revision, snapshot};
use crate::auth::Ctx;
use crate::error::ApiError;
use crate::store::{catalog, grants, principals, subscriptions};

impl ControlPlane {
    pub async fn list_events(&self) -> Result<Vec<Event>, ApiError> {
        Ok(catalog::list(&mut *self.conn().await?).await?)
    }

    pub async fn get_event(&self, name: &str) -> Result<Event, ApiError> {
        catalog::get(&mut *self.conn().await?, name)
            .await?
            .ok_or_else(|| not_found(name))
    }

    pub async fn create_event(&self, ctx: &Ctx, req: CreateEvent) -> Result<Event, ApiError> {
        let mut m = self.begin(ctx, "event.create", "event", &req.name).await?;
        let now = m.now;
        let result = async {
            if ctx.caller.role == Role::Auditor {
                return Err(ApiError::Forbidden(
                    "auditors cannot create events".to_owned(),
                ));
            }
            bad_request(rules::check_name("event", &req.name))?;
            bad_request(rules::check_description(&req.description))?;
            let owner = match req.owner {
                Some(owner) if owner != ctx.caller.principal => {
                    if !ctx.caller.is_admin() {
                        return Err(ApiError::Forbidden(
                            "only admins may register an event on behalf of another principal"
                                .to_owned(),
                        ));
                    }
                    if principals::get(m.conn(), &owner).await?.is_none() {
                        return Err(ApiError::BadRequest(format!(
                            "owner {owner:?} is not a known principal"
                        )));
                    }
                    owner
                }
                _ => ctx.caller.principal.clone(),
            };
            if let Some(existing) = catalog::get(m.conn(), &req.name).await? {
                return Err(ApiError::Conflict(format!(
                    "event {:?} already exists, owned by {:?}",
                    existing.name, existing.owner
                )));
            }
            let event = Event {
                name: req.name.clone(),
                owner,
                classification: req.classification,
                description: req.description,
                revision: 1,
                created_at: now,
                updated_at: now,
                schema: None,
            };
            catalog::insert(m.conn(), &event).await?;
            Ok(Change::new(None, snapshot(&event), event))
        }
        .await;
        m.finish(result).await
    }

    pub async fn update_event(
        &self,
        ctx: &Ctx,
        name: &str,
        req: UpdateEvent,
    ) -> Result<Event, ApiError> {
        let mut m = self.begin(ctx, "event.update", "event", name).await?;
        let now = m.now;
        let result = async {
            let before =
                event_to_modify(m.conn(), ctx, name, &format!("change event {name:?}")).await?;
            bad_request(rules::check_description(&req.description))?;
            check_revision("event", name, req.revision, before.revision)?;
            if req.classification.requires_expiry() && !before.classification.requires_expiry() {
                let grants = grants::list(m.conn(), Some(name), now).await?;
                let offending: Vec<&str> = grants
                    .iter()
                    .filter(|g| g.status == GrantStatus::Active)
                    .filter(|g| rules::check_grant_expiry(req.classification, g.expires_at, g.created_at).is_err())
                    .map(|g| g.id.as_str())
                    .collect();
                if !offending.is_empty() {
                    return Err(ApiError::Conflict(format!(
                        "event {name:?} cannot become {}: active grants {} lack an expiry within {} days; update or revoke them first",
                        req.classification,
                        offending.join(", "),
                        rules::MAX_SENSITIVE_GRANT_DAYS
                    )));
                }
            }
            let after = Event {
                classification: req.classification,
                description: req.description,
                revision: before.revision + 1,
                updated_at: now,
                ..before.clone()
            };
            if !catalog::update(m.conn(), &after, before.revision).await? {
                return Err(ApiError::Conflict(format!("event {name:?} changed concurrently; retry")));
            }
            Ok(Change::new(snapshot(&before), snapshot(&after), after))
        }
        .await;
        m.finish(result).await
    }

    /// Stores the protobuf message `name`'s payload is; its PII marks take effect in the next
    /// route table. Storing the same descriptors again changes nothing and audits nothing.
    pub async fn set_event_schema(
        &self,
        ctx: &Ctx,
        name: &str,
        req: SetEventSchema,
    ) -> Result<Event, ApiError> {
        let decoded = decode_schema(&req);
        if let Ok((_, _, digest)) = &decoded
            && let Ok(before) = self.get_event(name).await
            && ctx.caller.may_modify(&before.owner)
            && before
                .schema
                .as_ref()
                .is_some_and(|s| s.digest == *digest && s.message == req.message)
        {
            return Ok(before);
        }
        let mut m = self.begin(ctx, "event.schema", "event", name).await?;
        let now = m.now;
        let result = async {
            let before =
                event_to_modify(m.conn(), ctx, name, &format!("set event {name:?}'s schema"))
                    .await?;
            let (schema, stored, digest) = decoded?;
            let event_schema = EventSchema {
                message: req.message.clone(),
                pii_fields: schema.pii_fields(),
                digest,
                updated_at: now,
            };
            catalog::set_schema(
                m.conn(),
                name,
                &event_schema,
                &base64::engine::general_purpose::STANDARD.encode(&stored),
            )
            .await?;
            let after = Event {
                schema: Some(event_schema),
                ..before.clone()
            };
            Ok(Change::new(snapshot(&before), snapshot(&after), after))
        }
        .await;
        m.finish(result).await
    }

    /// Deletes an event nobody reads any more: no active grant, no subscription.
    pub async fn delete_event(&self, ctx: &Ctx, name: &str) -> Result<Event, ApiError> {
        let mut m = self.begin(ctx, "event.delete", "event", name).await?;
        let now = m.now;
        let result = async {
            let before =
                event_to_modify(m.conn(), ctx, name, &format!("delete event {name:?}")).await?;
            let active: Vec<String> = grants::list(m.conn(), Some(name), now)
                .await?
                .into_iter()
                .filter(|g| g.status == GrantStatus::Active)
                .map(|g| g.id)
                .collect();
            if !active.is_empty() {
                return Err(ApiError::Conflict(format!(
                    "event {name:?} still has active grants ({}); revoke them first",
                    active.join(", ")
                )));
            }
            let subscribed: Vec<String> = subscriptions::naming_event(m.conn(), name)
                .await?
                .into_iter()
                .map(|s| s.id)
                .collect();
            if !subscribed.is_empty() {
                return Err(ApiError::Conflict(format!(
                    "event {name:?} is still named by subscriptions {}; remove it from them first",
                    subscribed.join(", ")
                )));
            }
            catalog::delete(m.conn(), name).await?;
            Ok(Change::new(snapshot(&before), None, before))
        }
        .await;
        m.finish(result).await
    }
}

/// Event `name`, read in the caller's transaction, when the caller may do `what` to it: the
/// event's owner or an admin.
pub(super) async fn event_to_modify(
    conn: &mut AnyConnection,
    ctx: &Ctx,
    name: &str,
    what: &str,
) -> Result<Event, ApiError> {
    let event = catalog::get(conn, name)
        .await?
        .ok_or_else(|| not_found(name))?;
    if !ctx.caller.may_modify(&event.owner) {
        return Err(ApiError::Forbidden(format!(
            "only {:?} (the event's owner) or an admin may {what}",
            event.owner
        )));
    }
    Ok(event)
}

fn not_found(name: &str) -> ApiError {
    ApiError::NotFound(format!("event {name:?} does not exist"))
}

/// The schema `req` describes, the descriptor set to store (the message's own closure, so equal
/// schemas store equal bytes) and its digest.
fn decode_schema(
    req: &SetEventSchema,
) -> Result<(proto::PayloadSchema, Vec<u8>, String), ApiError> {
    let descriptors = base64::engine::general_purpose::STANDARD
        .decode(req.descriptor_set.as_bytes())
        .map_err(|e| ApiError::BadRequest(format!("descriptor_set is not base64: {e}")))?;
    let schema = proto::PayloadSchema::decode(&descriptors, &req.message)
        .map_err(|e| ApiError::BadRequest(format!("descriptor_set: {e}")))?;
    let stored = schema.descriptor_set();
    let digest = hex::encode(Sha256::digest(&stored));
    Ok((schema, stored, digest))
}
