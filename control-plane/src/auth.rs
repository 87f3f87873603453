//! Bearer tokens: random, shown once, stored only as their SHA-256 (they carry 256 bits of
//! entropy, so a fast hash is enough and lookups stay a single indexed read).

use api::Role;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

const TOKEN_PREFIX: &str = "fnr_";

pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The authenticated principal of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub principal: String,
    pub role: Role,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Admins and auditors see every object.
    pub fn sees_everything(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Auditor)
    }

    /// Whether the caller may change an object owned by `owner`.
    pub fn may_modify(&self, owner: &str) -> bool {
        self.is_admin() || (self.role == Role::Member && self.principal == owner)
    }

    /// Whether the caller may read an object owned by `owner`.
    pub fn may_read(&self, owner: &str) -> bool {
        self.sees_everything() || self.principal == owner
    }
}

/// Who is asking, and which request this is (for the audit trail).
#[derive(Clone, Debug)]
pub struct Ctx {
    pub caller: Caller,
    pub request_id: String,
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_unique_and_hash_stably() {
        let a = super::new_token();
        let b = super::new_token();
        assert_ne!(a, b);
        assert!(a.starts_with("fnr_") && a.len() > 40);
        assert_eq!(super::token_hash(&a), super::token_hash(&a));
        assert_ne!(super::token_hash(&a), super::token_hash(&b));
    }
}
