-- History on demand: how far back each grant lets its grantee read, where each subscription
-- started, and the hydrations and replays that deliver history from the lake and the GES.

-- NULL: unbounded. Grants made before this migration keep the history they could read then:
-- none before their creation.
ALTER TABLE grants ADD COLUMN history_from BIGINT;
UPDATE grants SET history_from = created_at;

-- `now`, `earliest` or an RFC 3339 instant.
ALTER TABLE subscriptions ADD COLUMN start_from TEXT NOT NULL DEFAULT 'now';

CREATE TABLE hydrations (
    id TEXT PRIMARY KEY,
    subscription_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    from_time BIGINT,
    to_time BIGINT,
    state TEXT NOT NULL,
    error TEXT,
    requested_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX hydrations_by_subscription ON hydrations (subscription_id);
CREATE INDEX hydrations_by_state ON hydrations (state);

-- One row per GES shard a hydration has worked on. `handover_after` / `live_after`: '' is the
-- shard's start, NULL not set.
CREATE TABLE hydration_shards (
    hydration_id TEXT NOT NULL REFERENCES hydrations (id),
    shard TEXT NOT NULL,
    events_delivered BIGINT NOT NULL,
    handover_after TEXT,
    live_after TEXT,
    state TEXT NOT NULL,
    error TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (hydration_id, shard)
);
