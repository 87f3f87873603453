//! Console sign-ins: a token is exchanged once for a random session id that lives in a cookie,
//! so the token itself never travels again. Sessions expire; only their hashes are stored.

use chrono::{DateTime, Utc};

use super::ControlPlane;
use crate::auth::{self, Caller};
use crate::error::ApiError;
use crate::store::sessions;

/// How long a console sign-in lasts.
pub const SESSION_LIFETIME: chrono::Duration = chrono::Duration::hours(8);

/// A new sign-in. `id` is the secret the cookie carries.
pub struct Session {
    pub id: String,
    pub caller: Caller,
    pub expires_at: DateTime<Utc>,
}

impl ControlPlane {
    pub async fn sign_in(&self, token: &str) -> Result<Session, ApiError> {
        let caller = self.authenticate(token).await?;
        let id = auth::new_token();
        let now = self.now();
        let expires_at = now + SESSION_LIFETIME;
        sessions::insert(
            &mut *self.conn().await?,
            &auth::token_hash(&id),
            &caller.principal,
            now.timestamp_millis(),
            expires_at.timestamp_millis(),
        )
        .await?;
        Ok(Session {
            id,
            caller,
            expires_at,
        })
    }

    /// The caller of an unexpired session.
    pub async fn session(&self, id: &str) -> Result<Caller, ApiError> {
        let principal = sessions::principal(
            &mut *self.conn().await?,
            &auth::token_hash(id),
            self.now().timestamp_millis(),
        )
        .await?
        .ok_or(ApiError::Unauthorized)?;
        Ok(Caller {
            principal: principal.name,
            role: principal.role,
        })
    }

    pub async fn sign_out(&self, id: &str) -> Result<(), ApiError> {
        Ok(sessions::delete(&mut *self.conn().await?, &auth::token_hash(id)).await?)
    }
}
