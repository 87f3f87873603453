-- Gatekeeping: a subscription's filter (an event pattern, JSON) and what its stream receives;
-- a grant's redaction. Lists are JSON arrays, sorted.
ALTER TABLE subscriptions ADD COLUMN filter TEXT;
ALTER TABLE subscriptions ADD COLUMN delivery_format TEXT NOT NULL DEFAULT 'envelope';
ALTER TABLE grants ADD COLUMN redact TEXT NOT NULL DEFAULT '[]';
ALTER TABLE grants ADD COLUMN redact_mode TEXT NOT NULL DEFAULT 'drop';
ALTER TABLE grants ADD COLUMN include_pii TEXT NOT NULL DEFAULT '[]';

-- Each grant's HMAC key for `redact_mode = hash` (hex), kept apart from `grants` so no grant
-- read, API response or audit entry carries it; only the route table does.
CREATE TABLE grant_keys (
    grant_id TEXT PRIMARY KEY REFERENCES grants (id),
    hmac_key TEXT NOT NULL
);
