-- MySQL/MariaDB variant of 004_bot_state.sql (InnoDB, utf8mb4, binary collation).
CREATE TABLE bot_states (
    conversation_id VARCHAR(64) NOT NULL PRIMARY KEY,
    version BIGINT NOT NULL,
    data MEDIUMTEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
