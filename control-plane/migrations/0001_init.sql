-- Written in the SQL subset SQLite and PostgreSQL share, so one migration serves both stores.

CREATE TABLE principals (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE tokens (
    hash TEXT PRIMARY KEY,
    principal TEXT NOT NULL REFERENCES principals (name),
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE events (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    classification TEXT NOT NULL,
    description TEXT NOT NULL,
    revision BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE grants (
    id TEXT PRIMARY KEY,
    event TEXT NOT NULL,
    grantee TEXT NOT NULL,
    reason TEXT NOT NULL,
    granted_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    revoked_by TEXT,
    revision BIGINT NOT NULL
);
CREATE INDEX grants_by_event ON grants (event);
CREATE INDEX grants_by_grantee ON grants (grantee);

CREATE TABLE streams (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    shard_count BIGINT NOT NULL,
    retention_hours BIGINT NOT NULL,
    tags TEXT NOT NULL,
    status TEXT NOT NULL,
    backing_id TEXT NOT NULL,
    revision BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY,
    stream TEXT NOT NULL REFERENCES streams (name),
    events TEXT NOT NULL,
    status TEXT NOT NULL,
    status_reason TEXT,
    revision BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX subscriptions_by_stream ON subscriptions (stream);

CREATE TABLE subscription_events (
    subscription_id TEXT NOT NULL REFERENCES subscriptions (id),
    event TEXT NOT NULL,
    PRIMARY KEY (subscription_id, event)
);
CREATE INDEX subscription_events_by_event ON subscription_events (event);

-- One row. Every mutation starts by updating it, which serialises writers across replicas and
-- gives the audit chain its next sequence number and the hash to link to.
CREATE TABLE audit_head (
    id BIGINT PRIMARY KEY,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    routes_revision BIGINT NOT NULL
);
INSERT INTO audit_head (id, seq, hash, routes_revision)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', 0);

CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    time BIGINT NOT NULL,
    request_id TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    object_kind TEXT NOT NULL,
    object_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT,
    before_json TEXT,
    after_json TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_log_by_time ON audit_log (time);

CREATE TABLE leases (
    grp TEXT NOT NULL,
    shard_key TEXT NOT NULL,
    owner TEXT NOT NULL,
    token BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    checkpoint TEXT,
    PRIMARY KEY (grp, shard_key)
);
