-- MySQL/MariaDB variant of 001_initial.sql: the same tables, InnoDB, with
-- utf8mb4 and a binary (case- and accent-sensitive) collation so that ids
-- compare exactly as on SQLite and PostgreSQL ("Alice" is not "alice").
CREATE TABLE conversations (
    id VARCHAR(64) NOT NULL PRIMARY KEY,
    customer_id VARCHAR(128) NOT NULL,
    status VARCHAR(16) NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    last_seq BIGINT NOT NULL DEFAULT 0,
    last_msg_id VARCHAR(64),
    last_ts DOUBLE PRECISION
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX conversations_customer ON conversations (customer_id, status);
CREATE INDEX conversations_status ON conversations (status, created_at);

CREATE TABLE participants (
    conversation_id VARCHAR(64) NOT NULL,
    user_id VARCHAR(128) NOT NULL,
    role VARCHAR(16) NOT NULL,
    joined_at DOUBLE PRECISION NOT NULL,
    last_read_seq BIGINT NOT NULL DEFAULT 0,
    unread BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX participants_user ON participants (user_id);

CREATE TABLE messages (
    msg_id VARCHAR(64) NOT NULL PRIMARY KEY,
    conversation_id VARCHAR(64) NOT NULL,
    seq BIGINT NOT NULL,
    sender_id VARCHAR(128) NOT NULL,
    sender_role VARCHAR(16) NOT NULL,
    client_msg_id VARCHAR(128),
    kind VARCHAR(16) NOT NULL,
    body TEXT NOT NULL,
    data TEXT,
    ts DOUBLE PRECISION NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE UNIQUE INDEX messages_conversation_seq ON messages (conversation_id, seq);

CREATE TABLE idempotency_keys (
    sender_id VARCHAR(128) NOT NULL,
    client_msg_id VARCHAR(128) NOT NULL,
    conversation_id VARCHAR(64) NOT NULL,
    msg_id VARCHAR(64) NOT NULL,
    seq BIGINT NOT NULL,
    ts DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (sender_id, client_msg_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX idempotency_expiry ON idempotency_keys (expires_at);
