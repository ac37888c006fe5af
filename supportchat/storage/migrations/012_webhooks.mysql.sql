-- MySQL/MariaDB variant of 012_webhooks.sql: the same tables, InnoDB,
-- utf8mb4 with a binary collation (ids compare exactly).
-- Webhooks (issue 17). Endpoints with their secrets (the previous one is
-- kept until old_secret_until during a rotation); one cursor per endpoint
-- and conversation: the highest seq delivered (or dead), and the retry
-- state of the next one; every delivery attempt, with a short excerpt of
-- the answer. Events are read from the messages table, so appends write
-- nothing more.
CREATE TABLE webhook_endpoints (
    id VARCHAR(32) NOT NULL PRIMARY KEY,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    description TEXT NOT NULL,
    secret VARCHAR(128) NOT NULL,
    old_secret VARCHAR(128),
    old_secret_until DOUBLE PRECISION,
    paused INTEGER NOT NULL DEFAULT 0,
    paused_reason VARCHAR(32),
    since_ts DOUBLE PRECISION NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE webhook_cursors (
    endpoint_id VARCHAR(32) NOT NULL,
    conversation_id VARCHAR(64) NOT NULL,
    delivered_seq BIGINT NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_failed_at DOUBLE PRECISION,
    next_at DOUBLE PRECISION,
    PRIMARY KEY (endpoint_id, conversation_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE webhook_deliveries (
    id VARCHAR(40) NOT NULL PRIMARY KEY,
    endpoint_id VARCHAR(32) NOT NULL,
    event_id VARCHAR(80) NOT NULL,
    event_type VARCHAR(40) NOT NULL,
    conversation_id VARCHAR(64) NOT NULL,
    seq BIGINT NOT NULL,
    attempt INTEGER NOT NULL,
    ts DOUBLE PRECISION NOT NULL,
    outcome VARCHAR(16) NOT NULL,
    status_code INTEGER,
    latency DOUBLE PRECISION,
    error TEXT,
    response_excerpt TEXT
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id);
