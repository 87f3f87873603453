use api::{CreateToken, Principal, Role, TokenCreated, WhoAmI, rules};

use super::{Change, ControlPlane, bad_request, snapshot};
use crate::auth::{self, Caller, Ctx};
use crate::error::ApiError;
use crate::store::{audit, principals};

/// The principal `fanner serve` creates on first start.
pub const BOOTSTRAP_ADMIN: &str = "admin";

impl ControlPlane {
    /// The caller a bearer token authenticates.
    pub async fn authenticate(&self, token: &str) -> Result<Caller, ApiError> {
        let mut conn = self.conn().await?;
        match principals::by_token(&mut conn, &auth::token_hash(token)).await? {
            Some(principal) => Ok(Caller {
                principal: principal.name,
                role: principal.role,
            }),
            None => Err(ApiError::Unauthorized),
        }
    }

    /// On a store with no principal yet, creates the `admin` principal and returns its token.
    pub async fn bootstrap(&self) -> Result<Option<String>, ApiError> {
        let mut tx = self.store().pool().begin().await?;
        let head = audit::lock_head(&mut tx).await?;
        if principals::count(&mut tx).await? > 0 {
            return Ok(None);
        }
        let now = self.now();
        let principal = Principal {
            name: BOOTSTRAP_ADMIN.to_owned(),
            role: Role::Admin,
            created_at: now,
        };
        principals::insert(&mut tx, &principal).await?;
        let token = auth::new_token();
        principals::insert_token(
            &mut tx,
            &auth::token_hash(&token),
            BOOTSTRAP_ADMIN,
            "system",
            now.timestamp_millis(),
        )
        .await?;
        let entry = audit::NewEntry {
            time: now,
            request_id: "bootstrap".to_owned(),
            actor: "system".to_owned(),
            action: "principal.bootstrap".to_owned(),
            object_kind: "principal".to_owned(),
            object_id: BOOTSTRAP_ADMIN.to_owned(),
            outcome: "ok".to_owned(),
            detail: None,
            before: None,
            after: snapshot(&principal),
        };
        audit::append(&mut tx, &head, &entry, false).await?;
        tx.commit().await?;
        Ok(Some(token))
    }

    pub fn whoami(&self, ctx: &Ctx) -> WhoAmI {
        WhoAmI {
            principal: ctx.caller.principal.clone(),
            role: ctx.caller.role,
        }
    }

    pub async fn list_principals(&self) -> Result<Vec<Principal>, ApiError> {
        Ok(principals::list(&mut *self.conn().await?).await?)
    }

    /// Issues a token for a principal, creating the principal (default role `member`) if needed.
    pub async fn create_token(
        &self,
        ctx: &Ctx,
        req: CreateToken,
    ) -> Result<TokenCreated, ApiError> {
        let mut m = self
            .begin(ctx, "token.create", "principal", &req.principal)
            .await?;
        let now = m.now;
        let result = async {
            if !ctx.caller.is_admin() {
                return Err(ApiError::Forbidden(
                    "only admins may create tokens".to_owned(),
                ));
            }
            bad_request(rules::check_name("principal", &req.principal))?;
            let existing = principals::get(m.conn(), &req.principal).await?;
            let principal = match existing {
                Some(existing) => {
                    if let Some(role) = req.role
                        && role != existing.role
                    {
                        return Err(ApiError::Conflict(format!(
                            "principal {:?} exists with role {}, not {role}",
                            existing.name, existing.role
                        )));
                    }
                    existing
                }
                None => {
                    let principal = Principal {
                        name: req.principal.clone(),
                        role: req.role.unwrap_or(Role::Member),
                        created_at: now,
                    };
                    principals::insert(m.conn(), &principal).await?;
                    principal
                }
            };
            let token = auth::new_token();
            principals::insert_token(
                m.conn(),
                &auth::token_hash(&token),
                &principal.name,
                &ctx.caller.principal,
                now.timestamp_millis(),
            )
            .await?;
            let created = TokenCreated {
                principal: principal.name.clone(),
                role: principal.role,
                token,
            };
            Ok(Change::new(None, snapshot(&principal), created))
        }
        .await;
        m.finish(result).await
    }
}
