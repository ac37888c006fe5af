-- MySQL/MariaDB variant of 006_canned.sql: the same table, InnoDB, utf8mb4
-- with a binary collation (ids and shortcuts compare exactly).
CREATE TABLE canned_responses (
    id VARCHAR(64) NOT NULL PRIMARY KEY,
    scope VARCHAR(16) NOT NULL,
    owner VARCHAR(128) NOT NULL,
    shortcut VARCHAR(32) NOT NULL,
    title VARCHAR(200) NOT NULL,
    body TEXT NOT NULL,
    created_by VARCHAR(128) NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE UNIQUE INDEX canned_responses_shortcut ON canned_responses (scope, owner, shortcut);
