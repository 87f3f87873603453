use api::{CreateGrant, Grant, GrantStatus, HistoryFrom, UpdateGrant, rules};

use super::{Change, ControlPlane, bad_request, check_revision, snapshot, to_stored_precision};
use crate::auth::{Caller, Ctx};
use crate::error::ApiError;
use crate::store::{catalog, grants, principals};

impl ControlPlane {
    /// Grants the caller may see, optionally only those on `event` and/or to `grantee`.
    pub async fn list_grants(
        &self,
        ctx: &Ctx,
        event: Option<&str>,
        grantee: Option<&str>,
    ) -> Result<Vec<Grant>, ApiError> {
        let now = self.now();
        let mut conn = self.conn().await?;
        let all = grants::list(&mut conn, event, now).await?;
        let owned: Vec<String> = if ctx.caller.sees_everything() {
            Vec::new()
        } else {
            catalog::list(&mut conn)
                .await?
                .into_iter()
                .filter(|e| e.owner == ctx.caller.principal)
                .map(|e| e.name)
                .collect()
        };
        Ok(all
            .into_iter()
            .filter(|g| grantee.is_none_or(|grantee| g.grantee == grantee))
            .filter(|g| may_see(&ctx.caller, g, &owned))
            .collect())
    }

    pub async fn get_grant(&self, ctx: &Ctx, id: &str) -> Result<Grant, ApiError> {
        let now = self.now();
        let mut conn = self.conn().await?;
        let grant = grants::get(&mut conn, id, now)
            .await?
            .ok_or_else(|| not_found(id))?;
        let owner = catalog::get(&mut conn, &grant.event)
            .await?
            .map(|e| e.owner);
        if may_see(&ctx.caller, &grant, owner.as_slice()) {
            Ok(grant)
        } else {
            Err(ApiError::Forbidden(format!(
                "grant {id:?} is visible to its grantee, its event's owner, admins and auditors"
            )))
        }
    }

    pub async fn create_grant(&self, ctx: &Ctx, mut req: CreateGrant) -> Result<Grant, ApiError> {
        req.expires_at = req.expires_at.map(to_stored_precision);
        let attempted = format!("{}/{}", req.event, req.grantee);
        let mut m = self.begin(ctx, "grant.create", "grant", attempted).await?;
        let now = m.now;
        let result = async {
            bad_request(rules::check_name("event", &req.event))?;
            bad_request(rules::check_name("principal", &req.grantee))?;
            let event = catalog::get(m.conn(), &req.event)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("event {:?} does not exist", req.event)))?;
            if !ctx.caller.may_modify(&event.owner) {
                return Err(ApiError::Forbidden(format!(
                    "only {:?} (the owner of event {:?}) or an admin may grant access to it",
                    event.owner, event.name
                )));
            }
            if req.grantee == event.owner {
                return Err(ApiError::BadRequest(format!(
                    "{:?} owns event {:?} and can already read it",
                    req.grantee, event.name
                )));
            }
            if principals::get(m.conn(), &req.grantee).await?.is_none() {
                return Err(ApiError::BadRequest(format!(
                    "grantee {:?} is not a known principal; an admin creates it with `fanner token create --principal {}`",
                    req.grantee, req.grantee
                )));
            }
            bad_request(rules::check_reason(&req.reason))?;
            bad_request(rules::check_grant_expiry(event.classification, req.expires_at, now))?;
            let redact = rules::redact::normalize_paths("redact", &req.redact).map_err(ApiError::BadRequest)?;
            let include_pii =
                rules::redact::normalize_paths("include_pii", &req.include_pii)
                    .map_err(ApiError::BadRequest)?;
            let existing = grants::unrevoked_for(m.conn(), &event.name, &req.grantee, now).await?;
            if let Some(active) = existing.iter().find(|g| g.status == GrantStatus::Active) {
                return Err(ApiError::Conflict(format!(
                    "grant {} already gives {:?} read access to {:?}; update it instead",
                    active.id, req.grantee, event.name
                )));
            }
            let grant = Grant {
                id: uuid::Uuid::new_v4().to_string(),
                event: event.name,
                grantee: req.grantee,
                reason: req.reason,
                granted_by: ctx.caller.principal.clone(),
                created_at: now,
                expires_at: req.expires_at,
                revoked_at: None,
                revoked_by: None,
                status: GrantStatus::Active,
                // Deny by default: history before the grant is the producer's to widen.
                history_from: stored_history(req.history_from.unwrap_or(HistoryFrom::At(now))),
                revision: 1,
                redact,
                redact_mode: req.redact_mode,
                include_pii,
            };
            grants::insert(m.conn(), &grant).await?;
            grants::ensure_key(m.conn(), &grant.id, &new_key()).await?;
            Ok(Change::new(None, snapshot(&grant), grant.clone()).with_id(grant.id))
        }
        .await;
        m.finish(result).await
    }

    /// Changes a grant's reason, expiry and redaction.
    pub async fn update_grant(
        &self,
        ctx: &Ctx,
        id: &str,
        req: UpdateGrant,
    ) -> Result<Grant, ApiError> {
        let mut m = self.begin(ctx, "grant.update", "grant", id).await?;
        let now = m.now;
        let result = async {
            let before = grants::get(m.conn(), id, now)
                .await?
                .ok_or_else(|| not_found(id))?;
            let event = catalog::get(m.conn(), &before.event).await?;
            authorize_change(
                &ctx.caller,
                &before,
                event.as_ref().map(|e| e.owner.as_str()),
            )?;
            if before.status == GrantStatus::Revoked {
                return Err(ApiError::Conflict(format!(
                    "grant {id:?} is revoked; create a new one"
                )));
            }
            check_revision("grant", id, req.revision, before.revision)?;
            bad_request(rules::check_reason(&req.reason))?;
            let redact = rules::redact::normalize_paths("redact", &req.redact)
                .map_err(ApiError::BadRequest)?;
            let include_pii = rules::redact::normalize_paths("include_pii", &req.include_pii)
                .map_err(ApiError::BadRequest)?;
            if let Some(event) = &event {
                bad_request(rules::check_grant_expiry(
                    event.classification,
                    req.expires_at,
                    now,
                ))?;
            }
            let mut after = Grant {
                reason: req.reason,
                expires_at: req.expires_at,
                history_from: req.history_from.map_or(before.history_from, stored_history),
                revision: before.revision + 1,
                redact,
                redact_mode: req.redact_mode,
                include_pii,
                ..before.clone()
            };
            after.status = grants::status_at(after.expires_at, false, now);
            if !grants::update(m.conn(), &after, before.revision).await? {
                return Err(ApiError::Conflict(format!(
                    "grant {id:?} changed concurrently; retry"
                )));
            }
            // Grants made before keys existed get theirs on their first update.
            grants::ensure_key(m.conn(), id, &new_key()).await?;
            Ok(Change::new(snapshot(&before), snapshot(&after), after))
        }
        .await;
        m.finish(result).await
    }

    /// Revokes a grant at once. It stays listed, as revoked; revoking twice changes nothing.
    pub async fn revoke_grant(&self, ctx: &Ctx, id: &str) -> Result<Grant, ApiError> {
        let mut m = self.begin(ctx, "grant.revoke", "grant", id).await?;
        let now = m.now;
        let result = async {
            let before = grants::get(m.conn(), id, now)
                .await?
                .ok_or_else(|| not_found(id))?;
            let event = catalog::get(m.conn(), &before.event).await?;
            authorize_change(
                &ctx.caller,
                &before,
                event.as_ref().map(|e| e.owner.as_str()),
            )?;
            if before.status == GrantStatus::Revoked {
                return Ok(Change::new(snapshot(&before), snapshot(&before), before));
            }
            let after = Grant {
                revoked_at: Some(now),
                revoked_by: Some(ctx.caller.principal.clone()),
                status: GrantStatus::Revoked,
                revision: before.revision + 1,
                ..before.clone()
            };
            if !grants::update(m.conn(), &after, before.revision).await? {
                return Err(ApiError::Conflict(format!(
                    "grant {id:?} changed concurrently; retry"
                )));
            }
            Ok(Change::new(snapshot(&before), snapshot(&after), after))
        }
        .await;
        m.finish(result).await
    }
}

fn may_see(caller: &Caller, grant: &Grant, owned_events: &[String]) -> bool {
    caller.sees_everything()
        || grant.grantee == caller.principal
        || grant.granted_by == caller.principal
        || owned_events.contains(&grant.event)
}

/// Only the event's owner or an admin changes a grant; on a deleted event, only an admin.
fn authorize_change(
    caller: &Caller,
    grant: &Grant,
    event_owner: Option<&str>,
) -> Result<(), ApiError> {
    match event_owner {
        Some(owner) if caller.may_modify(owner) => Ok(()),
        None if caller.is_admin() => Ok(()),
        _ => Err(ApiError::Forbidden(format!(
            "only the owner of event {:?} or an admin may change grant {}",
            grant.event, grant.id
        ))),
    }
}

/// A grant's HMAC key for hashed redaction: 256 random bits, hex.
fn new_key() -> String {
    let mut key = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
    hex::encode(key)
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("grant {id:?} does not exist"))
}

fn stored_history(history: HistoryFrom) -> HistoryFrom {
    match history {
        HistoryFrom::At(at) => HistoryFrom::At(to_stored_precision(at)),
        HistoryFrom::Unbounded => HistoryFrom::Unbounded,
    }
}
