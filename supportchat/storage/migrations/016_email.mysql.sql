-- MySQL/MariaDB variant of 016_email.sql: the same tables, InnoDB,
-- utf8mb4 with a binary collation.
-- Email to visitors (issue 17, docs/email.md). email_subscriptions: one row
-- per conversation whose visitor left an address (offline form), with the
-- log position up to which agent replies were turned into emails and the
-- thread's Message-IDs. email_outbox: the durable queue of composed
-- messages (RFC 5322 text), written in the same transaction that moves the
-- subscription's cursor, sent with retries and backoff.
CREATE TABLE email_subscriptions (
    conversation_id VARCHAR(64) NOT NULL PRIMARY KEY,
    address VARCHAR(320) NOT NULL,
    lang VARCHAR(16) NOT NULL,
    replies INTEGER NOT NULL DEFAULT 1,
    transcript INTEGER NOT NULL DEFAULT 0,
    transcript_sent INTEGER NOT NULL DEFAULT 0,
    read_seq BIGINT NOT NULL DEFAULT 0,
    thread_root VARCHAR(250),
    thread_last VARCHAR(250),
    created_at DOUBLE PRECISION NOT NULL,
    unsubscribed_at DOUBLE PRECISION
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE email_outbox (
    email_id VARCHAR(80) NOT NULL PRIMARY KEY,
    conversation_id VARCHAR(64) NOT NULL,
    kind VARCHAR(16) NOT NULL,
    recipient VARCHAR(320) NOT NULL,
    body TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at DOUBLE PRECISION NOT NULL,
    state VARCHAR(16) NOT NULL,
    last_error VARCHAR(200)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX email_outbox_due ON email_outbox (state, next_at);
