-- Sealpost projections: views of the SEALPOST_EVENTS stream. JetStream is the source of truth;
-- every table here can be truncated and rebuilt by `sealpost replay --projection <name>
-- --from-start`. No ciphertext and no full phone number is ever stored: recipients are masked
-- ("+*********67") and hashed (SHA-256 of the E.164 number, for lookups).

-- One row per projection: the stream sequence of the last event applied. Written in the same
-- transaction as the projection's rows, so a batch is applied exactly once.
CREATE TABLE projection_checkpoints (
    projection text PRIMARY KEY,
    last_seq   bigint      NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO projection_checkpoints (projection) VALUES ('messages'), ('compliance'), ('metrics');

-- Projection `messages`: one row per message (the status query and the dashboard read it).
CREATE TABLE messages (
    tenant             text        NOT NULL,
    message_id         text        NOT NULL,
    status             text        NOT NULL,
    message_type       text,
    recipient_masked   text,
    recipient_sha256   text,
    correlation_id     text,
    payload_ref        text,
    payload_sha256     text,
    payload_size       bigint,
    fallback_channel   text,
    carrier            text,
    carrier_message_id text,
    attempts           integer     NOT NULL DEFAULT 0,
    last_error_class   text,
    last_error_code    text,
    end_reason         text,
    revoke_outcome     text,
    accepted_at        timestamptz,
    carrier_acked_at   timestamptz,
    delivered_at       timestamptz,
    displayed_at       timestamptz,
    failed_at          timestamptz,
    fallback_at        timestamptz,
    expired_at         timestamptz,
    cancelled_at       timestamptz,
    purged_at          timestamptz,
    expires_at         timestamptz,
    next_attempt_at    timestamptz,
    held               boolean     NOT NULL DEFAULT false,
    active_holds       integer     NOT NULL DEFAULT 0,
    purged             boolean     NOT NULL DEFAULT false,
    event_count        integer     NOT NULL DEFAULT 0,
    last_event_type    text        NOT NULL,
    last_event_at      timestamptz,
    last_seq           bigint      NOT NULL,
    PRIMARY KEY (tenant, message_id)
);
CREATE INDEX messages_status_idx ON messages (tenant, status);
CREATE INDEX messages_failed_idx ON messages (last_event_at DESC)
    WHERE status IN ('failed', 'fallback_triggered', 'expired');

-- Projection `compliance`: one cqrs-es `View` document per message in the table layout of
-- postgres-es's `PostgresViewRepository` (view_id, version, payload), so that repository can read
-- it; the projector writes it in batches inside its checkpoint transaction. Columns after
-- `payload` are copies of document fields for queries and indexes.
CREATE TABLE compliance_views (
    view_id    text        PRIMARY KEY,
    version    bigint      NOT NULL CHECK (version >= 0),
    payload    json        NOT NULL,
    tenant     text        NOT NULL,
    message_id text        NOT NULL,
    held       boolean     NOT NULL DEFAULT false,
    purged     boolean     NOT NULL DEFAULT false,
    settled_at timestamptz,
    last_seq   bigint      NOT NULL
);
CREATE INDEX compliance_held_idx ON compliance_views (tenant) WHERE held;
CREATE INDEX compliance_settled_idx ON compliance_views (settled_at) WHERE NOT purged AND NOT held;

-- Active legal holds, one row per (message, hold), from the documents.
CREATE VIEW compliance_active_holds AS
SELECT c.tenant,
       c.message_id,
       h.key                                 AS hold_id,
       h.value ->> 'reason'                  AS reason,
       (h.value ->> 'since')::timestamptz    AS since
FROM compliance_views c,
     json_each(c.payload -> 'holds') AS h;

-- Projection `metrics`: per tenant, carrier and minute (of the event's own time, so a rebuild
-- reproduces it). `carrier` is '-' until a carrier is known for the message (e.g. `accepted`).
CREATE TABLE metrics_events (
    tenant     text        NOT NULL,
    carrier    text        NOT NULL,
    minute     timestamptz NOT NULL,
    event_type text        NOT NULL,
    count      bigint      NOT NULL,
    PRIMARY KEY (tenant, carrier, minute, event_type)
);

-- Failed attempts per error class and carrier code.
CREATE TABLE metrics_retries (
    tenant      text        NOT NULL,
    carrier     text        NOT NULL,
    minute      timestamptz NOT NULL,
    error_class text        NOT NULL,
    code        text        NOT NULL,
    count       bigint      NOT NULL,
    PRIMARY KEY (tenant, carrier, minute, error_class, code)
);

-- Latency histograms: accepted -> delivered and accepted -> displayed, by the minute of the
-- receipt. `le_ms` is the bucket's inclusive upper bound in milliseconds; the overflow bucket is
-- 9223372036854775807 (+Inf).
CREATE TABLE metrics_latency (
    tenant  text        NOT NULL,
    carrier text        NOT NULL,
    minute  timestamptz NOT NULL,
    kind    text        NOT NULL CHECK (kind IN ('delivered', 'displayed')),
    le_ms   bigint      NOT NULL,
    count   bigint      NOT NULL,
    PRIMARY KEY (tenant, carrier, minute, kind, le_ms)
);

-- What the metrics projection must remember per message to attribute later events: when it was
-- accepted (latency) and its carrier. Owned by the metrics projection alone, so it rebuilds
-- independently of `messages`.
CREATE TABLE metrics_message_state (
    tenant      text        NOT NULL,
    message_id  text        NOT NULL,
    accepted_at timestamptz,
    carrier     text,
    PRIMARY KEY (tenant, message_id)
);
