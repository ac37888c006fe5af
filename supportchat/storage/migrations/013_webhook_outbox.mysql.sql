-- MySQL/MariaDB variant of 013_webhook_outbox.sql: the same tables, InnoDB,
-- utf8mb4 with a binary collation.
-- Webhook events that are not message-log entries (issue 17): internal
-- notes and ratings, written in the same transaction as the change itself,
-- with their final body. webhook_outbox_state records, per endpoint, each
-- such event delivered (done = 1) or waiting for its retry.
CREATE TABLE webhook_outbox (
    event_id VARCHAR(80) NOT NULL PRIMARY KEY,
    event_type VARCHAR(40) NOT NULL,
    conversation_id VARCHAR(64) NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    body TEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX webhook_outbox_created ON webhook_outbox (created_at);

CREATE TABLE webhook_outbox_state (
    endpoint_id VARCHAR(32) NOT NULL,
    event_id VARCHAR(80) NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_failed_at DOUBLE PRECISION,
    next_at DOUBLE PRECISION,
    PRIMARY KEY (endpoint_id, event_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
