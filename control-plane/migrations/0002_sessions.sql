-- Console sign-ins. The cookie carries a random id; only its SHA-256 is stored, like tokens.
CREATE TABLE sessions (
    hash TEXT PRIMARY KEY,
    principal TEXT NOT NULL REFERENCES principals (name),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);
