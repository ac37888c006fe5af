-- Canned responses: team ones (owner = team id, managed by admins) and
-- personal ones (owner = agent id); a shortcut is unique per owner.
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
);
CREATE UNIQUE INDEX canned_responses_shortcut ON canned_responses (scope, owner, shortcut);
