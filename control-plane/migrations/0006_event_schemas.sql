-- Each event's payload schema, stored by `fanner catalog push`: the protobuf message's full name,
-- the FileDescriptorSet defining it (base64), its SHA-256 and the PII fields it marks (a JSON
-- array of `payload.` paths, computed from the descriptors when stored).
CREATE TABLE event_schemas (
    event TEXT PRIMARY KEY REFERENCES events (name),
    message TEXT NOT NULL,
    descriptor_set TEXT NOT NULL,
    digest TEXT NOT NULL,
    pii_fields TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
