-- How long an event may stay silent before the console and /metrics call it a gap; events
-- without a row have their interval learned from their recent rate.
CREATE TABLE event_expectations (
    event TEXT PRIMARY KEY,
    max_silence_ms BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
