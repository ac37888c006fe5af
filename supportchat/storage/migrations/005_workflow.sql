-- Support workflow: teams, agent accounts (password hash, status, capacity
-- and current load), refresh tokens, each conversation's place in the
-- workflow (queued / assigned / closed, team, agent, rating), internal
-- notes, and the one row every assignment decision locks (see
-- docs/workflow.md: "Atomic assignment").
CREATE TABLE teams (
    id VARCHAR(64) NOT NULL PRIMARY KEY,
    name VARCHAR(200) NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE agents (
    id VARCHAR(128) NOT NULL PRIMARY KEY,
    login VARCHAR(200) NOT NULL,
    name VARCHAR(200) NOT NULL,
    role VARCHAR(16) NOT NULL,
    team_id VARCHAR(64) NOT NULL DEFAULT '',
    capacity INTEGER NOT NULL DEFAULT 3,
    status VARCHAR(16) NOT NULL DEFAULT 'offline',
    load_count INTEGER NOT NULL DEFAULT 0,
    disabled INTEGER NOT NULL DEFAULT 0,
    password_hash VARCHAR(400),
    tokens_valid_after DOUBLE PRECISION NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE UNIQUE INDEX agents_login ON agents (login);

CREATE TABLE refresh_tokens (
    token_hash VARCHAR(64) NOT NULL PRIMARY KEY,
    agent_id VARCHAR(128) NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX refresh_tokens_agent ON refresh_tokens (agent_id);

CREATE TABLE work_items (
    conversation_id VARCHAR(64) NOT NULL PRIMARY KEY,
    customer_id VARCHAR(128) NOT NULL,
    team_id VARCHAR(64) NOT NULL DEFAULT '',
    state VARCHAR(16) NOT NULL,
    agent_id VARCHAR(128),
    queued_at DOUBLE PRECISION NOT NULL,
    assigned_at DOUBLE PRECISION,
    closed_at DOUBLE PRECISION,
    rating INTEGER,
    rating_comment TEXT,
    rated_at DOUBLE PRECISION
);
CREATE INDEX work_items_queue ON work_items (state, team_id, queued_at);
CREATE INDEX work_items_agent ON work_items (agent_id, state);

CREATE TABLE work_notes (
    conversation_id VARCHAR(64) NOT NULL,
    author_id VARCHAR(128) NOT NULL,
    body TEXT NOT NULL,
    ts DOUBLE PRECISION NOT NULL
);
CREATE INDEX work_notes_conversation ON work_notes (conversation_id, ts);

CREATE TABLE workflow_lock (
    id INTEGER NOT NULL PRIMARY KEY
);
INSERT INTO workflow_lock (id) VALUES (1);
